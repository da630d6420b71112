"""Chaos: a batch run over 300 targets on local sites that fail 10% of requests at random, killed with
SIGKILL at random moments five times and restarted each time. At the end every target is captured
exactly once, every bag validates, the ledger has no orphan rows and no temporary file is left."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import bagit
import pytest

from tests.support.site import LocalSite, SiteHandler

ROOT = Path(__file__).resolve().parent.parent
TARGETS = 300
HOSTS = 3
DOCUMENTS = 6


class Chaos:
    """A route that answers slowly, and fails one request in ten: a 503, or a body cut short."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.failures = 0

    def __call__(self, h: SiteHandler) -> None:
        with self.lock:
            roll = self.random.random()
        time.sleep(0.01)
        if roll < 0.05:
            self.failures += 1
            h.respond(503, b"busy\n", "text/plain")
        elif roll < 0.10:
            self.failures += 1
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", "5000")
            h.end_headers()
            h.wfile.write(b"<html><title>cut")
            h.close_connection = True
        else:
            h.respond(200, f"<html><title>{h.path}</title><p>evidence {h.path}</p></html>".encode())


@pytest.mark.timeout(240)
def test_killed_five_times_at_random_then_complete(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    sites = [LocalSite() for _ in range(HOSTS)]
    chaos = [Chaos(seed=number) for number in range(HOSTS)]
    for site, route in zip(sites, chaos, strict=True):
        site.add_route("/chaos/", route, prefix=True)
        site.start()
    try:
        urls = [sites[i % HOSTS].url(f"/chaos/{i}") for i in range(TARGETS)]
        (tmp_path / "documents").mkdir()
        per_doc = TARGETS // DOCUMENTS
        for d in range(DOCUMENTS):
            links = "\n".join(f"- [evidence {i}]({urls[i]})" for i in range(d * per_doc, (d + 1) * per_doc))
            (tmp_path / "documents" / f"doc{d}.md").write_text(links + "\n", encoding="utf-8")
        config = tmp_path / "run.yaml"
        config.write_text(
            "documents:\n  - glob: documents/*.md\n"
            "capture:\n  allow_private_addresses: true\n  workers: 6\n  per_host_concurrency: 2\n"
            "  per_host_rate: 1000\n  retries: 2\n  backoff_base: 0.01\n  read_timeout: 5\n"
            "  requisites: false\n  media: false\n  retry_failed_after: 0s\n",
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        kills = 0
        while kills < 5:
            proc = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                proc.wait(timeout=rng.uniform(0.8, 4.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
        statuses = []
        for _ in range(6):  # random failures may outlast one run's retries; each run retries what failed
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            statuses.append(done.returncode)
            assert "Traceback" not in done.stderr, done.stderr
            if done.returncode == 0:
                break
        assert statuses[-1] == 0, statuses
        assert sum(route.failures for route in chaos) >= 20, "the sites should have failed some requests"
    finally:
        for site in sites:
            site.stop()

    state = tmp_path / "state"
    db = sqlite3.connect(state / "ledger.sqlite")
    ok = db.execute("SELECT url, count(*) FROM captures WHERE outcome = 'ok' GROUP BY url").fetchall()
    assert sorted(url for url, _ in ok) == sorted(urls)  # every target captured ...
    assert {count for _, count in ok} == {1}  # ... exactly once
    captures = state / "captures"
    referenced = {row[0] for row in db.execute("SELECT path FROM files")}
    assert all((captures / path).is_file() for path in referenced), "a ledger row names a missing file"
    on_disk = {p.relative_to(captures).as_posix() for p in (captures / "warc").iterdir()}
    assert on_disk == referenced, "a finished-looking file no ledger row names"
    bags_dir = tmp_path / "bags"
    bag_names = {p.name for p in bags_dir.iterdir()}
    assigned = {row[0] for row in db.execute("SELECT DISTINCT bag FROM bag_files")}
    assert assigned <= bag_names, "the ledger assigns files to a bag that does not exist"
    for name in bag_names - assigned:  # a bag holding no capture file carries only its document
        payload = {p.relative_to(bags_dir / name).parts[:2] for p in (bags_dir / name / "data").rglob("*")}
        assert payload <= {("data", "document"), ("data", "provenance.json")}, name
    held = {row[0] for row in db.execute("SELECT path FROM bag_files")}
    assert held == referenced  # every captured file is in exactly one bag (path is the key)
    db.close()

    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith((".part", ".building")) or p.name.startswith(".")]
    assert leftovers == [] or all(p.name == ".tmp" and not any(p.iterdir()) for p in leftovers), leftovers
    store = tmp_path / "store"
    stored = sorted(p for p in store.iterdir() if p.is_dir() and p.name not in ("audit", "archive_manifests"))
    assert {p.name for p in stored} == bag_names
    for bag in [*stored, *(bags_dir / name for name in bag_names)]:
        bagit.Bag(str(bag)).validate(processes=1)
