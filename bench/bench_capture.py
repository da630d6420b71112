"""Benchmark: `Capturer` on many small pages (with and without latency) and on one large body.

References in the same run, against the same local servers:
- pages: a plain sequential loop, `requests.get(url)` inside warcio's `capture_http(path.warc.gz)`;
- large body: `requests.get(url, stream=True)` + `iter_content(1 MiB)` written to a file.

    .venv/bin/python bench/bench_capture.py [--pages 500] [--big-mib 1024] [--skip-big] [--skip-latency]
        [--rounds 2] [--group 16]

The no-latency case is CPU-bound, so it runs in `--rounds` rounds, each with its own reference run. Ours
runs with `warc_group_targets=--group` (16, the default: small targets of a document share a WARC file),
and, without latency, also with a WARC file per target (`warc_group_targets=1`). Every run's output stays
until the benchmark ends: deleting hundreds of files just before the next run makes ext4's inode allocator
slow for that run's creates, a cost the single-file reference never pays.

Every process is this file with a `--role`: the LocalSite servers run in a process of their own, so their
threads never compete for the GIL with the client being measured; the warcio loop runs in a child because
importing `warcio.capture_http` patches `http.client` for the whole process; each large-body client runs
in a child so its peak RSS is its own (`os.wait4` gives one child's rusage). That is also why `requests`
and `pipeline` are imported inside functions, never at the top of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
HOSTS = 16
LATENCY = 0.1
SERVER_MAX_SECONDS = 900.0  # the server process exits by itself after this, whatever happens to us
CHILD_TIMEOUT = 300.0
TYPED_ROUTE = "/typed-bytes/"
TYPED_CONTENT_TYPE = "application/x-bench-uncompressed"  # not in http._COMPRESSED_TYPES
PAGE_SETTINGS: dict[str, Any] = {
    "per_host_concurrency": 1,
    "per_host_rate": 50.0,
    "requisites": False,
    "media": False,
    "allow_private_addresses": True,
}


# -- child roles -------------------------------------------------------------------------------------------


def role_server(count: int, latency: float) -> int:
    """Serve `count` LocalSites (one host each); print their ports; obey `latency <s>` lines until stdin ends."""
    sys.path.insert(0, str(ROOT))
    from tests.support.site import LocalSite, iter_pattern

    def typed_bytes(h: Any) -> None:
        """The `/bytes/<n>` body under a type the pipeline compresses at `warc_compresslevel`."""
        rest = h.route.removeprefix(TYPED_ROUTE)
        h.respond_ranged(int(rest), iter_pattern, TYPED_CONTENT_TYPE)

    watchdog = threading.Timer(SERVER_MAX_SECONDS, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    sites = [LocalSite(latency=latency) for _ in range(count)]
    try:
        for site in sites:
            site.add_route(TYPED_ROUTE, typed_bytes, prefix=True)
            site.start()
        print(json.dumps([site.port for site in sites]), flush=True)
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "latency":
                for site in sites:
                    site.latency = float(value)
            print("ok", flush=True)
    finally:
        for site in sites:
            site.stop()
    return 0


def role_loop(urls_file: str, warc_path: str) -> int:
    """The reference: one request after another, recorded by warcio's capture_http."""
    import warcio.capture_http  # patches http.client.HTTPConnection, so it must come before requests

    # isort: split
    import requests

    urls: list[str] = json.loads(Path(urls_file).read_text())
    statuses: Counter[int] = Counter()
    start, cpu = time.perf_counter(), time.process_time()
    with warcio.capture_http.capture_http(warc_path):
        for url in urls:
            statuses[requests.get(url, timeout=30).status_code] += 1
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    _emit({"seconds": seconds, "cpu": cpu, "statuses": dict(statuses), "warc_bytes": Path(warc_path).stat().st_size})
    return 0


def role_big_ref(url: str, path: str) -> int:
    """The reference for one large body: stream it to a file, 1 MiB at a time."""
    import requests

    baseline = _proc_status("VmRSS")
    size = 0
    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=60) as response, open(path, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_content(MIB):
            out.write(chunk)
            size += len(chunk)
    seconds = time.perf_counter() - start
    _emit({"seconds": seconds, "bytes": size, "baseline_kib": baseline, "hwm_kib": _proc_status("VmHWM")})
    return 0


def role_big_ours(url: str, out_dir: str, size: int) -> int:
    """`Capturer` on one large body, timing the download (spool + hashes) and the WARC write apart."""
    from pipeline.capture.batch import Capturer
    from pipeline.capture.http import HttpFetcher
    from pipeline.capture.warc import WarcFile
    from pipeline.config import CaptureSettings
    from pipeline.ledger import Ledger
    from pipeline.records import Link
    from pipeline.resolve import resolve

    spent: Counter[str] = Counter()
    levels: list[int] = []

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    original_write_response = WarcFile.write_response

    def write_response(self: WarcFile, *args: Any, **kwargs: Any) -> Any:
        levels.append(kwargs.get("compresslevel", 6))
        return original_write_response(self, *args, **kwargs)

    HttpFetcher.exchange = timed("download", HttpFetcher.exchange)  # type: ignore[method-assign]
    HttpFetcher.record = timed("warc_write", HttpFetcher.record)  # type: ignore[method-assign]
    WarcFile.write_response = write_response  # type: ignore[method-assign]

    settings = CaptureSettings(
        workers=1,
        requisites=False,
        media=False,
        allow_private_addresses=True,
        max_body_bytes=size + MIB,
        read_timeout=60,
    )
    baseline = _proc_status("VmRSS")
    out = Path(out_dir)
    targets = resolve([Link(source="bench", href=url, url=url)]).targets
    start = time.perf_counter()
    with Ledger(out / "ledger.sqlite") as ledger:
        captures = Capturer(out, settings, ledger, allow_private=True).run(targets)
    seconds = time.perf_counter() - start
    capture = captures[0]
    response = next(r for r in capture.warc_records if r.record_type == "response")
    warc = next((f for f in capture.files if f.role == "warc"), None)
    _emit(
        {
            "seconds": seconds,
            "outcome": capture.outcome,
            "error": capture.error,
            "payload_sha256": response.payload_sha256,
            "payload_size": response.payload_size,
            "content_type": response.content_type,
            "levels": levels,
            "download_s": spent["download"],
            "warc_write_s": spent["warc_write"],
            "warc_bytes": warc.size if warc else None,
            "baseline_kib": baseline,
            "hwm_kib": _proc_status("VmHWM"),
        }
    )
    return 0


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _proc_status(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS now, VmHWM the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- the parent: servers, children, measurements -----------------------------------------------------------


def run_child(role: str, *args: str, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
    """Run this file as a child process; returns the JSON line it printed last. Killed and reaped on any error.

    Peak RSS is the child's own VmHWM, not `ru_maxrss` from wait4/RUSAGE_CHILDREN: Linux folds the pre-exec
    image's high-water mark into `ru_maxrss`, so it reports at least the parent's RSS at fork time.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"child {role} exited with {proc.returncode}")
    data: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return data


class Servers:
    """The LocalSite process: `ports` once started; `latency(s)` changes every site's /latency/ delay."""

    def __init__(self, count: int, latency: float) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--role", "server"]
        command += ["--sites", str(count), "--latency", str(latency)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            self.ports: list[int] = json.loads(self._line())
        except BaseException:
            self.stop()
            raise

    def _line(self) -> str:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"server process ended (exit {self.proc.poll()})")
        return line

    def latency(self, seconds: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"latency {seconds}\n")
        self.proc.stdin.flush()
        if self._line().strip() != "ok":
            raise RuntimeError("server did not acknowledge the latency change")

    def stop(self) -> None:
        """Closing stdin ends the command loop, which stops every site; killed if it does not exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def servers(count: int, latency: float) -> Iterator[Servers]:
    """The server process for the duration of a block, stopped however the block ends."""
    running = Servers(count, latency)
    try:
        yield running
    finally:
        running.stop()


@dataclass
class PagesRun:
    """One run of ours over the pages: wall time and how many captures came out ok."""

    seconds: float
    ok: int
    cpu: float  # CPU seconds of the whole process (every thread) during the run


def capture_pages(urls: list[str], workers: int, out_dir: Path, group: int = 16) -> PagesRun:
    """Ours, in this process (the servers live elsewhere): a fresh ledger, so nothing is skipped as held; the
    output stays until the benchmark ends. `group` is `warc_group_targets` (1: a WARC file per target)."""
    from pipeline.capture.batch import Capturer
    from pipeline.config import CaptureSettings
    from pipeline.ledger import Ledger
    from pipeline.records import Link
    from pipeline.resolve import resolve

    chosen = {"workers": workers, **PAGE_SETTINGS, "warc_group_targets": group}
    settings = CaptureSettings(**chosen)
    targets = resolve(Link(source="bench", href=url, url=url) for url in urls).targets
    assert len(targets) == len(urls)
    start, cpu = time.perf_counter(), time.process_time()
    with Ledger(out_dir / "ledger.sqlite") as ledger:
        captures = Capturer(out_dir, settings, ledger, allow_private=True).run(targets)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = sum(1 for c in captures if c.outcome == "ok")
    return PagesRun(seconds, ok, cpu)


def loop_pages(urls_file: Path, out_dir: Path) -> tuple[float, dict[str, Any]]:
    """The reference loop in its own process (its http.client patching must not reach ours)."""
    out_dir.mkdir()
    data = run_child("loop", str(urls_file), str(out_dir / "loop.warc.gz"))
    return data["seconds"], data


def note(message: str) -> None:
    """Progress on stderr, so a slow case is visibly running; the results go to stdout."""
    print(f"... {message}", file=sys.stderr, flush=True)


def rows_table(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns: readable in a terminal and pasteable into BENCHMARKS.md as-is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-latency", action="store_true", help="skip the 100 ms latency case")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the no-latency case, each with its reference")
    parser.add_argument("--group", type=int, default=16, help="ours' warc_group_targets (the default config's 16)")
    parser.add_argument("--role", choices=["server", "loop", "big-ref", "big-ours"], help=argparse.SUPPRESS)
    parser.add_argument("--sites", type=int, default=HOSTS, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=LATENCY, help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        return role_server(args.sites, args.latency)
    if args.role == "loop":
        return role_loop(*args.role_args)
    if args.role == "big-ref":
        return role_big_ref(*args.role_args)
    if args.role == "big-ours":
        url, out_dir, size = args.role_args
        return role_big_ours(url, out_dir, int(size))
    return bench(
        args.pages, args.big_mib, args.skip_big, skip_latency=args.skip_latency, rounds=args.rounds, group=args.group
    )


def bench(pages: int, big_mib: int, skip_big: bool, *, skip_latency: bool, rounds: int, group: int) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.support.site import pattern_sha256

    # SIGTERM as an exception, so the finally blocks below still stop the servers and reap the children
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.perf_counter()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    free = shutil.disk_usage(tmp).free
    if not skip_big and free < 3 * big_mib * MIB and big_mib > 512:
        notes.append(f"only {free / 2**30:.1f} GiB free under {tmp.parent}: large body reduced to 512 MiB")
        big_mib = 512
    rows: list[tuple[str, ...]] = [("case", "what", "time", "rate", "ratio", "checks")]
    ratios: dict[str, list[float]] = {}
    try:
        with servers(HOSTS, LATENCY) as site:
            urls = [f"http://127.0.0.1:{site.ports[i % HOSTS]}/latency/p{i:05d}" for i in range(pages)]
            urls_file = tmp / "urls.json"
            urls_file.write_text(json.dumps(urls))
            cases = [("latency 0", 0.0)] if skip_latency else [("latency 100 ms", LATENCY), ("latency 0", 0.0)]
            for label, latency in cases:
                site.latency(latency)
                # the no-latency case is CPU-bound on a shared machine: rounds, each with its own reference
                for round_no in range(1, (rounds if latency == 0 else 1) + 1):
                    tag = f"{label}, round {round_no}" if latency == 0 and rounds > 1 else label
                    rows += pages_round(tag, urls, urls_file, tmp, latency, group, ratios)
            if not skip_big:
                rows += big_body(site.ports[0], big_mib, tmp, pattern_sha256, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"pages: {pages} over {HOSTS} LocalSite servers (hosts) on 127.0.0.1, /latency/<name>, round robin")
    shown = {"workers": 8, **PAGE_SETTINGS}
    print(f"ours' CaptureSettings (others default): {shown}; the workers=1 row differs only in workers")
    print(f"ours groups up to {group} small targets per WARC file; the 'a WARC per target' row sets it to 1")
    print("aims: latency 100 ms ours >= 6x loop; latency 0 ours >= 0.8x loop; large body peak RSS < 150 MB")
    print()
    print(rows_table(rows))
    for what, values in ratios.items():
        spread = f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"
        print(f"latency 0, {what}: best ratio {max(values):.2f}, range {spread} over {len(values)} round(s)")
    for line in notes:
        print(f"note: {line}")
    print(f"whole benchmark: {time.perf_counter() - began:.0f} s")
    return 0


def pages_round(
    label: str, urls: list[str], urls_file: Path, tmp: Path, latency: float, group: int, ratios: dict[str, list[float]]
) -> list[tuple[str, ...]]:
    """The reference loop, then ours (8 workers; without latency also 1 worker, and 8 with a WARC per target)."""
    pages = len(urls)
    rows: list[tuple[str, ...]] = []
    note(f"{label}: reference loop over {pages} pages")
    # every run writes under its own directory, all removed only when the benchmark ends: deleting hundreds
    # of files just before the next run makes ext4 scan past the freed inodes on every create (0.1 -> 0.5 ms
    # per file measured here), a cost of the benchmark's cleanup that the single-file reference never pays
    run_dir = tmp / label.replace(" ", "-").replace(",", "")
    run_dir.mkdir()
    ref_s, ref = loop_pages(urls_file, run_dir / "loop")
    ref_rate = pages / ref_s
    checks = (
        f"statuses {ref['statuses']}, WARC {ref['warc_bytes'] / 1e6:.2f} MB, CPU {ref['cpu'] * 1e3 / pages:.2f} ms/p"
    )
    rows.append((label, "loop: requests.get in capture_http", f"{ref_s:.2f} s", f"{ref_rate:.1f} p/s", "1.00", checks))
    runs: list[tuple[str, Callable[[], PagesRun]]] = [
        ("ours: Capturer workers=8", lambda: capture_pages(urls, 8, run_dir / "ours8", group)),
    ]
    if latency == 0:
        runs.append(("ours: Capturer workers=1", lambda: capture_pages(urls, 1, run_dir / "ours1", group)))
        if group > 1:
            what = "ours: workers=8, a WARC per target"
            runs.append((what, lambda: capture_pages(urls, 8, run_dir / "single", 1)))
    for what, run_it in runs:
        note(f"{label}: {what}")
        run = run_it()
        rate = pages / run.seconds
        if latency == 0:
            ratios.setdefault(what, []).append(rate / ref_rate)
        rows.append(
            (
                label,
                what,
                f"{run.seconds:.2f} s",
                f"{rate:.1f} p/s",
                f"{rate / ref_rate:.2f}",
                f"ok {run.ok}/{pages}, CPU {run.cpu * 1e3 / pages:.2f} ms/p",
            )
        )
    return rows


def rss(data: dict[str, Any]) -> str:
    """Peak and starting RSS of a child, so the fetch's own share is visible."""
    return f"peak RSS {data['hwm_kib'] / 1024:.0f} MiB (at start {data['baseline_kib'] / 1024:.0f})"


def big_body(
    port: int, big_mib: int, tmp: Path, pattern_sha256: Callable[[int], str], notes: list[str]
) -> list[tuple[str, ...]]:
    """Ours (content type as served, then a type compressed at level 6) and the plain download, each in a child."""
    from pipeline.capture.http import _COMPRESSED_TYPES

    size = big_mib * MIB
    label = f"body {big_mib} MiB"
    rows: list[tuple[str, ...]] = []
    note(f"{label}: reference download")
    os.sync()  # each large write starts with no earlier writeback pending
    ref = run_child("big-ref", f"http://127.0.0.1:{port}/bytes/{size}", str(tmp / "ref.bin"))
    (tmp / "ref.bin").unlink(missing_ok=True)
    ref_rate = size / MIB / ref["seconds"]
    rows.append(
        (
            label,
            "ref: requests stream=True, iter_content(1 MiB) to a file",
            f"{ref['seconds']:.2f} s",
            f"{ref_rate:.0f} MiB/s",
            "1.00",
            f"{rss(ref)}, " + ("size ok" if ref["bytes"] == size else "SIZE WRONG"),
        )
    )
    note(f"{label}: sha256 of the pattern")
    expected = pattern_sha256(size)
    for route, content_type in (("/bytes/", "application/octet-stream"), (TYPED_ROUTE, TYPED_CONTENT_TYPE)):
        note(f"{label}: Capturer on {route}")
        out_dir = tmp / "big-ours"
        out_dir.mkdir()
        os.sync()
        data = run_child("big-ours", f"http://127.0.0.1:{port}{route}{size}", str(out_dir), str(size))
        shutil.rmtree(out_dir)
        rate = size / MIB / data["seconds"]
        listed = bool(_COMPRESSED_TYPES.match(content_type))
        digest_ok = data["payload_sha256"] == expected and data["payload_size"] == size
        rows.append(
            (
                label,
                f"ours: Capturer, {data['content_type']} (in _COMPRESSED_TYPES: {listed})",
                f"{data['seconds']:.2f} s",
                f"{rate:.0f} MiB/s",
                f"{rate / ref_rate:.2f}",
                f"{data['outcome']}, {rss(data)}, "
                f"payload sha256 {'== pattern_sha256(n)' if digest_ok else 'MISMATCH'}, "
                f"WARC level used {data['levels']}: download+hash {data['download_s']:.2f} s, "
                f"WARC write {data['warc_write_s']:.2f} s, "
                f"rest {data['seconds'] - data['download_s'] - data['warc_write_s']:.2f} s, "
                f"WARC {data['warc_bytes'] / 1e6:.1f} MB",
            )
        )
        if data["error"]:
            notes.append(f"{route}: {data['error']}")
    notes.append(
        "peak RSS is each child's own VmHWM (MiB); 'at start' is its VmRSS after imports, before the fetch; "
        "os.sync() runs before each large-body child"
    )
    notes.append(
        f"the {TYPED_CONTENT_TYPE} row serves the same bytes under a type outside _COMPRESSED_TYPES, so the "
        "record is deflated at warc_compresslevel (6); the pattern (period 251) compresses ~100x at any level"
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
