"""Benchmark: `S3Store.upload_bag` against a plain boto3 `upload_file` loop, into moto's S3 on 127.0.0.1.

One bag (a large file plus many small ones, built with `build_bag`) is uploaded, in the same run, by:
- ours: `S3Store(...).upload_bag(bag)` with its defaults (multipart over 64 MiB, 16 MiB parts, 4 threads);
- the reference: `client.upload_file(path, bucket, key)` over the same files, checksums off
  (`request_checksum_calculation="when_required"`), the same TransferConfig sizes;
- ours with `verify=True` (every object read back and hashed).

    .venv/bin/python bench/bench_upload.py [--big-mib 1024] [--small 2000] [--repeat 1]

Every process is this file with a `--role`. moto runs in a process of its own, so its CPU (it is the
bottleneck, ~110-150 MB/s) never counts as the client's and its threads never take the client's GIL;
each client runs in a child of its own, so its peak RSS (`VmHWM`) is its own. moto is reset and given a
fresh bucket before each client, so nothing is skipped as already stored. Children read their stdin and
exit when it ends, so none outlives this process however it dies. The endpoint is plain HTTP, so botocore
hashes every payload for SigV4 in both clients (over HTTPS it would send UNSIGNED-PAYLOAD).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
MB = 1_000_000
GB = 1_000_000_000
THRESHOLD, PART, CONCURRENCY = 64 * MIB, 16 * MIB, 4  # S3Store's defaults, given to the reference too
CHILD_TIMEOUT = 600.0
MOTO_START_TIMEOUT = 30.0
MODES = ("ours", "reference", "ours-verify")
BAG_NAME = "bench_20261124T000000Z"
TICKS = os.sysconf("SC_CLK_TCK")

MOTO_CODE = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the parent closes stdin or dies
server.stop()
"""


# -- child role: one client --------------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """A daemon thread that ends this process when stdin closes: the parent is gone or gave up on us."""

    def watch() -> None:
        while os.read(0, 4096):  # the raw descriptor: a buffered read would block interpreter shutdown
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _vm(field: str) -> int:
    """A `/proc/self/status` memory field in bytes (VmHWM: this process's own peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def role_client(mode: str, endpoint: str, bucket: str, bag: Path) -> int:
    """Upload `bag` one way and print one JSON line of measurements; imports happen before the clock starts."""
    _exit_with_parent()
    sys.path.insert(0, str(ROOT))
    import boto3
    import botocore.config
    from boto3.s3.transfer import TransferConfig

    from pipeline.store.base import bag_files
    from pipeline.store.s3 import S3Store

    if mode == "reference":
        config = botocore.config.Config(
            request_checksum_calculation="when_required", response_checksum_validation="when_required"
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        client.head_bucket(Bucket=bucket)  # as for ours: connected, model loaded, before the clock
        transfer = TransferConfig(
            multipart_threshold=THRESHOLD, multipart_chunksize=PART, max_concurrency=CONCURRENCY, use_threads=True
        )
        files = [(f.path, f"{bag.name}/{f.relpath}", f.size) for f in bag_files(bag)]
        rss_before = _vm("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        for path, key, _ in files:
            client.upload_file(str(path), bucket, key, Config=transfer)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sent, objects, skipped = sum(size for _, _, size in files), len(files), 0
    else:
        store = S3Store(bucket, endpoint_url=endpoint)
        store.client.head_bucket(Bucket=bucket)  # connect and load the model before the clock starts
        rss_before = _vm("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        result = store.upload_bag(bag, verify=mode == "ours-verify")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sent, objects, skipped = result.bytes_sent, len(result.objects), result.skipped
    report = {
        "wall": wall,
        "cpu": cpu,
        "hwm": _vm("VmHWM"),
        "rss_before": rss_before,
        "bytes_sent": sent,
        "objects": objects,
        "skipped": skipped,
    }
    print(json.dumps(report), flush=True)
    return 0


# -- parent: payload, moto, clients ------------------------------------------------------------------------


def build_payload_bag(work: Path, big_mib: int, small: int) -> tuple[Path, int]:
    """The bag: one large file (a 1 MiB random block repeated, hashed as written) and `small` files of 1-20 KB."""
    sys.path.insert(0, str(ROOT))
    from pipeline.package import PayloadFile, build_bag, payload_from_bytes

    source = work / "source" / "video.mp4"
    source.parent.mkdir(parents=True)
    block = os.urandom(MIB)
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    with source.open("wb") as handle:
        for _ in range(big_mib):
            sha256.update(block)
            sha512.update(block)
            handle.write(block)
    size = big_mib * MIB
    big = PayloadFile("data/media/big/video.mp4", size, sha256.hexdigest(), sha512.hexdigest(), source=source)
    rng = random.Random(1)
    smalls = [
        payload_from_bytes(f"data/warc/{i:05d}.warc.gz", rng.randbytes(rng.randint(1000, 20000))) for i in range(small)
    ]
    built = build_bag(work / "bags", BAG_NAME, [big, *smalls], [("Source-Organization", "bench")])
    total = sum(p.stat().st_size for p in built.path.rglob("*") if p.is_file())
    return built.path, total


def child_env(endpoint: str | None, tmpdir: Path) -> dict[str, str]:
    """The parent's environment without any AWS setting, plus the dummy credentials for `endpoint`."""
    sys.path.insert(0, str(ROOT))
    from tests.support.s3 import s3_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["TMPDIR"] = str(tmpdir)  # moto spools objects over ~5 MiB to temporary files; /tmp is slow here
    env["PYTHONPATH"] = str(ROOT)
    if endpoint:
        env.update(s3_env(endpoint))
    return env


def start_moto(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """moto's S3 on 127.0.0.1 in its own process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(MOTO_START_TIMEOUT)
    if not ready or not ready[0].strip().isdigit():
        stop(proc)
        raise RuntimeError("moto did not start")
    return proc, int(ready[0])


def stop(proc: subprocess.Popen[Any]) -> None:
    """Close its stdin (it exits by itself), then kill it if it has not."""
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def moto_post(port: int, path: str, body: bytes = b"") -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"moto {path}: HTTP {response.status}")
    finally:
        conn.close()


def stored_bytes(client: Any, bucket: str) -> tuple[int, int]:
    """Objects and bytes in the bucket after a run: proof the client sent everything."""
    count = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            count += 1
            size += obj["Size"]
    return count, size


@dataclass
class Row:
    name: str
    wall: float
    cpu: float
    hwm: int
    rss_before: int
    bytes_sent: int
    objects: int
    skipped: int
    stored: tuple[int, int]
    server_cpu: float


def run_client(mode: str, port: int, env: dict[str, str], moto_pid: int, bag: Path, bench: Path) -> Row:
    """Reset moto, make a fresh bucket, run one client child and collect its report."""
    import boto3

    moto_post(port, "/moto-api/reset")
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = f"bench-{mode}"
    client.create_bucket(Bucket=bucket)
    server_before = cpu_of(moto_pid)
    command = [sys.executable, str(bench), "--role", "client", mode, endpoint, bucket, str(bag)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        out, _ = communicate_keeping_stdin(proc, CHILD_TIMEOUT)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"client {mode} failed with status {proc.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    server_cpu = cpu_of(moto_pid) - server_before
    return Row(mode, server_cpu=server_cpu, stored=stored_bytes(client, bucket), **report)


def communicate_keeping_stdin(proc: subprocess.Popen[str], timeout: float) -> tuple[str, int]:
    """Read the child's stdout to its end without closing its stdin (closing it tells the child to quit)."""
    assert proc.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        raise RuntimeError(f"client did not finish within {timeout:.0f} s")
    return "".join(out), proc.wait(5)


def print_table(rows: list[Row], payload: int) -> None:
    reference = next(r for r in rows if r.name == "reference")
    header = (
        f"{'client':<13}{'seconds':>9}{'MB/s':>8}{'CPU s':>8}{'CPU s/GB':>10}{'peak RSS MiB':>14}"
        f"{'time x ref':>12}{'CPU x ref':>11}{'moto CPU s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.name:<13}{r.wall:>9.2f}{payload / MB / r.wall:>8.1f}{r.cpu:>8.2f}{r.cpu / (payload / GB):>10.2f}"
            f"{r.hwm / MIB:>14.0f}{r.wall / reference.wall:>12.2f}{r.cpu / reference.cpu:>11.2f}{r.server_cpu:>12.2f}"
        )
    print()
    for r in rows:
        print(
            f"{r.name}: bytes_sent {r.bytes_sent:,} over {r.objects} objects, {r.skipped} skipped; "
            f"bucket holds {r.stored[0]} objects, {r.stored[1]:,} bytes; RSS before upload {r.rss_before / MIB:.0f} MiB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the large file (MiB)")
    parser.add_argument("--small", type=int, default=2000, help="number of small files (1-20 KB each)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three clients; best of them shown")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _, mode, endpoint, bucket, bag = args.role
        return role_client(mode, endpoint, bucket, Path(bag))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on `kill` too
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench_upload_") as tmp:
        work = Path(tmp)
        moto_tmp = work / "moto"
        moto_tmp.mkdir()
        start = time.perf_counter()
        bag, payload = build_payload_bag(work, args.big_mib, args.small)
        built = time.perf_counter() - start
        os.sync()
        moto, port = start_moto(child_env(None, moto_tmp))
        try:
            env = child_env(f"http://127.0.0.1:{port}", moto_tmp)
            runs: dict[str, list[Row]] = {mode: [] for mode in MODES}
            for round_ in range(args.repeat):
                for mode in MODES[round_ % 3 :] + MODES[: round_ % 3]:  # rotated: no client always goes first
                    runs[mode].append(run_client(mode, port, env, moto.pid, bag, Path(__file__).resolve()))
        finally:
            stop(moto)
    print(
        f"bag: 1 file of {args.big_mib} MiB + {args.small} files of 1-20 KB + tag files, "
        f"{payload / MIB:.1f} MiB in all (built in {built:.1f} s, not timed); moto on 127.0.0.1, its own process"
    )
    print(f"sizes: multipart over {THRESHOLD // MIB} MiB, parts of {PART // MIB} MiB, {CONCURRENCY} threads (both)")
    print("MB = 10^6 bytes, GB = 10^9; CPU = the client process's user+sys; peak RSS = its VmHWM")
    print()
    rows = [min(runs[mode], key=lambda r: r.wall) for mode in MODES]
    if args.repeat > 1:
        print(f"best of {args.repeat} by time; every run's seconds:")
        for mode in MODES:
            print(f"  {mode}: {', '.join(f'{r.wall:.2f}' for r in runs[mode])}")
        print()
    print_table(rows, payload)
    ours, reference = rows[0], rows[1]
    ratio = max(ours.wall / reference.wall, ours.cpu / reference.cpu)
    print()
    verdict = "met" if ratio <= 1.3 else "NOT met"
    print(f"aim: ours costs no more than 1.3x the plain loop (time and CPU): {ratio:.2f}x, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
