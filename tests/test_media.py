"""The media fetcher against real yt-dlp and the local test site (no mocks)."""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import datetime
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.cli import main as warcio_main

from pipeline.capture.media import MediaSettings, capture_media, safe_file_name, yt_dlp_claims
from pipeline.capture.warc import WarcFile
from pipeline.records import Capture, target_key
from tests.support.site import LocalSite, SiteHandler

SETTINGS = MediaSettings(socket_timeout=5.0, retries=0)


def _capture(url: str, out_dir: Path) -> Capture:
    return capture_media(url, canonical=url, kind="media", out_dir=out_dir, settings=SETTINGS)


def _media_dirs(out_dir: Path) -> list[str]:
    media = out_dir / "media"
    return sorted(p.name for p in media.iterdir()) if media.exists() else []


def _run_warcio(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real `warcio` CLI in-process; `check` always ends in SystemExit(code)."""
    capsys.readouterr()
    try:
        warcio_main(args=list(args))
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("path", ["/media/clip.mp4", "/video_page.html"])
def test_generic_extractor_downloads_exact_bytes(site: LocalSite, mp4_file: Path, tmp_path: Path, path: str) -> None:
    url = site.url(path)
    capture = _capture(url, tmp_path)

    assert capture.outcome == "ok", capture.error
    assert capture.fetcher == "media" and capture.error is None
    key = target_key(url)
    assert _media_dirs(tmp_path) == [key]  # finished directory only, no .part left behind
    roles = {f.role: f for f in capture.files}
    assert set(roles) == {"media", "info-json"}  # the site has no thumbnail or subtitles
    media = roles["media"]
    assert media.path.startswith(f"media/{key}/") and media.path.endswith(".mp4")
    assert media.media_type == "video/mp4"
    # The page case is a plain HTTP download of the <video>/og:video URL: no remux, the bytes are as served.
    stored = (tmp_path / media.path).read_bytes()
    assert media.sha256 == site.mp4_sha256 == hashlib.sha256(stored).hexdigest()
    assert media.sha512 == hashlib.sha512(stored).hexdigest() and media.size == len(stored)
    info_json = tmp_path / roles["info-json"].path
    assert info_json.name.endswith(".info.json") and roles["info-json"].media_type == "application/json"
    info = json.loads(info_json.read_text(encoding="utf-8"))
    assert info["extractor_key"] == capture.tools["extractor"]
    assert hashlib.sha256(info_json.read_bytes()).hexdigest() == roles["info-json"].sha256

    assert set(capture.tools) == {"yt-dlp", "ffmpeg", "extractor", "format"}
    assert capture.tools["ffmpeg"] != "absent"  # installed here and in CI
    assert capture.details["webpage_url"] == url and capture.details["title"] == capture.title
    assert capture.warc_records == ()
    assert datetime.fromisoformat(capture.started) <= datetime.fromisoformat(capture.ended)
    assert datetime.fromisoformat(capture.ended).utcoffset() is not None


@pytest.mark.parametrize("media_in_warc", [False, True])
def test_warc_records(
    site: LocalSite, mp4_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], media_in_warc: bool
) -> None:
    url = site.url("/video_page.html")
    warc_path = tmp_path / "capture.warc.gz"
    with WarcFile(warc_path, software="test-media/0") as warc:
        capture = capture_media(
            url,
            canonical=url,
            kind="media",
            out_dir=tmp_path / "out",
            settings=MediaSettings(socket_timeout=5.0, media_in_warc=media_in_warc),
            warc=warc,
            warc_name="warcs/capture.warc.gz",
            page_url="https://example.org/article",
        )
    assert capture.outcome == "ok", capture.error

    code, out = _run_warcio(capsys, "check", "-v", str(warc_path))
    assert code == 0, out

    media = next(f for f in capture.files if f.role == "media")
    expected_types = ["resource", "metadata"] if media_in_warc else ["metadata"]
    assert [r.record_type for r in capture.warc_records] == expected_types
    assert all(r.file == "warcs/capture.warc.gz" for r in capture.warc_records)

    with warc_path.open("rb") as fh:
        records = {
            r.rec_headers.get_header("WARC-Record-ID"): (r, r.content_stream().read()) for r in ArchiveIterator(fh)
        }
    metadata = next(r for r in capture.warc_records if r.record_type == "metadata")
    record, block = records[metadata.record_id]
    fields = dict(line.split(": ", 1) for line in block.decode().splitlines())
    assert fields == {
        "page-url": "https://example.org/article",
        "media-url": site.url("/media/clip.mp4"),
        "file": media.path,
        "sha256": media.sha256,
        "sha512": media.sha512,
        "size": str(media.size),
        "extractor": capture.tools["extractor"],
        "format": capture.tools["format"],
    }
    assert record.rec_headers.get_header("WARC-Target-URI") == site.url("/media/clip.mp4")

    # offsets/lengths point at whole gzip members: re-reading from the offset finds the same record
    with warc_path.open("rb") as fh:
        for ref in capture.warc_records:
            fh.seek(ref.offset)
            first = next(iter(ArchiveIterator(fh)))
            assert first.rec_headers.get_header("WARC-Record-ID") == ref.record_id

    if media_in_warc:
        resource = capture.warc_records[0]
        record, payload = records[resource.record_id]
        assert payload == (tmp_path / "out" / media.path).read_bytes() == site.mp4_bytes
        assert record.rec_headers.get_header("Content-Type") == "video/mp4"
        assert record.rec_headers.get_header("WARC-Payload-Digest") == f"sha256:{media.sha256}"
        assert resource.payload_sha512 == media.sha512 and resource.payload_size == media.size
        assert records[metadata.record_id][0].rec_headers.get_header("WARC-Refers-To") == resource.record_id


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("where", "retryable"), [("missing", False), ("closed-port", True)])
def test_failures_are_reported_not_raised(site: LocalSite, tmp_path: Path, where: str, retryable: bool) -> None:
    url = site.url("/missing") if where == "missing" else f"http://127.0.0.1:{_closed_port()}/video.mp4"
    capture = _capture(url, tmp_path)

    assert capture.outcome == "failed"
    assert capture.error and "\n" not in capture.error and "Traceback" not in capture.error
    assert not capture.error.startswith("ERROR:")
    assert ("404" in capture.error) if where == "missing" else ("refused" in capture.error.lower())
    assert capture.retryable is retryable
    assert capture.files == () and capture.warc_records == ()
    assert _media_dirs(tmp_path) == []


def test_max_filesize_fails_cleanly(site: LocalSite, mp4_file: Path, tmp_path: Path) -> None:
    url = site.url("/media/clip.mp4")
    settings = MediaSettings(socket_timeout=5.0, max_filesize=1000)
    capture = capture_media(url, canonical=url, kind="media", out_dir=tmp_path, settings=settings)
    assert capture.outcome == "failed" and capture.retryable is False
    assert capture.error is not None and "max-filesize" in capture.error
    assert _media_dirs(tmp_path) == []


def test_stale_part_removed_and_finished_dir_never_overwritten(site: LocalSite, mp4_file: Path, tmp_path: Path) -> None:
    url = site.url("/media/clip.mp4")
    key = target_key(url)
    stale = tmp_path / "media" / f"{key}.part"
    stale.mkdir(parents=True)
    (stale / "half.mp4.part").write_bytes(b"crashed run")

    first = _capture(url, tmp_path)
    assert first.outcome == "ok", first.error
    assert _media_dirs(tmp_path) == [key]
    assert sorted(f.path for f in first.files) == sorted(
        p.relative_to(tmp_path).as_posix() for p in (tmp_path / "media" / key).iterdir()
    )

    before = {p.name: p.read_bytes() for p in (tmp_path / "media" / key).iterdir()}
    second = _capture(url, tmp_path)
    assert second.outcome == "failed" and second.retryable is False
    assert second.error is not None and "already exists" in second.error
    assert {p.name: p.read_bytes() for p in (tmp_path / "media" / key).iterdir()} == before


def test_hostile_title_gives_bag_safe_names(site: LocalSite, mp4_file: Path, tmp_path: Path) -> None:
    def hostile(h: SiteHandler) -> None:
        page = (
            "<!DOCTYPE html><html><head><title>../../evil%name\n</title>"
            f'<meta property="og:video" content="{h.site.url("/media/clip.mp4")}">'
            "</head><body></body></html>"
        )
        h.respond(200, page.encode())

    site.add_route("/hostile.html", hostile)
    url = site.url("/hostile.html")
    capture = _capture(url, tmp_path)

    assert capture.outcome == "ok", capture.error
    assert capture.title == "../../evil%name"  # the generic extractor does use <title>
    final_dir = (tmp_path / "media" / target_key(url)).resolve()
    assert {p.name for p in final_dir.iterdir()} == {Path(f.path).name for f in capture.files}
    for item in capture.files:
        path = (tmp_path / item.path).resolve()
        assert path.parent == final_dir and path.is_file()
        assert not any(c in path.name for c in "%/\r\n") and path.name[0] not in ".-"
    media = next(f for f in capture.files if f.role == "media")
    assert media.sha256 == site.mp4_sha256
    assert "evil_name" in media.path  # still readable: only the unsafe characters were replaced


def test_safe_file_name() -> None:
    assert safe_file_name("..⧸..⧸evil%name [x].mp4") == "⧸..⧸evil_name [x].mp4"
    assert safe_file_name("-rf\r\nname.mp4") == "rf__name.mp4"
    assert safe_file_name("Видео 動画 [id].mp4") == "Видео 動画 [id].mp4"
    assert safe_file_name("...") == "media"


def test_yt_dlp_claims() -> None:
    assert yt_dlp_claims("https://www.youtube.com/watch?v=5cF-gIL8yzk")
    assert not yt_dlp_claims("https://news.example/article")
    assert not yt_dlp_claims("http://127.0.0.1:8080/media/clip.mp4")  # only the generic extractor would take it
