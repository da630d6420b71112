"""A capture run killed with SIGKILL in the middle, then started again, ends with every target captured
exactly once and nothing half-written counted or left behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pipeline.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent


def ok_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM captures WHERE outcome = 'ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


def capture_command(tmp_path: Path, urls: list[str], out: Path, settings: str) -> tuple[list[str], dict[str, str]]:
    """`preserve capture URLS --out OUT` with a config of `settings` (YAML lines under `capture:`), and its env."""
    config = tmp_path / "capture.yaml"
    config.write_text(
        "capture:\n" + settings + "  per_host_rate: 1000\n  allow_private_addresses: true\n  requisites: false\n"
        "  media: false\n",
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "pipeline.cli", "capture", *urls, "--config", str(config), "--out", str(out)]
    return command, {**os.environ, "PYTHONPATH": str(ROOT)}


def test_killed_run_resumes_and_captures_everything_exactly_once(site, tmp_path: Path) -> None:
    site.latency = 0.15
    urls = [site.url(f"/latency/{i}") for i in range(30)]
    out = tmp_path / "out"
    command, env = capture_command(tmp_path, urls, out, "  workers: 3\n  per_host_concurrency: 3\n")

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while ok_rows(out / "ledger.sqlite") < 6 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    held_after_kill = ok_rows(out / "ledger.sqlite")
    assert 6 <= held_after_kill < len(urls), "the kill should land mid-run"
    with Ledger(out / "ledger.sqlite") as ledger:
        captured_first = {c.url for c in ledger.attempts() if c.outcome == "ok"}

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr

    with Ledger(out / "ledger.sqlite") as ledger:
        attempts = ledger.attempts()
        referenced = ledger.referenced_paths()
    ok = [a for a in attempts if a.outcome == "ok"]
    assert sorted(a.url for a in ok) == sorted(urls)  # every target exactly once
    assert not [a for a in attempts if a.outcome == "failed"]
    on_disk = {p.relative_to(out).as_posix() for p in (out / "warc").iterdir()}
    assert on_disk == referenced  # no orphan, no unreferenced finished-looking file
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    assert not list((out / ".tmp").iterdir())
    for name in referenced:
        check = subprocess.run([sys.executable, "-m", "warcio.cli", "check", str(out / name)], capture_output=True)
        assert check.returncode == 0, name
    for url in captured_first:  # what the first run held was not fetched again
        assert site.hits(url.split(str(site.port), 1)[1]) == 1


def test_killed_after_a_group_file_is_published_but_before_its_rows(site, tmp_path: Path) -> None:
    """The window a group file opens: renamed into place, its targets not yet in the ledger. The next run
    removes the file (no row names it) and captures those targets again, each exactly once in the end."""
    urls = [site.url(f"/latency/group-{i}") for i in range(15)]
    out = tmp_path / "out"
    command, env = capture_command(tmp_path, urls, out, "  workers: 1\n  warc_group_targets: 5\n")
    killed = subprocess.run(command, env={**env, "PRESERVE_CRASH_AT": "warc-group-published:2"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    with Ledger(out / "ledger.sqlite") as ledger:
        first = ledger.attempts()
        referenced = ledger.referenced_paths()
    assert len(first) == 5 and all(a.outcome == "ok" for a in first)  # the first group only
    published = {p.relative_to(out).as_posix() for p in (out / "warc").iterdir()}
    assert len(published) == 2 and len(referenced) == 1  # the second group is on disk, named by no row

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    with Ledger(out / "ledger.sqlite") as ledger:
        attempts = ledger.attempts()
        referenced = ledger.referenced_paths()
    assert sorted(a.url for a in attempts) == sorted(urls) and all(a.outcome == "ok" for a in attempts)
    assert {p.relative_to(out).as_posix() for p in (out / "warc").iterdir()} == referenced
    hits = [site.hits(f"/latency/group-{i}") for i in range(15)]
    assert hits[:5] == [1] * 5  # the committed group was not fetched again
    assert hits[5:10] == [2] * 5  # the lost group's targets were
    assert all(h in (1, 2) for h in hits[10:]) and sum(hits[10:]) <= 5 + 2  # at most 2 x workers were in flight
    for name in referenced:
        check = subprocess.run([sys.executable, "-m", "warcio.cli", "check", str(out / name)], capture_output=True)
        assert check.returncode == 0, name
