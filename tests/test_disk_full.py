"""Disk full while a batch run writes WARCs and bags: the run stops that work with a clear message and no
traceback, leaves nothing half-written that looks complete, and a later run with space completes.

The disk is a real one where the machine allows it: a 2 MiB tmpfs mounted for the test (root can here).
The same paths are also driven everywhere by ENOSPC injected at the write layer (`PRESERVE_ENOSPC_AT`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bagit
import pytest
from warcio.archiveiterator import ArchiveIterator

from tests.support.site import LocalSite, SiteHandler

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def write_run(project: Path, urls: list[str], capture: str) -> list[str]:
    """A document citing `urls` and a config for it; returns the command that runs it."""
    (project / "documents").mkdir()
    (project / "documents" / "d.md").write_text("\n".join(f"- <{u}>" for u in urls) + "\n", encoding="utf-8")
    (project / "run.yaml").write_text(
        "documents:\n  - path: documents/d.md\n"
        "capture:\n  allow_private_addresses: true\n  per_host_rate: 1000\n  retries: 0\n  media: false\n" + capture,
        encoding="utf-8",
    )
    return [sys.executable, "-m", "pipeline.cli", "run", "--config", "run.yaml"]


def stored_responses(project: Path) -> list[str]:
    """The target URI of every response record in the WARC files of every stored bag, each bag validated first."""
    uris = []
    for bag in (p for p in (project / "store").iterdir() if (p / "bagit.txt").is_file()):
        bagit.Bag(str(bag)).validate(processes=1)
        for warc in (bag / "data").rglob("*.warc.gz"):
            with warc.open("rb") as handle:
                uris += [
                    r.rec_headers.get_header("WARC-Target-URI")
                    for r in ArchiveIterator(handle)
                    if r.rec_type == "response"
                ]
    return uris


def noise(h: SiteHandler) -> None:
    """400 kB that no compression shrinks."""
    seed = int(h.route.rsplit("/", 1)[1])
    h.respond(200, random.Random(seed).randbytes(400_000), "application/octet-stream")


def test_disk_full_stops_cleanly_and_a_run_with_space_completes(small_disk: Path) -> None:
    with LocalSite() as site:
        site.add_route("/noise/", noise, prefix=True)
        urls = [site.url(f"/noise/{i}") for i in range(6)]  # 2.4 MB of bodies for a 2 MiB disk
        command = write_run(small_disk, urls, "  retry_failed_after: 0s\n  warc_compresslevel: 0\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        full = subprocess.run(command, cwd=small_disk, env=env, capture_output=True, text=True, timeout=120)
        assert full.returncode in (1, 2), full.stderr
        assert "Traceback" not in full.stderr, full.stderr
        assert "No space left on device" in full.stderr or "database or disk is full" in full.stderr
        # nothing half-written under a real name: every WARC the ledger does not name is swept next run, and
        # no bag directory without its bagit.txt exists
        for bag in (small_disk / "bags").glob("*") if (small_disk / "bags").exists() else []:
            assert bag.name.startswith(".") or (bag / "bagit.txt").is_file(), bag

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        done = subprocess.run(command, cwd=small_disk, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert sorted(stored_responses(small_disk)) == sorted(urls)  # every target ends up in a stored bag, once
    assert not [p for p in small_disk.rglob("*") if p.name.endswith((".part", ".building"))]


@pytest.mark.parametrize(("point", "expect"), [("warc-group:3", 2), ("warc-close:1", 2), ("bag-write:2", 1)])
def test_injected_disk_full_while_writing_a_warc_or_a_bag(tmp_path: Path, point: str, expect: int) -> None:
    """The same on any machine: ENOSPC injected at the write layer (the 3rd target written into a group WARC,
    the first group WARC closed, the 2nd tag file of a bag). The run stops that work with one line, and the
    next run completes everything exactly once."""
    with LocalSite() as site:
        urls = [site.url(f"/bytes/{1000 + i}") for i in range(8)]
        command = write_run(tmp_path, urls, "  workers: 1\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        full = subprocess.run(
            command, cwd=tmp_path, env={**env, "PRESERVE_ENOSPC_AT": point}, capture_output=True, text=True, timeout=120
        )
        assert full.returncode == expect, full.stderr
        assert "Traceback" not in full.stderr and "No space left on device" in full.stderr, full.stderr
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert sorted(stored_responses(tmp_path)) == sorted(urls)
