"""Checks that the local test site behaves on the wire exactly as capture tests will assume.

Run with ``python -m pytest tests/test_site_fixture.py -p tests.support.fixtures``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import site as site_module
from tests.support.site import (
    CHUNKED_BODY,
    CHUNKED_PARTS,
    CSS_BYTES,
    DISPOSITION_BODY,
    DROP_DECLARED_LENGTH,
    DROP_SENT_LENGTH,
    EVIL_FILENAME,
    FLAKY_BODY,
    GZIP_BODY,
    GZIP_PLAIN,
    JS_BYTES,
    LONG_FILENAME,
    NOT_FOUND_HTML,
    PAGE_ASSETS,
    PDF_BYTES,
    PNG_A,
    PNG_BG,
    RATELIMIT_BODY,
    STALL_BODY,
    LocalSite,
    SiteHandler,
    pattern_bytes,
    pattern_sha256,
)

GIB = 1024**3


def raw_get(site: LocalSite, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    """Send one request over a bare socket and return (status line, headers, undecoded body)."""
    request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\nConnection: close\r\n\r\n"
    data = bytearray()
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.sendall(request.encode("ascii"))
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {key.strip().lower(): value.strip() for key, value in (line.split(":", 1) for line in lines)}
    return status, headers, body


def split_chunks(raw: bytes) -> list[bytes]:
    """Strictly parse a chunked body, failing on any framing error."""
    chunks: list[bytes] = []
    position = 0
    while True:
        line_end = raw.index(b"\r\n", position)
        size = int(raw[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            assert raw[position:] == b"\r\n", "unexpected trailer or data after last chunk"
            return chunks
        chunks.append(raw[position : position + size])
        assert raw[position + size : position + size + 2] == b"\r\n"
        position += size + 2


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse PNG chunks, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = []
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        position += 12 + length
    return chunks


def mp4_boxes(data: bytes) -> list[bytes]:
    """Top-level MP4 box types, in file order."""
    kinds = []
    position = 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[position + 8 : position + 16])
        assert size >= 8
        kinds.append(kind)
        position += size
    assert position == len(data)
    return kinds


def test_addressing(site: LocalSite) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", site.base_url)
    assert site.url("/a") == site.url("a") == site.base_url + "/a"


def test_page_and_assets(site: LocalSite) -> None:
    page = requests.get(site.url("/page.html"), timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<title>Test page</title>" in page.text
    for asset in PAGE_ASSETS:
        assert f'"{asset}"' in page.text
    assert '<video src="/media/clip.mp4"' in page.text
    expected = {
        "/img/a.png": (PNG_A, "image/png"),
        "/img/bg.png": (PNG_BG, "image/png"),
        "/css/site.css": (CSS_BYTES, "text/css"),
        "/js/app.js": (JS_BYTES, "text/javascript"),
    }
    for path, (body, content_type) in expected.items():
        response = requests.get(site.url(path), timeout=5)
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["Content-Type"].startswith(content_type)
    assert b"url(/img/bg.png)" in CSS_BYTES


def test_png_assets_are_real_pngs() -> None:
    for data, size in ((PNG_A, 4), (PNG_BG, 2)):
        chunks = png_chunks(data)
        assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
        width, height = struct.unpack(">II", chunks[0][1][:8])
        assert (width, height) == (size, size)
        assert len(zlib.decompress(chunks[1][1])) == height * (1 + 3 * width)


def test_pdf_download(site: LocalSite) -> None:
    response = requests.get(site.url("/doc.pdf"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert response.content == PDF_BYTES
    assert PDF_BYTES.startswith(b"%PDF-1.4") and PDF_BYTES.rstrip().endswith(b"%%EOF")
    xref_at = int(PDF_BYTES.rsplit(b"startxref\n", 1)[1].split()[0])
    assert PDF_BYTES[xref_at:].startswith(b"xref\n")
    entries = re.findall(rb"(\d{10}) 00000 n ", PDF_BYTES[xref_at:])
    for number, offset in enumerate(entries, start=1):
        assert PDF_BYTES[int(offset) :].startswith(b"%d 0 obj" % number)


def test_redirect_chain(site: LocalSite) -> None:
    response = requests.get(site.url("/redirect/3"), timeout=5)
    assert [hop.status_code for hop in response.history] == [302, 301, 307]
    assert response.status_code == 200
    assert response.url == site.url("/page.html")
    hop = requests.get(site.url("/redirect/2"), allow_redirects=False, timeout=5)
    assert (hop.status_code, hop.headers["Location"]) == (301, "/redirect/1")
    hop = requests.get(site.url("/redirect/9"), allow_redirects=False, timeout=5)
    assert (hop.status_code, hop.headers["Location"]) == (302, "/redirect/8")
    assert requests.get(site.url("/redirect/0"), timeout=5).status_code == 404


def test_missing_and_unknown_paths(site: LocalSite) -> None:
    for path in ("/missing", "/no/such/thing", "/bytes/abc"):
        response = requests.get(site.url(path), timeout=5)
        assert response.status_code == 404
    assert requests.get(site.url("/missing"), timeout=5).content == NOT_FOUND_HTML


def test_flaky_fails_once_per_key(site: LocalSite) -> None:
    statuses = [requests.get(site.url(path), timeout=5).status_code for path in (
        "/flaky?key=a", "/flaky?key=a", "/flaky?key=b", "/flaky", "/flaky", "/flaky?key=b",
    )]  # fmt: skip
    assert statuses == [500, 200, 500, 500, 200, 200]
    assert requests.get(site.url("/flaky?key=a"), timeout=5).content == FLAKY_BODY
    assert site.hits("/flaky") == 7
    assert site.hits("/flaky?key=a") == 3


def test_ratelimit_once_per_key(site: LocalSite) -> None:
    first = requests.get(site.url("/ratelimit?key=x"), timeout=5)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    second = requests.get(site.url("/ratelimit?key=x"), timeout=5)
    assert (second.status_code, second.content) == (200, RATELIMIT_BODY)
    assert requests.get(site.url("/ratelimit?key=y"), timeout=5).status_code == 429
    assert requests.get(site.url("/ratelimit"), timeout=5).status_code == 429


def test_drop_truncates_body(site: LocalSite) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(site.url("/drop"), timeout=5)
    status, headers, body = raw_get(site, "/drop")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(DROP_DECLARED_LENGTH)
    assert body == pattern_bytes(0, DROP_SENT_LENGTH)


def test_stall_trips_read_timeout(site: LocalSite) -> None:
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError, match=r"[Rr]ead timed out"):
        requests.get(site.url("/stall"), timeout=(2, 0.3))
    assert time.monotonic() - started < 2


def test_stall_completes_after_pause(site: LocalSite) -> None:
    site.stall_seconds = 0.2
    started = time.monotonic()
    response = requests.get(site.url("/stall"), timeout=5)
    assert response.content == STALL_BODY
    assert time.monotonic() - started >= 0.2
    assert requests.get(site.url("/stall?seconds=0"), timeout=5).content == STALL_BODY


def test_stop_does_not_hang_on_stalled_request() -> None:
    local = LocalSite(stall_seconds=30).start()
    outcome: list[object] = []

    def fetch() -> None:
        try:
            outcome.append(requests.get(local.url("/stall"), timeout=10).content)
        except requests.RequestException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while local.hits("/stall") == 0:
        time.sleep(0.01)
    started = time.monotonic()
    local.stop()
    assert time.monotonic() - started < 1.5
    worker.join(timeout=5)
    assert outcome and isinstance(outcome[0], requests.RequestException)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(local.url("/page.html"), timeout=1)


def test_chunked_is_really_chunked(site: LocalSite) -> None:
    status, headers, body = raw_get(site, "/chunked")
    assert status == "HTTP/1.1 200 OK"
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert split_chunks(body) == list(CHUNKED_PARTS)
    assert requests.get(site.url("/chunked"), timeout=5).content == CHUNKED_BODY


def test_gzip_is_deterministic_with_length(site: LocalSite) -> None:
    assert gzip.compress(GZIP_PLAIN, mtime=0) == GZIP_BODY
    _, headers, body = raw_get(site, "/gzip")
    assert headers["content-encoding"] == "gzip"
    assert headers["content-length"] == str(len(GZIP_BODY))
    assert body == GZIP_BODY
    assert requests.get(site.url("/gzip"), timeout=5).content == GZIP_PLAIN


def test_chunked_gzip(site: LocalSite) -> None:
    _, headers, body = raw_get(site, "/chunked-gzip")
    assert headers["transfer-encoding"] == "chunked"
    assert headers["content-encoding"] == "gzip"
    chunks = split_chunks(body)
    assert len(chunks) > 1
    assert b"".join(chunks) == GZIP_BODY
    assert requests.get(site.url("/chunked-gzip"), timeout=5).content == GZIP_PLAIN


def test_latency_and_concurrency(site: LocalSite) -> None:
    site.latency = 0.3
    paths = [f"/latency/{n}" for n in range(8)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda path: requests.get(site.url(path), timeout=5), paths))
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 and "<title>Latency" in r.text for r in responses)
    assert 0.3 <= elapsed < 1.5
    assert site.max_concurrency >= 4


def test_bytes_full_and_ranges(site: LocalSite) -> None:
    size = 3 * 1024 * 1024 + 17
    response = requests.get(site.url(f"/bytes/{size}"), timeout=10)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert int(response.headers["Content-Length"]) == size
    assert hashlib.sha256(response.content).hexdigest() == pattern_sha256(size)
    cases = {
        "bytes=10-19": (206, 10, 20),
        "bytes=1048570-1048600": (206, 1048570, 1048601),
        "bytes=-5": (206, size - 5, size),
        f"bytes={size - 3}-": (206, size - 3, size),
        f"bytes=0-{size + 100}": (206, 0, size),
        "bytes=5-1": (200, 0, size),
        "bytes=0-1,5-6": (200, 0, size),
    }
    for header, (status, start, end) in cases.items():
        part = requests.get(site.url(f"/bytes/{size}"), headers={"Range": header}, timeout=10)
        assert part.status_code == status, header
        assert part.content == pattern_bytes(start, end - start), header
        if status == 206:
            assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
    bad = requests.get(site.url(f"/bytes/{size}"), headers={"Range": f"bytes={size}-"}, timeout=5)
    assert (bad.status_code, bad.headers["Content-Range"]) == (416, f"bytes */{size}")


def test_gigabyte_body_is_streamed(site: LocalSite) -> None:
    head = requests.head(site.url(f"/bytes/{GIB}"), timeout=5)
    assert int(head.headers["Content-Length"]) == GIB
    tail = requests.get(site.url(f"/bytes/{GIB}"), headers={"Range": "bytes=-1000"}, timeout=5)
    assert tail.content == pattern_bytes(GIB - 1000, 1000)
    with requests.get(site.url(f"/bytes/{GIB}"), stream=True, timeout=5) as response:
        received = b""
        for piece in response.iter_content(chunk_size=1024 * 1024):
            received += piece
            if len(received) >= 4 * 1024 * 1024:
                break
    assert received[: 4 * 1024 * 1024] == pattern_bytes(0, 4 * 1024 * 1024)


def test_mp4_and_video_page(site: LocalSite, mp4_file: Path) -> None:
    data = mp4_file.read_bytes()
    assert site.mp4_bytes == data
    assert site.mp4_sha256 == hashlib.sha256(data).hexdigest()
    boxes = mp4_boxes(data)
    assert boxes[0] == b"ftyp" and boxes.index(b"moov") < boxes.index(b"mdat")
    assert b"vide" in data and b"soun" in data  # handler types of the video and audio tracks
    response = requests.get(site.url("/media/clip.mp4"), timeout=5)
    assert response.headers["Content-Type"] == "video/mp4"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == data
    part = requests.get(site.url("/media/clip.mp4"), headers={"Range": "bytes=100-"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert part.content == data[100:]
    page = requests.get(site.url("/video_page.html"), timeout=5).text
    assert "<title>Video page</title>" in page
    assert '<video src="/media/clip.mp4"' in page
    assert f'<meta property="og:video" content="{site.url("/media/clip.mp4")}">' in page


def test_missing_ffmpeg_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(site_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="ffmpeg is not installed"):
        site_module.build_clip(tmp_path)


def test_hostile_content_disposition(site: LocalSite) -> None:
    evil = requests.get(site.url("/disposition-evil"), timeout=5)
    assert evil.content == DISPOSITION_BODY
    assert evil.headers["Content-Disposition"] == f'attachment; filename="{EVIL_FILENAME}"'
    assert "../" in EVIL_FILENAME and "\x00" in EVIL_FILENAME
    long = requests.get(site.url("/disposition-long"), timeout=5)
    assert long.headers["Content-Disposition"] == f'attachment; filename="{LONG_FILENAME}"'
    assert len(LONG_FILENAME) == 300


def test_requests_are_recorded(site: LocalSite) -> None:
    requests.get(site.url("/page.html?x=1"), headers={"X-Probe": "yes"}, timeout=5)
    head = requests.head(site.url("/doc.pdf"), timeout=5)
    requests.post(site.url("/missing"), data=b"payload", timeout=5)
    assert head.content == b"" and int(head.headers["Content-Length"]) == len(PDF_BYTES)
    first, second, third = site.requests
    assert (first.method, first.path, first.route, first.query) == (
        "GET",
        "/page.html?x=1",
        "/page.html",
        {"x": "1"},
    )
    assert first.header("x-probe") == "yes"
    assert abs(first.time - time.time()) < 5
    assert (second.method, third.method, third.body) == ("HEAD", "POST", b"payload")
    assert (site.hits("/page.html"), site.hits("/page.html?x=1"), site.hits("/nothing")) == (1, 1, 0)
    site.clear_requests()
    assert site.requests == [] and site.hits("/page.html") == 0


def test_keep_alive_reuses_connection(site: LocalSite) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(site.url("/page.html"), timeout=5).status_code == 200
    assert len({record.client_port for record in site.requests}) == 1


def test_custom_routes(site: LocalSite) -> None:
    def hello(h: SiteHandler) -> None:
        h.respond(201, f"hello {h.route} {h.query.get('name', '')}".encode(), "text/plain")

    def broken(h: SiteHandler) -> None:
        raise ValueError("boom")

    site.add_route("/hello", hello)
    site.add_route("/greet/", hello, prefix=True)
    site.add_route("/broken", broken)
    assert requests.get(site.url("/hello?name=x"), timeout=5).text == "hello /hello x"
    assert requests.get(site.url("/greet/deep/path"), timeout=5).text == "hello /greet/deep/path "
    failure = requests.get(site.url("/broken"), timeout=5)
    assert failure.status_code == 500 and "ValueError: boom" in failure.text
    assert any(isinstance(error, ValueError) for error in site.errors)


def test_server_writes_nothing_to_stderr(site: LocalSite, capfd: pytest.CaptureFixture[str]) -> None:
    def broken(h: SiteHandler) -> None:
        raise ZeroDivisionError

    site.add_route("/broken", broken)
    for path in ("/page.html", "/missing", "/broken", "/flaky"):
        requests.get(site.url(path), timeout=5)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(site.url("/drop"), timeout=5)
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 501")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
