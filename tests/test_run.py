"""The batch run end to end: a local web site, the loopback S3 endpoint, documents in the seeds' style."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.runstate import run_lock
from tests.support.s3 import MotoS3, s3_client
from tests.support.site import LocalSite, _static

BUCKET = "evidence"
UST = "&sa=D&ust=1538477135298000"


def google(url: str) -> str:
    return f"https://www.google.com/url?q={url}{UST}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None) -> Path:
    """A project directory as `make archive` sees one, and boto3 credentials for the loopback endpoint only."""
    (tmp_path / "documents").mkdir()
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(project: Path, extra: str = "", *, documents: str = "", capture: str = "") -> Path:
    config = project / "configs" / "archive.yaml"
    config.write_text(
        "documents:\n  - glob: documents/*.md\n" + documents + "capture:\n  allow_private_addresses: true\n"
        "  per_host_rate: 100\n  retries: 1\n  backoff_base: 0.05\n  read_timeout: 5\n" + capture + extra,
        encoding="utf-8",
    )
    return config


def documents(project: Path, site: LocalSite) -> dict[str, list[str]]:
    """Two documents in the seeds' style; returns each document's hrefs as written (their own published URLs
    in front matter are links too)."""
    home = b"<!doctype html><title>Home</title><p>The publishing site.</p>"
    site.add_route("/", _static(home, "text/html; charset=utf-8"))
    site.add_route("/articles/b", _static(home.replace(b"Home", b"Follow-up"), "text/html; charset=utf-8"))
    a = {
        "base_url": f"{site.base_url}/",
        "video": google(site.url("/media/clip.mp4")),
        "pdf": google(site.url("/doc.pdf")),
        "image": "/img/a.png",
        "dead": google(site.url("/missing")),
    }
    (project / "documents" / "a.md").write_text(
        f"---\ntitle: Strike on the market\nbase_url: {site.base_url}/\n---\n"
        f"Witnesses filmed the strike ([video]({a['video']})).\n\n"
        f"The [report]({a['pdf']}) lists the damage.\n\n![crater]({a['image']})\n\n"
        f"The original statement is [gone]({a['dead']}).\n",
        encoding="utf-8",
    )
    b = {"url": f"{site.base_url}/articles/b", "page": google(site.url("/page.html")), "image": "/img/a.png"}
    (project / "documents" / "b.md").write_text(
        f"---\ntitle: Follow-up\nurl: {site.base_url}/articles/b\n---\n"
        f"See the [statement page]({b['page']}) and the same photo:\n\n![]({b['image']})\n",
        encoding="utf-8",
    )
    return {"documents/a.md": list(a.values()), "documents/b.md": list(b.values())}


def report_of(project: Path) -> dict[str, Any]:
    latest = sorted((project / "runs").glob("*/report.json"))[-1]
    data: dict[str, Any] = json.loads(latest.read_text(encoding="utf-8"))
    return data


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for doc in report["documents"] for row in doc["links"]]


def bucket_keys(moto: MotoS3) -> set[str]:
    client = s3_client(moto.endpoint_url)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_batch_run_to_s3_end_to_end(
    project: Path, moto_s3: MotoS3, mp4_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moto_s3.make_bucket(BUCKET)
    with LocalSite(mp4_path=mp4_file) as site:
        written = documents(project, site)
        config = write_config(
            project,
            f"stores:\n  evidence:\n    type: s3\n    bucket: {BUCKET}\n    prefix: archive\n"
            f"    endpoint_url: {moto_s3.endpoint_url}\n    region: us-east-1\ndefault_store: evidence\n",
        )
        assert main(["run", "--config", str(config)]) == 1  # the dead link failed; everything else is stored
        first = report_of(project)
        by_href = {(r["source"], r["href"]): r for r in rows(first)}
        dead = by_href[("documents/a.md", written["documents/a.md"][4])]
        assert dead["outcome"] == "failed" and "HTTP 404" in dead["reason"]
        assert dead["url"] == site.url("/missing")
        others = [r for key, r in by_href.items() if r is not dead]
        assert len(others) == 7 and all(r["outcome"] == "ok" for r in others), others
        assert all(r["sha256"] and r["stored"] and r["stored"][0].startswith(f"s3://{BUCKET}/archive/") for r in others)
        assert first["totals"]["failed"] == 1 and first["exit_status"] == 1

        # every bag in the bucket passes a full audit
        assert main(["audit", "--full", "evidence", "--config", str(config)]) == 0
        keys = bucket_keys(moto_s3)
        bags = sorted({k.split("/")[1] for k in keys if k.endswith("/bagit.txt")})
        assert len(bags) == 2 and {b.split("_")[0] for b in bags} == {"a", "b"}

        # downloaded, they pass bagit.py --validate; their provenance manifests name every link
        client = s3_client(moto_s3.endpoint_url)
        for bag in bags:
            local = project / "downloaded" / bag
            for key in (k for k in keys if k.startswith(f"archive/{bag}/")):
                target = local / key.removeprefix(f"archive/{bag}/")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, key, str(target))
            validate = subprocess.run(
                [sys.executable, "-m", "bagit", "--validate", str(local)], capture_output=True, text=True, timeout=120
            )
            assert validate.returncode == 0, validate.stderr
            manifest = json.loads((local / "data" / "provenance.json").read_text(encoding="utf-8"))
            source = manifest["document"]["source"]
            assert sorted(link["href"] for link in manifest["links"]) == sorted(written[source])
        media = [k for k in keys if "/data/media/" in k and k.endswith(".mp4")]
        assert media, "the video is stored as a media file"

        # a second run does no network work and makes no new bag
        site.clear_requests()
        bags_before = sorted(p.name for p in (project / "bags").iterdir())
        assert main(["run", "--config", str(config)]) == 1
        assert site.requests == []
        assert bucket_keys(moto_s3) == keys
        assert sorted(p.name for p in (project / "bags").iterdir()) == bags_before
        second = report_of(project)
        assert second["run_id"] != first["run_id"]
        assert [s["url"] for s in second["still_failing"]] == [site.url("/missing")]
        assert {r["outcome"] for r in rows(second) if r["url"] != site.url("/missing")} == {"held"}
    out = capsys.readouterr()
    assert "Traceback" not in out.err


def test_changed_document_and_url_document_with_a_local_store(project: Path) -> None:
    previous_umask = os.umask(0)  # a careless environment: the run must not write group/world-writable files
    try:
        _changed_document_and_url_document(project)
    finally:
        os.umask(previous_umask)
    for top in ("state", "runs", "bags", "store", "archive_manifests"):
        for path in [project / top, *(project / top).rglob("*")]:
            mode = path.lstat().st_mode
            assert mode & 0o022 == 0, f"{path} is group/world-writable: {oct(mode)}"
            if path.is_file():
                assert mode & 0o111 == 0, f"{path} is executable: {oct(mode)}"
    assert (project / "state").stat().st_mode & 0o777 == 0o700


def _changed_document_and_url_document(project: Path) -> None:
    with LocalSite() as site:
        (project / "documents" / "c.md").write_text(f"[page]({google(site.url('/doc.pdf'))})\n", encoding="utf-8")
        config = write_config(
            project,
            documents=f"  - url: {site.url('/page.html')}\n",
            capture="  requisites: false\n  media: false\n",
        )
        assert main(["run", "--config", str(config), "--log-format", "json"]) == 0
        report = report_of(project)
        sources = {doc["source"]: doc for doc in report["documents"]}
        page_doc = sources[site.url("/page.html")]
        page_urls = {row["url"] for row in page_doc["links"]}
        # links found in the fetched page, made absolute against its URL, and the page itself
        assert {site.url("/doc.pdf"), site.url("/page.html")} <= page_urls
        assert all(row["outcome"] == "ok" for row in rows(report)), rows(report)
        store = project / "store"
        first_bags = sorted(p.name for p in store.iterdir() if (p / "bagit.txt").is_file())
        assert len(first_bags) == 2

        # only the changed document does work: its new link is fetched, held ones are not fetched again
        site.clear_requests()
        (project / "documents" / "c.md").write_text(
            f"[page]({google(site.url('/doc.pdf'))})\n[more]({site.url('/gzip')})\n", encoding="utf-8"
        )
        assert main(["run", "--config", str(config)]) == 0
        fetched = sorted({r.path for r in site.requests})
        assert fetched == ["/gzip", "/page.html"]  # the new link, and the url: document checked for changes
        new_bags = sorted(p.name for p in store.iterdir() if (p / "bagit.txt").is_file())
        added = sorted(set(new_bags) - set(first_bags))
        assert len(added) == 1 and added[0].startswith("c_")
        changed = {doc["source"]: doc for doc in report_of(project)["documents"]}["documents/c.md"]
        assert changed["status"] == "changed"
        assert {r["url"]: r["outcome"] for r in changed["links"]} == {
            site.url("/doc.pdf"): "held",
            site.url("/gzip"): "ok",
        }


def test_a_second_run_is_refused_while_one_holds_the_state(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "documents" / "d.md").write_text("[a](https://example.org/a)\n", encoding="utf-8")
    config = write_config(project)
    with run_lock(project / "state"):
        assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"another run (PID {os.getpid()})" in err and "state/run.lock" in err
    assert not (project / "runs").exists()


def test_dry_run_fetches_and_writes_nothing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "documents" / "d.md").write_text(
        "[a](https://www.google.com/url?q=https://ex.com/a&sa=D)\n[b](javascript:alert(1))\n", encoding="utf-8"
    )
    config = write_config(project)
    assert main(["run", "--config", str(config), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "documents/d.md: new, 2 links, 1 targets" in err
    assert "1 targets would be captured" in err
    assert not (project / "runs").exists() and not (project / "bags").exists()
    assert not (project / "state" / "captures").exists()


def test_bad_config_and_unreadable_document_are_one_line_errors(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = project / "configs" / "bad.yaml"
    bad.write_text("documents:\n  - path: a.md\n    url: https://example.org/\n", encoding="utf-8")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml" in err and "exactly one of" in err


def test_one_off_capture_goes_all_the_way_to_a_stored_bag(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalSite() as site:
        url = google(site.url("/doc.pdf"))
        store = project / "kept"
        status = main(["capture", url, "--allow-private", "--out", str(project / "cap"), "--store", str(store)])
        assert status == 0, capsys.readouterr().err
    (bag,) = [p for p in store.iterdir() if (p / "bagit.txt").is_file()]
    validate = subprocess.run(
        [sys.executable, "-m", "bagit", "--validate", str(bag)], capture_output=True, text=True, timeout=60
    )
    assert validate.returncode == 0, validate.stderr
    manifest = json.loads((bag / "data" / "provenance.json").read_text(encoding="utf-8"))
    assert manifest["document"]["source"] == "command line"
    command = (bag / manifest["document"]["path_in_bag"]).read_text(encoding="utf-8")
    assert f"command: preserve capture {url}" in command.replace("'", "")
    (link,) = manifest["links"]
    assert link["href"] == url and link["target"]["url"] == site.url("/doc.pdf")
    assert [c["outcome"] for c in link["captures"]] == ["ok"]
    out = capsys.readouterr().out
    assert f"stored {bag.name}" in out and "fast audit of the stored copy passed" in out


def test_store_down_keeps_bags_queued_and_the_next_run_uploads_them(
    project: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    moto_s3.make_bucket(BUCKET)
    store = f"stores:\n  evidence:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n"
    with LocalSite() as site:
        (project / "documents" / "e.md").write_text(f"[pdf]({site.url('/doc.pdf')})\n", encoding="utf-8")
        (project / "documents" / "f.md").write_text(f"[png]({site.url('/img/a.png')})\n", encoding="utf-8")
        down = write_config(
            project, store + "    endpoint_url: http://127.0.0.1:9\n    outage_seconds: 1\ndefault_store: evidence\n"
        )
        assert main(["run", "--config", str(down), "--only", "documents/e.md"]) == 2
        err = capsys.readouterr().err
        assert "store unreachable" in err and "bags stay queued locally for the next run" in err
        queued = sorted(p.name for p in (project / "bags").iterdir())
        assert len(queued) == 1 and queued[0].startswith("e_")
        assert site.hits("/doc.pdf") == 1 and site.hits("/img/a.png") == 0  # --only: f.md untouched
        assert report_of(project)["exit_status"] == 2

        up = write_config(project, store + f"    endpoint_url: {moto_s3.endpoint_url}\ndefault_store: evidence\n")
        site.clear_requests()
        assert main(["run", "--config", str(up)]) == 0
        assert [r.path for r in site.requests] == ["/img/a.png"]  # e.md is unchanged: only f.md fetches
    stored = {k.split("/")[0] for k in bucket_keys(moto_s3) if k.endswith("/bagit.txt")}
    assert queued[0] in stored and len(stored) == 2


def test_store_down_for_a_while_is_waited_for_and_the_run_completes(
    project: Path, moto_s3: MotoS3, fault_proxy: Any
) -> None:
    """The endpoint refuses connections when the run starts and comes back some seconds later: capture goes
    on meanwhile, the upload waits it out with backoff, and the run ends with everything stored."""
    moto_s3.make_bucket(BUCKET)
    with LocalSite() as site:
        (project / "documents" / "g.md").write_text(f"[pdf]({site.url('/doc.pdf')})\n", encoding="utf-8")
        config = write_config(
            project,
            f"stores:\n  evidence:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n"
            f"    endpoint_url: {fault_proxy.endpoint_url}\n    outage_seconds: 60\ndefault_store: evidence\n",
        )
        fault_proxy.stop_listening()
        back = threading.Timer(4.0, fault_proxy.start_listening)
        back.start()
        started = time.monotonic()
        try:
            assert main(["run", "--config", str(config)]) == 0
        finally:
            back.join()
        assert time.monotonic() - started >= 4.0  # it did wait for the store
    assert any(k.endswith("/bagit.txt") for k in bucket_keys(moto_s3))
    assert report_of(project)["problems"] == []
