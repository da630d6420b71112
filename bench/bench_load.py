"""Load: a batch run (`preserve run`) over 5,000 targets on 50 local hosts with 16 workers.

Checks, not timings: memory stays flat (the run's RSS is sampled every 0.2 s; peak and growth over the
capture phase must stay under bounds) and per-host politeness holds (each server counts the connections
it is serving at once; never above `per_host_concurrency`). Throughput is printed for the record.

    .venv/bin/python bench/bench_load.py [--targets 5000] [--hosts 50] [--workers 16] [--per-host 2]

The 50 servers (one port each on 127.0.0.1, a host being `host:port`) run in a process of their own, so
their threads never compete with the run for the GIL. Output goes under `.bench_load/` (not /tmp, where
creating files is slow here). Exit status 1 when a bound is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_RSS_MIB = 400.0  # the whole run process, Python and its imports (~60 MiB) included
GROWTH_MIB = 40.0  # RSS at the end of capture minus RSS a quarter of the way in


def role_servers(hosts: int, delay: float) -> int:
    """Serve `hosts` tiny sites; print their ports; on stdin EOF print per-port peak concurrency as JSON."""
    active: dict[int, int] = {}
    peak: dict[int, int] = {}
    served: dict[int, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            port = self.server.server_address[1]
            with lock:
                active[port] += 1
                peak[port] = max(peak[port], active[port])
                served[port] += 1
            try:
                time.sleep(delay)
                body = f"<html><title>{self.path}</title><p>evidence at {self.path}</p></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            finally:
                with lock:
                    active[port] -= 1

    servers = []
    for _ in range(hosts):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        port = server.server_address[1]
        active[port] = peak[port] = served[port] = 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    print(json.dumps([s.server_address[1] for s in servers]), flush=True)
    sys.stdin.read()
    print(json.dumps({"peak": peak, "served": served}), flush=True)
    return 0


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=5000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=2, help="per_host_concurrency")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds each response takes")
    parser.add_argument("--role", choices=["servers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "servers":
        return role_servers(args.hosts, args.delay)

    work = ROOT / ".bench_load"
    shutil.rmtree(work, ignore_errors=True)
    (work / "documents").mkdir(parents=True)
    servers = subprocess.Popen(
        [sys.executable, __file__, "--role", "servers", "--hosts", str(args.hosts), "--delay", str(args.delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert servers.stdout is not None and servers.stdin is not None
    ports = json.loads(servers.stdout.readline())
    per_doc = 500
    for d in range(0, args.targets, per_doc):
        lines = [
            f"- [evidence {i}](http://127.0.0.1:{ports[i % len(ports)]}/e/{i})"
            for i in range(d, min(d + per_doc, args.targets))
        ]
        (work / "documents" / f"doc{d // per_doc:03d}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "run.yaml").write_text(
        "documents:\n  - glob: documents/*.md\n"
        f"capture:\n  allow_private_addresses: true\n  workers: {args.workers}\n"
        f"  per_host_concurrency: {args.per_host}\n  per_host_rate: 1000\n  requisites: false\n  media: false\n"
        "run:\n  audit_after_upload: true\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", "run.yaml", "--log-format", "json"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, captures logged so far)
    captured = 0
    stage_end: dict[str, float] = {}

    def read_log() -> None:
        nonlocal captured
        assert run.stderr is not None
        for line in run.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                print(line, end="", file=sys.stderr)
                continue
            if event.get("event") == "capture":
                captured += 1
            elif event.get("event") == "stage-end":
                stage_end[event["stage"]] = time.monotonic() - started

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    while run.poll() is None:
        rss = rss_mib(run.pid)
        if rss is not None:
            samples.append((time.monotonic() - started, rss, captured))
        time.sleep(0.2)
    reader.join(timeout=10)
    elapsed = time.monotonic() - started
    servers.stdin.close()
    stats = json.loads(servers.stdout.readline())
    servers.wait(timeout=30)

    capture_samples = [s for s in samples if s[2] > 0 and s[0] <= stage_end.get("capture", elapsed)]
    quarter = next((s for s in capture_samples if s[2] >= args.targets // 4), capture_samples[0])
    end_of_capture = capture_samples[-1]
    peak = max(s[1] for s in samples)
    growth = end_of_capture[1] - quarter[1]
    peak_per_host = max(stats["peak"].values())
    served = sum(stats["served"].values())
    report = [
        f"run exit status {run.returncode}; {captured} captures logged, {served} requests served in {elapsed:.1f} s "
        f"(capture stage {stage_end.get('capture', float('nan')):.1f} s, "
        f"{captured / stage_end.get('capture', elapsed):.0f} targets/s)",
        f"RSS: {quarter[1]:.0f} MiB at {quarter[2]} captures, {end_of_capture[1]:.0f} MiB at {end_of_capture[2]}, "
        f"peak {peak:.0f} MiB (bounds: peak {PEAK_RSS_MIB:.0f}, growth {GROWTH_MIB:.0f})",
        f"politeness: peak concurrent connections per host {peak_per_host} (limit {args.per_host}) over "
        f"{len(stats['peak'])} hosts",
    ]
    print("\n".join(report))
    broken = []
    if run.returncode != 0:
        broken.append("the run did not end with exit status 0")
    if captured < args.targets:
        broken.append(f"only {captured} of {args.targets} targets captured")
    if peak > PEAK_RSS_MIB:
        broken.append(f"peak RSS {peak:.0f} MiB over {PEAK_RSS_MIB:.0f}")
    if growth > GROWTH_MIB:
        broken.append(f"RSS grew {growth:.0f} MiB during capture (bound {GROWTH_MIB:.0f})")
    if peak_per_host > args.per_host:
        broken.append(f"a host served {peak_per_host} connections at once (limit {args.per_host})")
    for problem in broken:
        print(f"BOUND BROKEN: {problem}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
