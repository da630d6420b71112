"""A real local HTTP/1.1 web site for capture tests (WARC via requests+warcio, yt-dlp).

Capture code has to cope with redirects, flaky servers, truncated bodies, stalls, chunked and
gzip transfer, huge bodies and hostile file names. Mocks hide exactly the wire-level details
those tests are about, so this module runs a genuine ``ThreadingHTTPServer`` on 127.0.0.1 and
records what clients actually sent.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import hashlib
import html
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

RouteHandler = Callable[["SiteHandler"], None]
"""A route receives the live request handler and writes the whole response itself."""

HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]

PIECE_SIZE = 1024 * 1024
"""Streamed bodies are written in pieces of this size so huge bodies never sit in memory."""

PATTERN_PERIOD = 251
"""Deterministic body bytes repeat with a prime period so shifted or reordered data is detectable."""

_PATTERN_BUF = bytes(range(PATTERN_PERIOD)) * (PIECE_SIZE // PATTERN_PERIOD + 2)


def iter_pattern(start: int, end: int, piece: int = PIECE_SIZE) -> Iterator[bytes]:
    """Yield the deterministic body bytes in ``[start, end)`` in pieces of at most ``piece`` bytes.

    Byte ``i`` of every generated body is ``i % PATTERN_PERIOD``, so tests can recompute any
    slice (or a digest of a 1 GiB body) without storing it.
    """
    piece = min(piece, PIECE_SIZE)
    position = start
    while position < end:
        size = min(piece, end - position)
        offset = position % PATTERN_PERIOD
        yield _PATTERN_BUF[offset : offset + size]
        position += size


def pattern_bytes(start: int, length: int) -> bytes:
    """Return ``length`` deterministic body bytes beginning at offset ``start``."""
    return b"".join(iter_pattern(start, start + length))


def pattern_sha256(length: int) -> str:
    """Hex SHA-256 of the first ``length`` deterministic bytes, i.e. of ``/bytes/<length>``."""
    digest = hashlib.sha256()
    for piece in iter_pattern(0, length):
        digest.update(piece)
    return digest.hexdigest()


def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Build a genuine single-colour RGB PNG so image-sniffing code sees real data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


def make_pdf(text: str) -> bytes:
    """Build a minimal but structurally valid one-page PDF with a correct xref table."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


PNG_A = make_png(4, 4, (220, 30, 30))
PNG_BG = make_png(2, 2, (30, 30, 220))
PDF_BYTES = make_pdf("Test report")
PDF_FILENAME = "report.pdf"

CSS_BYTES = b"body { background: #fff url(/img/bg.png) repeat; font-family: sans-serif; }\nh1 { color: #333; }\n"
JS_BYTES = b'document.addEventListener("DOMContentLoaded", function () { document.body.dataset.ready = "1"; });\n'

PAGE_TITLE = "Test page"
PAGE_ASSETS = ("/img/a.png", "/css/site.css", "/js/app.js", "/doc.pdf", "/media/clip.mp4")
"""Every URL referenced from ``/page.html`` (``/img/bg.png`` is referenced from the CSS)."""

PAGE_HTML = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Test page</title>
<link rel="stylesheet" href="/css/site.css">
<script src="/js/app.js"></script>
</head>
<body>
<h1>Test page</h1>
<p><img src="/img/a.png" alt="red square" width="4" height="4"></p>
<p><a href="/doc.pdf">Download the report (PDF)</a></p>
<video src="/media/clip.mp4" controls width="160" height="120"></video>
</body>
</html>
"""

VIDEO_PAGE_TITLE = "Video page"
_VIDEO_PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Video page</title>
<meta property="og:title" content="Video page">
<meta property="og:type" content="video.other">
<meta property="og:video" content="{base}/media/clip.mp4">
<meta property="og:video:type" content="video/mp4">
<meta property="og:video:width" content="160">
<meta property="og:video:height" content="120">
</head>
<body>
<h1>Video page</h1>
<video src="/media/clip.mp4" controls width="160" height="120"></video>
</body>
</html>
"""

NOT_FOUND_HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body><h1>404</h1></body></html>\n"
FLAKY_BODY = b"flaky route recovered\n"
RATELIMIT_BODY = b"rate limit lifted\n"

DROP_DECLARED_LENGTH = 100_000
DROP_SENT_LENGTH = 1000

STALL_BODY = b"S" * 4096 + b"T" * 4096
"""``/stall`` sends the first half, waits, then the second half."""

CHUNKED_PARTS = (b"first chunk\n", b"second, a little longer chunk\n", b"x" * 5000, b"\nlast chunk\n")
CHUNKED_BODY = b"".join(CHUNKED_PARTS)

GZIP_PLAIN = b"".join(b"line %04d: gzip encoded test content\n" % i for i in range(200))
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)
"""Deterministic compressed bytes (``mtime=0``), sent as-is on ``/gzip`` and ``/chunked-gzip``."""

DISPOSITION_BODY = b"hostile filename payload\n"
EVIL_FILENAME = "../../etc/passwd\x00.txt"
LONG_FILENAME = "a" * 296 + ".pdf"
"""300 characters: longer than most filesystems allow for a single name (255 bytes)."""

CLIP_SECONDS = 3
CLIP_SIZE = (160, 120)

_clip_lock = threading.Lock()
_clip_path: Path | None = None


def _video_codec_args(ffmpeg: str) -> list[str]:
    """Prefer H.264 (what real sites serve); fall back to MPEG-4 part 2 if libx264 is missing."""
    listing = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if re.search(r"^\s*V\S*\s+libx264\s", listing, re.MULTILINE):
        return ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    return ["-c:v", "mpeg4", "-q:v", "5", "-pix_fmt", "yuv420p"]


def build_clip(directory: Path, seconds: float = CLIP_SECONDS) -> Path:
    """Render a small MP4 with a test-pattern video track and a 440 Hz audio track into ``directory``.

    Raises ``RuntimeError`` with an install hint when ffmpeg is absent, so a missing system
    package is reported as such instead of as an obscure download failure.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            "ffmpeg is not installed (needed to generate the test MP4); "
            "install it, e.g. `apt-get install -y ffmpeg` on Debian/Ubuntu"
        )
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "clip.mp4"
    partial = directory / "clip.partial.mp4"
    width, height = CLIP_SIZE
    command = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=10",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        *_video_codec_args(ffmpeg),
        "-c:a", "aac", "-b:a", "64k",
        "-shortest", "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact",
        str(partial),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 or not partial.is_file():
        raise RuntimeError(
            f"ffmpeg failed to generate the test MP4 (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    partial.replace(target)
    return target


def ensure_clip(directory: Path | None = None) -> Path:
    """Return the process-wide test MP4, generating it on first use only.

    ``directory`` is used only if the clip does not exist yet; otherwise it is ignored. Without
    one, a temporary directory removed at interpreter exit is used.
    """
    global _clip_path
    with _clip_lock:
        if _clip_path is None or not _clip_path.is_file():
            if directory is None:
                directory = Path(tempfile.mkdtemp(prefix="localsite-media-"))
                atexit.register(shutil.rmtree, directory, True)
            _clip_path = build_clip(directory)
        return _clip_path


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server received it, for assertions about what a client really sent."""

    method: str
    path: str
    """Raw request target, including any query string."""
    route: str
    """Path without the query string."""
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    time: float
    """``time.time()`` when the request line and headers had been read."""
    client_port: int
    """Client-side port: equal ports on sequential requests mean the connection was reused."""
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Case-insensitive lookup of the first header called ``name``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


class _Unsatisfiable(Exception):
    """The requested byte range lies outside the resource."""


_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)


def parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """Parse a single ``Range: bytes=...`` header into an inclusive ``(first, last)`` pair.

    Returns ``None`` when the whole body should be sent (no header, multiple ranges or a
    syntactically invalid one, which RFC 9110 says to ignore); raises ``_Unsatisfiable`` for a
    range that starts beyond the end.
    """
    match = _RANGE_RE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise _Unsatisfiable
        return max(0, total - suffix), total - 1
    start = int(first)
    if start >= total:
        raise _Unsatisfiable
    end = int(last) if last else total - 1
    if end < start:
        return None
    return start, min(end, total - 1)


def _header_pairs(headers: HeaderItems | None) -> Iterable[tuple[str, str]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


class SiteHandler(BaseHTTPRequestHandler):
    """Request handler: parses the request, records it, and hands it to the matching route."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalSite/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes; avoid 40 ms ACK stalls

    server: _SiteServer
    route: str
    query: dict[str, str]
    body: bytes
    headers_sent: bool

    @property
    def site(self) -> LocalSite:
        """The LocalSite that owns this server, for route state such as ``latency``."""
        return self.server.site

    @property
    def is_head(self) -> bool:
        """HEAD responses carry headers only; routes use this to skip writing a body."""
        return self.command == "HEAD"

    def log_message(self, format: str, *args: object) -> None:
        """Stay silent: access logs on stderr would clutter every test run."""

    def setup(self) -> None:
        super().setup()
        self.site._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.site._untrack(self.connection)

    def end_headers(self) -> None:
        super().end_headers()
        self.headers_sent = True

    def do_GET(self) -> None:
        """All methods share one dispatcher; routes inspect ``self.command`` when they care."""
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        """Consume any request body so the keep-alive connection stays in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        length = self.headers.get("Content-Length", "").strip()
        return self.rfile.read(int(length)) if length.isdigit() else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self.route = split.path
        self.query = {key: values[0] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        self.headers_sent = False
        self.body = self._read_body()
        site = self.site
        site._record(self)
        site._enter()
        try:
            handler = site.resolve(self.route)
            (handler or not_found)(self)
        except (ConnectionError, TimeoutError) as exc:
            site._record_error(exc)
            self.close_connection = True
        except Exception as exc:
            site._record_error(exc)
            if self.headers_sent:
                self.close_connection = True
            else:
                message = f"route error: {type(exc).__name__}: {exc}\n".encode("utf-8", "replace")
                self.respond(500, message, "text/plain; charset=utf-8", {"Connection": "close"})
        finally:
            site._leave()

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/html; charset=utf-8",
        headers: HeaderItems | None = None,
    ) -> None:
        """Send a complete response with an exact Content-Length (body omitted for HEAD)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in _header_pairs(headers):
            self.send_header(key, value)
        self.end_headers()
        if body and not self.is_head:
            self.wfile.write(body)

    def respond_chunked(
        self,
        status: int,
        parts: Iterable[bytes],
        content_type: str = "text/plain; charset=utf-8",
        headers: HeaderItems | None = None,
    ) -> None:
        """Send ``parts`` as separate HTTP/1.1 chunks (one chunk per non-empty part)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in _header_pairs(headers):
            self.send_header(key, value)
        self.end_headers()
        if self.is_head:
            return
        for part in parts:
            if part:
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def respond_ranged(
        self,
        total: int,
        read: Callable[[int, int], Iterable[bytes]],
        content_type: str,
        headers: HeaderItems | None = None,
    ) -> None:
        """Serve a ``total``-byte resource honouring a single ``Range`` header (200, 206 or 416).

        ``read(start, end)`` yields the bytes of ``[start, end)``, so bodies can be streamed.
        """
        extra = [("Accept-Ranges", "bytes"), *_header_pairs(headers)]
        try:
            wanted = parse_range(self.headers.get("Range"), total)
        except _Unsatisfiable:
            self.respond(416, b"", content_type, [*extra, ("Content-Range", f"bytes */{total}")])
            return
        start, end = (0, total) if wanted is None else (wanted[0], wanted[1] + 1)
        self.send_response(200 if wanted is None else 206)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start))
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if not self.is_head:
            for piece in read(start, end):
                self.wfile.write(piece)


class _SiteServer(ThreadingHTTPServer):
    """Threaded server bound to loopback that reports handler errors to its site, not stderr."""

    daemon_threads = True
    request_queue_size = 128  # throughput benchmarks open many connections at once

    def __init__(self, site: LocalSite) -> None:
        self.site = site
        super().__init__(("127.0.0.1", 0), SiteHandler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse-DNS ``getfqdn`` call, which can stall on offline machines."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        self.site._record_error(error if error is not None else RuntimeError("unknown server error"))


class LocalSite:
    """A local web site on ``127.0.0.1`` with a fixed set of adversarial routes.

    Use as a context manager (or ``start()``/``stop()``). ``requests``, ``hits()`` and
    ``max_concurrency`` tell tests what the client under test really did.
    """

    def __init__(self, *, stall_seconds: float = 5.0, latency: float = 0.1, mp4_path: Path | None = None) -> None:
        self.stall_seconds = stall_seconds
        """How long ``/stall`` pauses mid-body (``?seconds=`` overrides per request)."""
        self.latency = latency
        """How long ``/latency/...`` waits before answering."""
        self.routes: dict[str, RouteHandler] = {
            "/page.html": _page,
            "/img/a.png": _static(PNG_A, "image/png"),
            "/img/bg.png": _static(PNG_BG, "image/png"),
            "/css/site.css": _static(CSS_BYTES, "text/css; charset=utf-8"),
            "/js/app.js": _static(JS_BYTES, "text/javascript; charset=utf-8"),
            "/doc.pdf": _doc_pdf,
            "/missing": not_found,
            "/flaky": _flaky,
            "/ratelimit": _ratelimit,
            "/drop": _drop,
            "/stall": _stall,
            "/chunked": _chunked,
            "/gzip": _gzip,
            "/chunked-gzip": _chunked_gzip,
            "/media/clip.mp4": _clip,
            "/video_page.html": _video_page,
            "/disposition-evil": _disposition(EVIL_FILENAME),
            "/disposition-long": _disposition(LONG_FILENAME),
        }
        """Exact-path routes; tests may add or replace entries (see ``add_route``)."""
        self.prefix_routes: dict[str, RouteHandler] = {
            "/redirect/": _redirect,
            "/latency/": _latency,
            "/bytes/": _bytes,
        }
        """Routes matching every path under a prefix; the longest matching prefix wins."""
        self._mp4_path = mp4_path
        self._mp4_bytes: bytes | None = None
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._hits: Counter[str] = Counter()
        self._errors: list[BaseException] = []
        self._seen: dict[str, set[str]] = {}
        self._active = 0
        self._max_active = 0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _SiteServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalSite:
        """Bind an ephemeral loopback port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("LocalSite is single-use: it has already been started")
        self._server = _SiteServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # short poll keeps stop() fast for per-test sites
            name=f"LocalSite:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly even with stalled or idle keep-alive connections still open."""
        server = self._server
        if server is None or self._stopping.is_set():
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalSite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addressing ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalSite has not been started")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        """Absolute URL for ``path`` on this site."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- routes ----------------------------------------------------------------------------

    def add_route(self, path: str, handler: RouteHandler, *, prefix: bool = False) -> None:
        """Register (or replace) a route; ``prefix=True`` matches every path starting with ``path``."""
        (self.prefix_routes if prefix else self.routes)[path] = handler

    def resolve(self, route: str) -> RouteHandler | None:
        """Find the handler for a query-less path: exact match first, then the longest prefix."""
        handler = self.routes.get(route)
        if handler is not None:
            return handler
        matches = [prefix for prefix in self.prefix_routes if route.startswith(prefix)]
        return self.prefix_routes[max(matches, key=len)] if matches else None

    def first_time(self, scope: str, key: str) -> bool:
        """True exactly once per ``(scope, key)``: the state behind ``/flaky`` and ``/ratelimit``."""
        with self._lock:
            seen = self._seen.setdefault(scope, set())
            if key in seen:
                return False
            seen.add(key)
            return True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` but wake at shutdown; returns True if the site is stopping."""
        return self._stopping.wait(max(0.0, seconds))

    # -- observations ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def hits(self, path: str) -> int:
        """Requests for ``path``: a bare path counts every query variant, ``path?query`` only that one."""
        with self._lock:
            return self._hits[path]

    @property
    def max_concurrency(self) -> int:
        """Largest number of requests that were being handled at the same moment."""
        with self._lock:
            return self._max_active

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while serving (client disconnects show up here as ConnectionError)."""
        with self._lock:
            return list(self._errors)

    def clear_requests(self) -> None:
        """Forget recorded requests, hit counts and the concurrency peak (not flaky/ratelimit state)."""
        with self._lock:
            self._requests.clear()
            self._hits.clear()
            self._max_active = self._active

    # -- media -----------------------------------------------------------------------------

    @property
    def mp4_path(self) -> Path:
        """The MP4 served at ``/media/clip.mp4`` (generated with ffmpeg on first use)."""
        if self._mp4_path is None:
            self._mp4_path = ensure_clip()
        return self._mp4_path

    @property
    def mp4_bytes(self) -> bytes:
        """Exact bytes served at ``/media/clip.mp4``."""
        if self._mp4_bytes is None:
            self._mp4_bytes = self.mp4_path.read_bytes()
        return self._mp4_bytes

    @property
    def mp4_sha256(self) -> str:
        return hashlib.sha256(self.mp4_bytes).hexdigest()

    # -- internals used by the handler -----------------------------------------------------

    def _record(self, handler: SiteHandler) -> None:
        record = RequestRecord(
            method=handler.command,
            path=handler.path,
            route=handler.route,
            query=dict(handler.query),
            headers=tuple(handler.headers.items()),
            time=time.time(),
            client_port=int(handler.client_address[1]),
            body=handler.body,
        )
        with self._lock:
            self._requests.append(record)
            self._hits[handler.route] += 1
            if handler.path != handler.route:
                self._hits[handler.path] += 1

    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self._max_active = max(self._max_active, self._active)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _record_error(self, error: BaseException) -> None:
        with self._lock:
            self._errors.append(error)

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


# -- route implementations ---------------------------------------------------------------------


def not_found(h: SiteHandler) -> None:
    """404 with a small HTML body; also used for every unknown path."""
    h.respond(404, NOT_FOUND_HTML)


def _static(body: bytes, content_type: str) -> RouteHandler:
    def serve(h: SiteHandler) -> None:
        h.respond(200, body, content_type)

    return serve


def _page(h: SiteHandler) -> None:
    h.respond(200, PAGE_HTML)


def _video_page(h: SiteHandler) -> None:
    h.respond(200, _VIDEO_PAGE_TEMPLATE.format(base=h.site.base_url).encode())


def _doc_pdf(h: SiteHandler) -> None:
    h.respond(200, PDF_BYTES, "application/pdf", {"Content-Disposition": f'attachment; filename="{PDF_FILENAME}"'})


def _redirect(h: SiteHandler) -> None:
    """``/redirect/N``: 302 for N>=3, then 301 at 2, then 307 at 1 to ``/page.html``."""
    rest = h.route.removeprefix("/redirect/")
    if not (rest.isascii() and rest.isdigit()) or int(rest) < 1:
        not_found(h)
        return
    hops = int(rest)
    status, target = {1: (307, "/page.html"), 2: (301, "/redirect/1")}.get(hops, (302, f"/redirect/{hops - 1}"))
    body = f'<!DOCTYPE html>\n<html><body><a href="{target}">moved</a></body></html>\n'.encode()
    h.respond(status, body, headers={"Location": target})


def _flaky(h: SiteHandler) -> None:
    if h.site.first_time("flaky", h.query.get("key", "")):
        h.respond(500, b"<!DOCTYPE html>\n<html><body>temporary failure</body></html>\n")
    else:
        h.respond(200, FLAKY_BODY, "text/plain; charset=utf-8")


def _ratelimit(h: SiteHandler) -> None:
    if h.site.first_time("ratelimit", h.query.get("key", "")):
        h.respond(429, b"slow down\n", "text/plain; charset=utf-8", {"Retry-After": "1"})
    else:
        h.respond(200, RATELIMIT_BODY, "text/plain; charset=utf-8")


def _drop(h: SiteHandler) -> None:
    """Promise 100000 bytes, send 1000, then close: a connection lost mid-transfer."""
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(DROP_DECLARED_LENGTH))
    h.end_headers()
    if h.is_head:
        return
    h.wfile.write(pattern_bytes(0, DROP_SENT_LENGTH))
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)


def _stall(h: SiteHandler) -> None:
    """Send half the body, pause, then finish: exercises client read timeouts."""
    seconds = float(h.query.get("seconds", h.site.stall_seconds))
    half = len(STALL_BODY) // 2
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(len(STALL_BODY)))
    h.end_headers()
    if h.is_head:
        return
    h.wfile.write(STALL_BODY[:half])
    if h.site.wait(seconds):
        h.close_connection = True
        return
    h.wfile.write(STALL_BODY[half:])


def _chunked(h: SiteHandler) -> None:
    h.respond_chunked(200, CHUNKED_PARTS)


def _gzip(h: SiteHandler) -> None:
    h.respond(200, GZIP_BODY, "text/plain; charset=utf-8", {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})


def _chunked_gzip(h: SiteHandler) -> None:
    third = len(GZIP_BODY) // 3
    parts = (GZIP_BODY[:third], GZIP_BODY[third : 2 * third], GZIP_BODY[2 * third :])
    h.respond_chunked(200, parts, "text/plain; charset=utf-8", {"Content-Encoding": "gzip"})


def _latency(h: SiteHandler) -> None:
    if h.site.wait(h.site.latency):
        h.close_connection = True
    name = html.escape(h.route)
    body = f"<!DOCTYPE html>\n<html><head><title>Latency {name}</title></head><body>{name}</body></html>\n"
    h.respond(200, body.encode())


def _bytes(h: SiteHandler) -> None:
    rest = h.route.removeprefix("/bytes/")
    if not (rest.isascii() and rest.isdigit()):
        not_found(h)
        return
    h.respond_ranged(int(rest), iter_pattern, "application/octet-stream")


def _clip(h: SiteHandler) -> None:
    data = h.site.mp4_bytes

    def read(start: int, end: int) -> Iterator[bytes]:
        yield data[start:end]

    h.respond_ranged(len(data), read, "video/mp4")


def _disposition(filename: str) -> RouteHandler:
    def serve(h: SiteHandler) -> None:
        disposition = f'attachment; filename="{filename}"'
        h.respond(200, DISPOSITION_BODY, "application/octet-stream", {"Content-Disposition": disposition})

    return serve
