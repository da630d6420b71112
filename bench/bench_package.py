"""Benchmark: building a bag over a 1 GiB file plus 2,000 small files, against `bagit.py --sha256 --sha512`
on the same payload in the same run.

Ours reuses the digests recorded at capture (payload hardlinked, manifests written from the ledger's
digests, bagit-python's completeness check afterwards); bagit.py hashes every byte with both algorithms.
The setup (writing the files and their digests, as a capture would) is not timed.

    .venv/bin/python bench/bench_package.py [--big-mib 1024] [--small 2000] [--processes 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.package import build_bag, payload_from_capture  # noqa: E402
from pipeline.records import CapturedFile  # noqa: E402

MIB = 1 << 20


def write_hashed(path: Path, chunks) -> CapturedFile:  # type: ignore[no-untyped-def]
    sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for chunk in chunks:
            sha256.update(chunk)
            sha512.update(chunk)
            handle.write(chunk)
            size += len(chunk)
    return CapturedFile(path.as_posix(), size, sha256.hexdigest(), sha512.hexdigest())


def make_payload(capture_dir: Path, big_mib: int, small: int) -> list[CapturedFile]:
    rng = random.Random(1)
    block = rng.randbytes(MIB)
    files = []
    big = write_hashed(capture_dir / "media" / "big" / "video.mp4", (block for _ in range(big_mib)))
    files.append(big)
    for i in range(small):
        files.append(write_hashed(capture_dir / "warc" / f"{i:05d}.warc.gz", [rng.randbytes(rng.randint(1000, 20000))]))
    return [CapturedFile(Path(f.path).relative_to(capture_dir).as_posix(), f.size, f.sha256, f.sha512) for f in files]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=1, help="bagit.py --processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        work = Path(tmp)
        capture = work / "capture"
        files = make_payload(capture, args.big_mib, args.small)
        total = sum(f.size for f in files)
        os.sync()

        start = time.perf_counter()
        payload = [payload_from_capture(f, capture) for f in files]
        bag = build_bag(work / "bags", "bench_20261124T000000Z", payload, [("Source-Organization", "bench")])
        ours = time.perf_counter() - start

        reference_dir = work / "reference"
        for f in files:  # the same bytes, hardlinked: bagit.py moves them into data/ itself
            target = reference_dir / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(capture / f.path, target)
        os.sync()
        command = [sys.executable, "-m", "bagit", "--sha256", "--sha512", "--processes", str(args.processes)]
        start = time.perf_counter()
        subprocess.run([*command, "--quiet", str(reference_dir)], check=True)
        reference = time.perf_counter() - start

        ours_manifest = (bag.path / "manifest-sha256.txt").read_text().splitlines()
        ref_manifest = (reference_dir / "manifest-sha256.txt").read_text().splitlines()
        same = sorted(ours_manifest) == sorted(ref_manifest)
        shutil.rmtree(work / "bags")
    print(f"payload: 1 file of {args.big_mib} MiB + {args.small} small files, {total / MIB:.0f} MiB in all")
    print(f"ours: build_bag from recorded digests (hardlinks, bagit completeness check): {ours:.2f} s")
    print(f"reference: bagit.py --sha256 --sha512 --processes {args.processes}: {reference:.2f} s")
    print(
        f"ours takes {ours / reference:.3f} of bagit.py's time (aim: 0.2 or less); sha256 manifests identical: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
