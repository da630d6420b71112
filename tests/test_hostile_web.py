"""Web content built to hurt the archiver: gigantic headers, endless bodies, gzip bombs, invalid UTF-8,
hostile file names, redirect loops and redirects out of http(s) or into private networks. Each capture ends
(never hangs) as `ok` or `failed` with a clear reason, and what is archived is what was sent."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from pipeline.capture.batch import Capturer
from pipeline.config import CaptureSettings
from pipeline.ledger import Ledger
from pipeline.records import Link
from pipeline.resolve import resolve
from tests.support.site import EVIL_FILENAME, LocalSite, SiteHandler

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def bomb_bytes() -> bytes:
    """An HTML page that inflates 1,000x: 100 MiB of NULs behind an image link, about 100 KiB as sent."""
    return gzip.compress(b"<html><img src='/img/a.png'><p>" + b"\0" * (100 * 1024 * 1024) + b"</p></html>", 9)


def settings(**overrides: object) -> CaptureSettings:
    base: dict[str, object] = {
        "allow_private_addresses": True,
        "per_host_rate": 1000.0,
        "read_timeout": 2.0,
        "connect_timeout": 2.0,
        "retries": 0,
        "media": False,
        "max_redirects": 5,
    }
    return CaptureSettings.model_validate({**base, **overrides})


def capture_one(out: Path, url: str, **overrides: object) -> list:
    targets = resolve([Link(source="test", href=url, url=url, syntax="argument")]).targets
    with Ledger(out / "ledger.sqlite") as ledger:
        return Capturer(out, settings(**overrides), ledger).run(targets)


def giant_header(h: SiteHandler) -> None:
    h.send_response(200)
    h.send_header("X-Huge", "a" * (1 << 20))  # one 1 MiB header line
    h.send_header("Content-Length", "2")
    h.end_headers()
    h.wfile.write(b"ok")


def many_headers(h: SiteHandler) -> None:
    h.send_response(200)
    for i in range(5000):
        h.send_header(f"X-Header-{i}", "v")
    h.send_header("Content-Length", "2")
    h.end_headers()
    h.wfile.write(b"ok")


def endless(h: SiteHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b"<p>" + b"x" * 65536 + b"</p>"
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    try:
        for _ in range(100_000):  # 6.5 GB if nobody stops reading
            h.wfile.write(frame)
    except OSError:
        pass  # the client hung up: that is what should happen
    h.close_connection = True


def bomb(h: SiteHandler) -> None:
    h.respond(200, bomb_bytes(), "text/html; charset=utf-8", {"Content-Encoding": "gzip"})


def bad_utf8(h: SiteHandler) -> None:
    h.respond(200, b"<html><title>caf\xe9 \xff\xfe</title><img src='/img/a.png'></html>", "text/html; charset=utf-8")


def loop(h: SiteHandler) -> None:
    h.respond(302, b"", headers={"Location": "/loop"})


def to_file(h: SiteHandler) -> None:
    h.respond(302, b"", headers={"Location": "file:///etc/passwd"})


def to_private(h: SiteHandler) -> None:
    h.respond(302, b"", headers={"Location": "http://10.255.255.1/internal"})


@pytest.fixture
def hostile() -> LocalSite:
    site = LocalSite()
    for path, route in {
        "/giant-header": giant_header,
        "/many-headers": many_headers,
        "/endless": endless,
        "/bomb": bomb,
        "/bad-utf8": bad_utf8,
        "/loop": loop,
        "/to-file": to_file,
        "/to-private": to_private,
    }.items():
        site.add_route(path, route)
    with site:
        yield site


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/giant-header", "header"),
        ("/many-headers", "header"),
        ("/loop", "redirect loop"),
        ("/to-file", "non-http(s) URL"),
    ],
)
def test_hostile_responses_fail_with_a_reason(hostile: LocalSite, tmp_path: Path, path: str, reason: str) -> None:
    started = time.monotonic()
    (result,) = capture_one(tmp_path, hostile.url(path))
    assert result.outcome == "failed"
    assert reason in (result.error or ""), result.error
    assert time.monotonic() - started < 30
    assert "Traceback" not in (result.error or "")


@pytest.mark.timeout(60)
def test_endless_body_stops_at_the_size_limit(hostile: LocalSite, tmp_path: Path) -> None:
    (result,) = capture_one(tmp_path, hostile.url("/endless"), max_body_bytes=5 * 1024 * 1024)
    assert result.outcome == "failed" and "limit" in (result.error or ""), result.error
    assert not list((tmp_path / ".tmp").iterdir())  # the spooled body is gone


@pytest.mark.timeout(60)
def test_redirect_into_a_private_network_is_refused(hostile: LocalSite, tmp_path: Path) -> None:
    (result,) = capture_one(
        tmp_path, hostile.url("/to-private"), allow_private_addresses=False, allowed_networks=["127.0.0.1/32"]
    )
    assert result.outcome == "failed"
    assert "10.255.255.1" in (result.error or "") and "refused" in (result.error or ""), result.error


@pytest.mark.timeout(60)
def test_invalid_utf8_page_is_archived_byte_exact(hostile: LocalSite, tmp_path: Path) -> None:
    (result,) = capture_one(tmp_path, hostile.url("/bad-utf8"))
    assert result.outcome == "ok"
    assert result.title is not None and result.title.startswith("caf")
    (warc,) = result.files[:1]
    with (tmp_path / warc.path).open("rb") as handle:
        payloads = {
            r.rec_headers.get_header("WARC-Target-URI"): r.raw_stream.read()
            for r in ArchiveIterator(handle)
            if r.rec_type == "response"
        }
    assert payloads[hostile.url("/bad-utf8")] == b"<html><title>caf\xe9 \xff\xfe</title><img src='/img/a.png'></html>"
    assert hostile.url("/img/a.png") in payloads  # links are still found in a page that is not valid UTF-8


CHILD = """
import resource, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_hostile_web import capture_one
(result,) = capture_one(Path({out!r}), {url!r})
peak_kib = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
print(result.outcome, result.files[0].path, peak_kib, result.details.get("requisites", dict()).get("captured", 0))
"""


@pytest.mark.timeout(120)
def test_gzip_bomb_is_kept_raw_and_decoding_is_bounded(hostile: LocalSite, tmp_path: Path) -> None:
    """The WARC keeps the bytes as sent (gzip); the page scan for links never inflates the whole bomb."""
    code = CHILD.format(root=str(ROOT), out=str(tmp_path), url=hostile.url("/bomb"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, run.stderr
    outcome, warc_path, peak_kib, requisites = run.stdout.split()
    assert outcome == "ok"
    assert requisites == "1"  # the image link was found in the inflated start of the page
    assert int(peak_kib) < 150 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB: the bomb was inflated"
    with (tmp_path / warc_path).open("rb") as handle:
        found = [
            (r.raw_stream.read(), r.rec_headers.get_header("WARC-Payload-Digest"))
            for r in ArchiveIterator(handle)
            if r.rec_type == "response" and r.rec_headers.get_header("WARC-Target-URI") == hostile.url("/bomb")
        ]
    ((stored, digest),) = found
    assert stored == bomb_bytes()
    assert digest == "sha256:" + hashlib.sha256(bomb_bytes()).hexdigest()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [EVIL_FILENAME.replace(".txt", ".mp4"), "b" * 296 + ".mp4", "x/../../y.mp4"])
def test_hostile_download_names_never_escape_or_overflow(tmp_path: Path, mp4_file: Path, name: str) -> None:
    """A server names its file `../../etc/passwd<NUL>.mp4` or 300 characters long: what is written stays
    inside the capture's media folder, with names any filesystem and any bag accepts."""
    with LocalSite(mp4_path=mp4_file) as site:

        def named(h: SiteHandler) -> None:
            h.respond(200, h.site.mp4_bytes, "video/mp4", {"Content-Disposition": f'attachment; filename="{name}"'})

        site.add_route("/files/evidence.mp4", named)
        out = tmp_path / "out"
        results = capture_one(out, site.url("/files/evidence.mp4"), media=True)
    assert [r.outcome for r in results] == ["ok"], [r.error for r in results]
    media = [p for p in (out / "media").rglob("*") if p.is_file()]
    assert media
    for path in media:
        assert path.resolve().is_relative_to((out / "media").resolve())
        relative = path.relative_to(out)
        assert all(len(part.encode()) <= 255 and "\0" not in part and part != ".." for part in relative.parts)
    assert not [p for p in tmp_path.rglob("*") if p.name in ("passwd", "etc")]
