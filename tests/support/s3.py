"""A real S3 endpoint on loopback for store tests: a moto server and a fault-injecting reverse proxy.

The store talks to S3 with boto3 over HTTP, and the failures it must survive (5xx answers, dropped
connections, bytes damaged in transit, an endpoint that goes away) live on the wire. Patching boto3
in-process would hide exactly those, so tests get a genuine moto server (`MotoS3`) and, in front of
it, a genuine HTTP/1.1 proxy (`FaultProxy`) that counts and breaks traffic on request.

Load the fixtures as a plugin: ``pytest_plugins = [..., "tests.support.s3"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import boto3
import botocore.config
import pytest

if TYPE_CHECKING:
    from email.message import Message

    from moto.server import ThreadedMotoServer

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

PIECE = 64 * 1024
"""Bodies are relayed in pieces of at most this size, so large uploads never sit in memory."""

_MAX_LINE = 64 * 1024
_MAX_TRAILER_LINES = 100
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "upgrade"}
)
"""Headers that describe one connection, not the message; `Expect` is answered by the proxy itself."""


def s3_env(endpoint_url: str) -> dict[str, str]:
    """Environment for a subprocess that must reach `endpoint_url` with the dummy credentials, and nothing else.

    Merge it over a filtered environment; it deliberately sets no profile, token or config file.
    """
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ENDPOINT_URL": endpoint_url,
    }


def s3_client(
    endpoint_url: str,
    *,
    config: botocore.config.Config | None = None,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> Any:
    """A boto3 S3 client with explicit credentials (dummy by default), so no real AWS identity is ever used."""
    return _client("s3", endpoint_url, config, access_key, secret_key)


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _client(
    service: str, endpoint_url: str, config: botocore.config.Config | None, access_key: str, secret_key: str
) -> Any:
    """Clients share one session: a fresh session reloads the service model, ~0.2 s per client."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session(region_name=REGION)
        return _session.client(
            service,
            endpoint_url=endpoint_url,
            config=config,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )


# -- moto ------------------------------------------------------------------------------------------------


class MotoS3:
    """moto's S3 in server mode on an ephemeral 127.0.0.1 port, in this process (fast to start, reset)."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoS3:
        """Bind and serve; moto's default address is 0.0.0.0, so the loopback address is always passed."""
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer  # heavy import: only when a test needs S3

        # werkzeug prints one line per request to stderr at INFO unless its logger already has a level.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._server = server
        self.host, self.port = server.get_host_and_port()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self, *, endpoint_url: str | None = None, config: botocore.config.Config | None = None) -> Any:
        """A client for this server, or for `endpoint_url` (a `FaultProxy` in front of it)."""
        return s3_client(endpoint_url or self.endpoint_url, config=config)

    def make_bucket(self, name: str, *, versioning: bool = False, object_lock: bool = False) -> str:
        """Create a bucket; Object Lock implies versioning, as on AWS."""
        client = self.client()
        if object_lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            client.create_bucket(Bucket=name)
        if versioning and not object_lock:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def reset(self) -> None:
        """Forget every bucket and object (all moto backends), so a shared server isolates tests."""
        self._post("/moto-api/reset", b"")
        self._set_auth_free_requests(float("inf"))

    @contextlib.contextmanager
    def require_signatures(self) -> Iterator[tuple[str, str]]:
        """Make moto verify SigV4 (it does not by default); yields an IAM user's (access key, secret).

        Inside the block the dummy `testing` credentials are rejected (InvalidAccessKeyId) and a
        request whose signed headers were altered gets SignatureDoesNotMatch.
        """
        iam = _client("iam", self.endpoint_url, None, ACCESS_KEY, SECRET_KEY)
        user = f"tester-{random.randrange(1 << 30)}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._set_auth_free_requests(0)
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self._set_auth_free_requests(float("inf"))

    def _set_auth_free_requests(self, count: float) -> None:
        """moto authenticates every request after the first `count` (process-wide, infinite by default)."""
        self._post("/moto-api/reset-auth", str(count).encode())

    def _post(self, path: str, body: bytes) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", path, body=body)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"moto {path}: HTTP {response.status}: {payload[:200]!r}")
        finally:
            conn.close()


# -- fault proxy -----------------------------------------------------------------------------------------


class Exchange(NamedTuple):
    """One request seen by the proxy; `status` is 0 when the connection was dropped without an answer."""

    method: str
    path: str
    status: int


class FaultProxy:
    """A reverse proxy in front of an S3 endpoint that counts traffic and injects faults on demand.

    Clients use `endpoint_url` (the proxy) as their S3 endpoint: SigV4 signs the Host header, so the
    proxy forwards Host exactly as received and the upstream verifies the client's signature unchanged.
    Bodies are streamed through byte-exact, including `Transfer-Encoding: chunked` framing and
    `aws-chunked` payloads. Fault knobs are plain attributes a test may change at any time:

    - `fail_rate` / `fail_statuses`: answer an S3 XML error (500 InternalError, 503 SlowDown) without forwarding;
    - `drop_rate`: read the request, then reset the connection without any answer;
    - `corrupt_next_put_bodies`: flip one byte in the middle of the next N object uploads (PUT, or POST
      with a body, to a path with an object key); for chunked/aws-chunked bodies inside the first data chunk;
    - `down_until`: a `time.monotonic()` deadline before which every request gets 503 SlowDown;
      `stop_listening()` / `start_listening()` really close and re-open the port (connection refused).
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        seed: int = 0,
        fail_rate: float = 0.0,
        fail_statuses: tuple[int, ...] = (500, 503),
        drop_rate: float = 0.0,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self.upstream: tuple[str, int] = (parts.hostname, parts.port)
        self.fail_rate = fail_rate
        self.fail_statuses = fail_statuses
        self.drop_rate = drop_rate
        self.corrupt_next_put_bodies = 0
        self.down_until = 0.0
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.stats: dict[str, dict[str, int]] = {}
        self.exchanges: list[Exchange] = []
        self.faults: list[tuple[str, str, str]] = []
        """(kind, method, path) for every injected fault: fail, drop, down, corrupt."""
        self.corrupted: list[tuple[str, str, int]] = []
        """(method, path, body offset) of every byte actually flipped; the offset excludes HTTP chunk framing."""
        self.errors: list[str] = []
        """Exceptions in handler threads (client gone, upstream unreachable): kept here, never printed."""
        self.port = 0
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> FaultProxy:
        self.start_listening()
        return self

    def start_listening(self) -> None:
        """Bind 127.0.0.1 (the same port again after `stop_listening`) and serve from a daemon thread."""
        if self._server is not None:
            return
        server = _ProxyServer(("127.0.0.1", self.port), _ProxyHandler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def stop_listening(self) -> None:
        """Close the listening socket and every open client connection: new connections are refused."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def stop(self) -> None:
        self.stop_listening()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats.clear()
            self.exchanges.clear()
            self.faults.clear()
            self.corrupted.clear()
            self.errors.clear()

    def requests(self, method: str) -> int:
        """How many requests with `method` arrived (answered, failed or dropped)."""
        with self._lock:
            return self.stats.get(method, {}).get("requests", 0)

    def body_bytes(self, method: str) -> int:
        """Request-body bytes received with `method` (HTTP chunk framing excluded, aws-chunked framing included)."""
        with self._lock:
            return self.stats.get(method, {}).get("body_bytes", 0)

    # -- used by the handler threads --------------------------------------------------------------------

    def _decide(self, method: str, path: str, has_body: bool) -> str:
        """The fate of one request: "down", "fail", "drop", "corrupt" or "forward"."""
        with self._lock:
            if time.monotonic() < self.down_until:
                fate = "down"
            elif self.fail_rate > 0 and self.rng.random() < self.fail_rate:
                fate = "fail"
            elif self.drop_rate > 0 and self.rng.random() < self.drop_rate:
                fate = "drop"
            elif self.corrupt_next_put_bodies > 0 and has_body and _is_object_upload(method, path):
                self.corrupt_next_put_bodies -= 1
                fate = "corrupt"
            else:
                return "forward"
            self.faults.append((fate, method, path))
            return fate

    def _fail_status(self) -> int:
        with self._lock:
            return self.rng.choice(self.fail_statuses)

    def _record(self, method: str, path: str, status: int, body_bytes: int, flipped: int | None) -> None:
        with self._lock:
            counts = self.stats.setdefault(method, {"requests": 0, "body_bytes": 0})
            counts["requests"] += 1
            counts["body_bytes"] += body_bytes
            self.exchanges.append(Exchange(method, path, status))
            if flipped is not None:
                self.corrupted.append((method, path, flipped))

    def _track(self, sock: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)


def _is_object_upload(method: str, target: str) -> bool:
    """PUT, or POST with a body, to a path-style URL naming a key (`/bucket/key`), not just a bucket."""
    if method not in ("PUT", "POST"):
        return False
    _, _, key = urlsplit(target).path.lstrip("/").partition("/")
    return bool(key)


def _s3_error(status: int) -> bytes:
    """A small S3-style XML error body, enough for botocore to parse the code and classify it retryable."""
    if status in (503, 429):
        code, message = "SlowDown", "Please reduce your request rate."
    else:
        code, message = "InternalError", "We encountered an internal error. Please try again."
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()


class _Flip:
    """Flips the byte at one body offset as the body streams past, never touching framing.

    The offset is the middle of the body, of the first HTTP chunk, or (aws-chunked) of the first
    aws-chunked data chunk, whose size line is read from the body prefix as it passes.
    """

    def __init__(self, aws_chunked: bool) -> None:
        self.aws_chunked = aws_chunked
        self.target: int | None = None
        self.flipped: int | None = None
        self._prefix = bytearray()
        self._gave_up = False

    def apply(self, piece: bytes, offset: int) -> bytes:
        if self.aws_chunked and self.target is None and not self._gave_up:
            self._learn_aws_target(piece)
        target = self.target
        if self.flipped is None and target is not None and offset <= target < offset + len(piece):
            changed = bytearray(piece)
            changed[target - offset] ^= 0xFF
            self.flipped = target
            return bytes(changed)
        return piece

    def _learn_aws_target(self, piece: bytes) -> None:
        self._prefix += piece[: _MAX_LINE - len(self._prefix)]
        end = self._prefix.find(b"\r\n")
        if end < 0:
            self._gave_up = len(self._prefix) >= _MAX_LINE
            return
        try:
            size = int(bytes(self._prefix[:end]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            size = 0
        if size > 0:
            self.target = end + 2 + size // 2
        else:
            self._gave_up = True


class _RequestBody:
    """One request body, read off the client connection as wire pieces to forward byte-exact."""

    def __init__(self, rfile: IO[bytes], headers: Message) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.length = 0 if self.chunked else int(headers.get("Content-Length") or 0)
        self.aws_chunked = "aws-chunked" in headers.get("Content-Encoding", "").lower() or headers.get(
            "x-amz-content-sha256", ""
        ).upper().startswith("STREAMING-")
        self.received = 0
        """Body bytes read so far, HTTP chunk framing excluded."""

    @property
    def present(self) -> bool:
        return self.chunked or self.length > 0

    def pieces(self, flip: _Flip | None = None) -> Iterator[bytes]:
        """Yield the body exactly as it came over the wire, framing included, with at most one byte flipped."""
        if self.chunked:
            yield from self._chunked_pieces(flip)
            return
        if flip is not None and not flip.aws_chunked:
            flip.target = self.length // 2
        yield from self._data(self.length, flip)

    def drain(self) -> None:
        for _ in self.pieces():
            pass

    def _data(self, size: int, flip: _Flip | None) -> Iterator[bytes]:
        remaining = size
        while remaining > 0:
            piece = self._rfile.read(min(PIECE, remaining))
            if not piece:
                raise ConnectionError("client closed the connection inside a request body")
            offset = self.received
            self.received += len(piece)
            remaining -= len(piece)
            yield flip.apply(piece, offset) if flip is not None else piece

    def _line(self) -> bytes:
        line = self._rfile.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise ConnectionError("bad or truncated chunk framing in a request body")
        return line

    def _chunked_pieces(self, flip: _Flip | None) -> Iterator[bytes]:
        while True:
            line = self._line()
            yield line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            if flip is not None and not flip.aws_chunked and flip.target is None:
                flip.target = self.received + size // 2
            yield from self._data(size, flip)
            yield self._line()  # the CRLF closing the chunk
        for _ in range(_MAX_TRAILER_LINES):
            line = self._line()
            yield line
            if line in (b"\r\n", b"\n"):
                return
        raise ConnectionError("too many trailer lines in a chunked request body")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (`getfqdn`), which can stall on some hosts."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        with self.proxy._lock:
            self.proxy.errors.append(f"{type(exc).__name__}: {exc}")


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end, so handler threads are bounded in time
    server: _ProxyServer
    _body: _RequestBody
    _flip: _Flip | None
    _recorded: bool

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: the proxy records exchanges in `stats` instead of printing them."""

    def _relay(self) -> None:
        proxy = self.server.proxy
        self._body = body = _RequestBody(self.rfile, self.headers)
        fate = proxy._decide(self.command, self.path, body.present)
        self._flip = _Flip(body.aws_chunked) if fate == "corrupt" else None
        self._recorded = False
        try:
            if fate in ("down", "fail"):
                body.drain()
                status = 503 if fate == "down" else proxy._fail_status()
                self._record(status)
                self._answer_error(status)
            elif fate == "drop":
                body.drain()
                self._record(0)
                self._drop()
            else:
                self._forward(body, self._flip)
        finally:
            if not self._recorded:  # the exchange broke off (client gone, upstream failed mid-way)
                self._record(0)

    def _record(self, status: int) -> None:
        """Count the exchange before the client can see its outcome, so a test never reads stale stats."""
        self._recorded = True
        flipped = self._flip.flipped if self._flip is not None else None
        self.server.proxy._record(self.command, self.path, status, self._body.received, flipped)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _relay

    def _answer_error(self, status: int) -> None:
        payload = _s3_error(status)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amz-request-id", "FAULTPROXY")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        """Reset the connection (SO_LINGER 0): the client sees ECONNRESET, no status line at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the makefile() reference would otherwise keep the descriptor open
        self.connection.close()

    def _forward(self, body: _RequestBody, flip: _Flip | None) -> None:
        proxy = self.server.proxy
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.timeout)
        try:
            try:
                upstream.connect()
            except OSError:
                body.drain()
                self._record(502)
                self._answer_error(502)
                return
            # Host and every signed header go out exactly as received (SigV4 covers them).
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "expect":
                    upstream.putheader(name, value)
            upstream.endheaders()
            for piece in body.pieces(flip):
                upstream.send(piece)
            response = upstream.getresponse()
            self._record(response.status)
            self._send_back(response)
        finally:
            upstream.close()

    def _send_back(self, response: http.client.HTTPResponse) -> None:
        bodiless = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        sized = response.getheader("Content-Length") is not None and not response.chunked
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "transfer-encoding":
                self.send_header(name, value)
        rechunk = not bodiless and not sized
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if bodiless:
            return
        while piece := response.read1(PIECE):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if rechunk else piece)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")


# -- pytest fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[MotoS3]:
    """One moto server per session: starting one costs ~0.5 s, a reset costs milliseconds."""
    with MotoS3() as server:
        yield server


@pytest.fixture
def moto_s3(moto_s3_server: MotoS3) -> MotoS3:
    """The session's moto server, emptied (and signature checks off) before each test for isolation."""
    moto_s3_server.reset()
    return moto_s3_server


@pytest.fixture
def fault_proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    """A fresh FaultProxy per test in front of `moto_s3`, so fault settings and stats never leak."""
    with FaultProxy(moto_s3.endpoint_url, seed=1234) as proxy:
        yield proxy
