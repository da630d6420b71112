"""Benchmark: `preserve audit --full` against bagit-python and the OpenSSL hashing limit; the fast S3 audit.

    .venv/bin/python bench/bench_audit.py [--big-mib 1024] [--small 2000] [--objects 1000] [--repeat 2] [--jobs 2]

Local audit. One bag, built by `build_bag` (untimed) under `.bench_audit/` in the project (creating
files in /tmp is slow here) and kept for the next run: a `--big-mib` file (a video) and `--small` files
of 1-20 KB (each one gzip member named `.warc.gz`, so ours also runs its gzip member check on them, which
the others do not), with sha256 and sha512 manifests. Each case is a subprocess, timed from start to
exit, run `--repeat` times with the order rotated each round (other work shares the machine), from
`.bench_audit/state/` as working directory (where ours writes its fixity log), with Python's bytecode
cache on, kept under `.bench_audit/pycache/` (PYTHONDONTWRITEBYTECODE is unset for them: an installed
package has its `.pyc` files, as bagit-python has in site-packages, and our editable install has none):
- ours: `preserve audit --full --jobs 2 BAG`, exactly;
- ours with `--config`: the same with a config file naming the state directory (the command measured
  before 2026-11-24 08:50): loading a config imports pydantic;
- bagit: `bagit.py --validate --processes 2 BAG` (bagit-python hashes each file once with both digests);
- openssl by algorithm: `openssl dgst -sha256 FILES` and `openssl dgst -sha512 FILES`, two processes at
  once: the hashing limit on two cores for this bag, since one file's sha512 cannot be split and this
  split runs it alongside everything else;
- openssl by files: the files split in two halves of equal bytes, each process hashing its half with
  sha256 then sha512 (one process gets the large file: slower here, shown for completeness).
Then the hashing engines, in this process, over the same files (sha256 and sha512, one read of each
file): threads or processes, each file hashed in one worker or a large file's digests in threads of
their own (fan-out). Files were just read, so they are in the page cache: this measures hashing, not disk.

S3 fast audit. A bag of `--objects` payload objects of 1-20 KB uploaded by `S3Store` (untimed) into
moto on 127.0.0.1, in a process of its own; `audit_s3_bag(full=False)` timed with 1 and 8 objects at a
time, then one full audit for contrast. A botocore event hook counts GetObject calls, their keys and the
bytes they returned: the fast audit must fetch no payload object.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_upload import child_env, cpu_of, moto_post, start_moto, stop  # noqa: E402

MIB = 1 << 20
MB = 1_000_000
BAG_NAME = "audit_20261124T000000Z"
S3_BAG = "objects_20261124T000000Z"
ALGORITHMS = ("sha256", "sha512")
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
QUIET = 0.2  # CPU seconds other processes may use during a run that counts towards best and median


# -- bags (untimed) -----------------------------------------------------------------------------------------


def _kept(bag: Path, source: Path) -> bool:
    """True when a previous run left `bag` complete; otherwise its directory is cleared and `source` made
    empty, ready for the files of a new one."""
    if (bag / "bagit.txt").is_file():
        return True
    shutil.rmtree(bag.parent, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    return False


def build_local_bag(work: Path, big_mib: int, small: int) -> Path:
    """The bag of the local cases, reused when a previous run left it complete."""
    from pipeline.package import PayloadFile, build_bag

    bags = work / f"bags-{big_mib}m-{small}"
    bag = bags / BAG_NAME
    source = work / "source"
    if _kept(bag, source):
        return bag
    video = source / "video.mp4"
    block = os.urandom(MIB)
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    with video.open("wb") as handle:
        for i in range(big_mib):
            chunk = block[i % 7 :] + block[: i % 7]  # no two blocks alike
            sha256.update(chunk)
            sha512.update(chunk)
            handle.write(chunk)
    files = [PayloadFile("data/media/v/video.mp4", big_mib * MIB, sha256.hexdigest(), sha512.hexdigest(), source=video)]
    files += small_files(source, small, "data/warc/{:05d}.warc.gz", gzipped=True)
    build_bag(bags, BAG_NAME, files, [("Source-Organization", "bench")])
    shutil.rmtree(source)
    return bag


def small_files(source: Path, count: int, pattern: str, gzipped: bool) -> list[Any]:
    """`count` files of 1-20 KB written under `source` (hardlinked into the bag by `build_bag`)."""
    from pipeline.package import PayloadFile

    rng = random.Random(1)
    files = []
    for i in range(count):
        content = rng.randbytes(rng.randint(1000, 20000))
        if gzipped:
            content = gzip.compress(content, compresslevel=1, mtime=0)
        path = source / f"{i:05d}"
        path.write_bytes(content)
        digests = (hashlib.sha256(content).hexdigest(), hashlib.sha512(content).hexdigest())
        files.append(PayloadFile(pattern.format(i), len(content), *digests, source=path))
    return files


def build_s3_bag(work: Path, objects: int) -> Path:
    from pipeline.package import build_bag

    bags = work / f"s3-bags-{objects}"
    bag = bags / S3_BAG
    source = work / "s3-source"
    if _kept(bag, source):
        return bag
    build_bag(
        bags, S3_BAG, small_files(source, objects, "data/media/{:05d}.jpg", False), [("Source-Organization", "b")]
    )
    shutil.rmtree(source)
    return bag


def payload(bag: Path) -> list[Path]:
    return sorted(p for p in (bag / "data").rglob("*") if p.is_file())


# -- the subprocess cases ---------------------------------------------------------------------------------


@dataclass
class Timing:
    """Every run of one case: wall seconds, its own CPU seconds, and the CPU other processes used meanwhile."""

    name: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)

    @property
    def quiet(self) -> list[float]:
        """The runs during which other processes used at most QUIET CPU seconds (all runs if none was)."""
        return [w for w, o in zip(self.walls, self.others, strict=True) if o <= QUIET] or self.walls

    @property
    def best(self) -> float:
        return min(self.quiet)

    @property
    def median(self) -> float:
        return statistics.median(self.quiet)

    def add(self, wall: float, cpu: float, busy: float) -> None:
        self.walls.append(wall)
        self.cpus.append(cpu)
        self.others.append(max(0.0, busy - cpu))

    def runs(self) -> str:
        """Every run, `[CPU s others used]`, and `*` after a run that was not quiet."""
        return ", ".join(
            f"{w:.2f} [{o:.1f}]{'*' if o > QUIET else ''}" for w, o in zip(self.walls, self.others, strict=True)
        )


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds all processes of the machine have used (`/proc/stat`): what others took shows in runs."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS  # all but idle and iowait


def timed(
    commands: list[list[str]], ok: Callable[[int], bool] = lambda rc: rc == 0, cwd: Path | None = None
) -> tuple[float, float, float]:
    """Start the commands at once, wait for all; wall seconds, their CPU seconds, the machine's busy seconds."""
    with tempfile.TemporaryFile() as err:  # not a pipe: bagit.py logs a line per file, a full pipe would block it
        cpu, busy = children_cpu(), machine_busy()
        start = time.perf_counter()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd) for c in commands]
        statuses = [p.wait() for p in procs]
        wall = time.perf_counter() - start
        cpu, busy = children_cpu() - cpu, machine_busy() - busy
        for command, status in zip(commands, statuses, strict=True):
            if not ok(status):
                err.seek(0)
                raise RuntimeError(f"{command[0]} exited {status}: {err.read().decode(errors='replace')[-500:]}")
    return wall, cpu, busy


def halves(files: list[Path]) -> tuple[list[str], list[str]]:
    """Two sets of files of (nearly) equal bytes, largest first into the lighter set."""
    sets: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        lighter = 0 if sizes[0] <= sizes[1] else 1
        sets[lighter].append(str(path))
        sizes[lighter] += path.stat().st_size
    return sets


def local_cases(bag: Path, jobs: int, state: Path) -> dict[str, list[list[str]]]:
    files = [str(p) for p in payload(bag)]
    config = state / "bench.yaml"
    config.write_text(f"output:\n  state_dir: {state}\n", encoding="utf-8")
    ours = [str(BIN / "preserve"), "audit", "--full", "--jobs", str(jobs)]
    first, second = halves(payload(bag))
    both = 'openssl dgst -sha256 "$@" && openssl dgst -sha512 "$@"'
    return {
        "ours": [[*ours, str(bag)]],
        "ours with --config (pydantic)": [[*ours, "--config", str(config), str(bag)]],
        "bagit": [[str(BIN / "bagit.py"), "--validate", "--processes", str(jobs), str(bag)]],
        "openssl by algorithm": [["openssl", "dgst", f"-{a}", *files] for a in ALGORITHMS],
        "openssl by files": [["sh", "-c", both, "sh", *half] for half in (first, second)],
    }


# -- the hashing engines, in process ----------------------------------------------------------------------


def _hash_serial(path: Path) -> tuple[dict[str, str], int]:
    from pipeline.audit import hash_file

    return hash_file(path, ALGORITHMS, fanout=False)


def _hash_fanout(path: Path) -> tuple[dict[str, str], int]:
    from pipeline.audit import hash_file

    return hash_file(path, ALGORITHMS, fanout=True)


def engines(bag: Path, files: list[Path], jobs: int) -> dict[str, Callable[[], int]]:
    """Each hashes every file with both digests, largest first, `jobs` workers; returns the bytes hashed."""
    ordered = sorted(files, key=lambda p: p.stat().st_size, reverse=True)

    def with_threads(work: Callable[[Path], tuple[dict[str, str], int]]) -> Callable[[], int]:
        def run() -> int:
            with ThreadPoolExecutor(jobs) as pool:
                return sum(size for _, size in pool.map(work, ordered))

        return run

    def with_processes(work: Callable[[Path], tuple[dict[str, str], int]]) -> Callable[[], int]:
        def run() -> int:
            with ProcessPoolExecutor(jobs) as pool:
                return sum(size for _, size in pool.map(work, ordered, chunksize=32))

        return run

    def audit() -> int:
        from pipeline.audit import audit_bags

        (result,) = audit_bags([bag], jobs=jobs)
        if not result.ok:
            raise RuntimeError(f"the bench bag fails its audit: {result.failures[:3]}")
        return result.bytes

    return {
        "threads, a file per worker (no fan-out)": with_threads(_hash_serial),
        "processes, a file per worker": with_processes(_hash_serial),
        "processes, large files fanned out": with_processes(_hash_fanout),
        "threads, large files fanned out (ours)": with_threads(_hash_fanout),
        "ours: audit_bags(), whole audit, no CLI": audit,
    }


# -- S3 ----------------------------------------------------------------------------------------------------


class GetCounter:
    """Counts, through botocore's event hooks, the client's HeadObject and GetObject calls and GET bytes."""

    def __init__(self, client: Any) -> None:
        self.heads = 0
        self.get_keys: list[str] = []
        self.get_bytes = 0
        client.meta.events.register("before-parameter-build.s3.GetObject", self._get)
        client.meta.events.register("before-parameter-build.s3.HeadObject", self._head)
        client.meta.events.register("after-call.s3.GetObject", self._got)

    def _get(self, params: dict[str, Any], **_: Any) -> None:
        self.get_keys.append(params["Key"])

    def _head(self, params: dict[str, Any], **_: Any) -> None:
        self.heads += 1

    def _got(self, parsed: dict[str, Any], **_: Any) -> None:
        self.get_bytes += int(parsed.get("ContentLength") or 0)

    def reset(self) -> None:
        self.heads, self.get_keys, self.get_bytes = 0, [], 0


def s3_bench(work: Path, objects: int, repeat: int) -> list[str]:
    """Upload the S3 bag (untimed), then time fast audits 1 and 8 objects at a time, and one full audit."""
    from pipeline.audit import S3_JOBS, audit_s3_bag
    from pipeline.store.s3 import S3Store

    bag = build_s3_bag(work, objects)
    moto_tmp = work / "moto-tmp"
    moto_tmp.mkdir(exist_ok=True)
    moto, port = start_moto(child_env(None, moto_tmp))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(child_env(endpoint, moto_tmp))  # the dummy credentials, nothing of this machine's
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(work / "no-aws-config")
        moto_post(port, "/moto-api/reset")
        store = S3Store("bench-audit", "bags", endpoint_url=endpoint)
        store.client.create_bucket(Bucket="bench-audit")
        upload = store.upload_bag(bag)
        counter = GetCounter(store.client)
        data = [o for o in upload.objects if o.relpath.startswith("data/")]
        payload_keys = {store.key(f"{bag.name}/{o.relpath}") for o in data}
        runs: dict[int, list[tuple[float, float, float]]] = {1: [], S3_JOBS: []}
        for round_ in range(repeat):
            for jobs in list(runs)[:: 1 if round_ % 2 == 0 else -1]:
                counter.reset()
                server, client = cpu_of(moto.pid), time.process_time()
                start = time.perf_counter()
                audited = audit_s3_bag(store, bag.name, full=False, jobs=jobs)
                wall = time.perf_counter() - start
                if not audited.ok:
                    raise RuntimeError(f"fast S3 audit failed: {audited.failures[:3]}")
                runs[jobs].append((wall, time.process_time() - client, cpu_of(moto.pid) - server))
        fast_gets, fast_bytes, fast_heads = list(counter.get_keys), counter.get_bytes, counter.heads
        counter.reset()
        start = time.perf_counter()
        full = audit_s3_bag(store, bag.name, full=True)
        full_wall = time.perf_counter() - start
    finally:
        stop(moto)
    checked = full.files
    lines = [
        f"S3 bag: {len(data)} payload objects of 1-20 KB ({sum(o.size for o in data) / MB:.1f} MB) + tag files, "
        f"{checked} objects in all; moto on 127.0.0.1 in its own process",
        "",
        "| S3 audit | seconds (best) | every run | objects/s | client CPU s | moto CPU s | GETs: payload/all | bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fast_payload_gets = sum(1 for k in fast_gets if k in payload_keys)
    for jobs, timings in runs.items():
        wall, client, server = min(timings)
        every = ", ".join(f"{w:.2f}" for w, _, _ in timings)
        lines.append(
            f"| fast, {jobs} at a time | {wall:.2f} | {every} | {checked / wall:.0f} | {client:.2f} | {server:.2f} "
            f"| {fast_payload_gets} / {len(fast_gets)} | {fast_bytes:,} |"
        )
    full_payload_gets = sum(1 for k in counter.get_keys if k in payload_keys)
    lines += [
        f"| full, {S3_JOBS} at a time | {full_wall:.2f} | one run | {checked / full_wall:.0f} | | "
        f"| {full_payload_gets} / {len(counter.get_keys)} | {counter.get_bytes:,} |",
        "",
        f"fast audit, each run: {fast_heads} HEADs; {len(fast_gets)} GETs, all of tag files "
        f"({', '.join(sorted({k.rsplit('/', 1)[-1] for k in fast_gets}))}), {fast_bytes:,} bytes; "
        f"payload objects downloaded: {fast_payload_gets}",
    ]
    return lines


# -- main --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the large file (MiB)")
    parser.add_argument("--small", type=int, default=2000, help="number of small files (1-20 KB each)")
    parser.add_argument("--objects", type=int, default=1000, help="payload objects of the S3 bag (0: no S3 case)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case, interleaved; best shown")
    parser.add_argument("--jobs", type=int, default=2, help="workers for ours and bagit, and of the engines")
    parser.add_argument("--no-engines", dest="engines", action="store_false", help="skip the engine comparison")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = ROOT / ".bench_audit"
    work.mkdir(exist_ok=True)
    start = time.perf_counter()
    bag = build_local_bag(work, args.big_mib, args.small)
    built = time.perf_counter() - start
    files = payload(bag)
    hashed = sum(p.stat().st_size for p in files)
    for path in files:  # warm the page cache: every case reads from memory
        with path.open("rb") as handle:
            while handle.read(8 * MIB):
                pass
    load = os.getloadavg()
    state = work / "state"  # the working directory of every case: ours keeps its fixity log under it
    state.mkdir(exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the cases: see the module docstring
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    fast = [str(BIN / "preserve"), "audit", "--fast", str(bag)]
    timed([fast], cwd=state)  # untimed: fills the bytecode cache
    cases = local_cases(bag, args.jobs, state)
    timings = {name: Timing(name) for name in cases}
    startup = Timing("`preserve --version` (start-up alone)")
    around = Timing("`preserve audit --fast BAG` (all but the hashing)")
    for round_ in range(args.repeat):
        names = list(cases)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotated: nobody always first
        for name in names:
            timings[name].add(*timed(cases[name], cwd=state))
        startup.add(*timed([[str(BIN / "preserve"), "--version"]], cwd=state))
        around.add(*timed([fast], cwd=state))

    print(
        f"bag: 1 file of {args.big_mib} MiB + {args.small} gzip files of 1-20 KB, {len(files)} payload files, "
        f"{hashed / MIB:.1f} MiB hashed with sha256 and sha512 (built in {built:.1f} s, untimed, kept in {bag.parent})"
    )
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores; warm page cache")
    print()
    limit = min(timings["openssl by algorithm"].best, timings["openssl by files"].best)
    ours, bagit = timings["ours"].best, timings["bagit"].best
    print(f"best and median of the quiet runs (others used <= {QUIET} CPU s; * marks the others)")
    print()
    print(
        f"| case ({args.repeat} runs) | best s | median s | every run [CPU s others used] | MB/s | CPU s | ours / it |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for timing in timings.values():
        cpu = timing.cpus[timing.walls.index(timing.best)]
        speed, ratio = hashed / MB / timing.best, ours / timing.best
        print(
            f"| {timing.name} | {timing.best:.2f} | {timing.median:.2f} | {timing.runs()} | {speed:.0f} | {cpu:.2f} "
            f"| {ratio:.2f} |"
        )
    for timing in (startup, around):
        print(f"| {timing.name} | {timing.best:.2f} | {timing.median:.2f} | {timing.runs()} | | | |")
    print()
    print(
        f"ours vs bagit: {bagit / ours:.2f}x bagit's speed, best against best (aim >= 1.5x): "
        f"{'met' if bagit / ours >= 1.5 else 'NOT met'}; median against median "
        f"{timings['bagit'].median / timings['ours'].median:.2f}x"
    )
    print(
        f"ours vs the OpenSSL limit ({limit:.2f} s): {ours / limit:.2f}x its time (aim <= 1.2x): "
        f"{'met' if ours / limit <= 1.2 else 'NOT met'}"
    )

    if args.engines:
        print()
        table = engines(bag, files, args.jobs)
        runs = {name: Timing(name) for name in table}
        for round_ in range(args.repeat):
            names = list(table)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in names:
                cpu, busy, start = time.process_time() + children_cpu(), machine_busy(), time.perf_counter()
                table[name]()
                wall = time.perf_counter() - start
                runs[name].add(wall, time.process_time() + children_cpu() - cpu, machine_busy() - busy)
        print(
            f"| hashing engine, in process, {args.jobs} workers (best of {args.repeat}) | seconds | every run [others] "
            "| MB/s |"
        )
        print("| --- | --- | --- | --- |")
        for name, timing in runs.items():
            print(f"| {name} | {timing.best:.2f} | {timing.runs()} | {hashed / MB / timing.best:.0f} |")

    if args.objects:
        print()
        for line in s3_bench(work, args.objects, args.repeat):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
