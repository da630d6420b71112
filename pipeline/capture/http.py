"""Pages and files into WARC: requests on the wire, warcio's record format, our own WARC 1.1 writer.

Every request/response exchange, each redirect hop included, becomes a `request` and a `response`
record. Bodies stream to a temporary file while sha256, sha512 and the WARC block digest are computed, so
the WARC record is then written strictly in order and nothing is read back only to hash it. The stored
payload is the entity body as transferred after de-chunking (content encoding kept), which is what
`WARC-Payload-Digest` covers.
"""

from __future__ import annotations

import email.utils
import errno
import hashlib
import random
import re
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import warcio
from requests.cookies import extract_cookies_to_jar

from pipeline import __version__
from pipeline.capture.guard import (
    AddressPolicy,
    BlockedAddress,
    Resolver,
    guarded_session,
    last_peer_address,
    system_resolver,
)
from pipeline.capture.polite import HostGate
from pipeline.capture.warc import WarcFile, as_warc_record, http_head_bytes
from pipeline.config import CaptureSettings
from pipeline.records import Capture, WarcRecord

CHUNK = 1 << 20
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Already compressed: deflating them again costs time and saves nothing, so their records use level 1.
_COMPRESSED_TYPES = re.compile(
    r"^(?:image/(?!svg|bmp|x-ms-bmp|tiff)|video/|audio/|font/woff|application/(?:zip|gzip|x-gzip|x-bzip2|x-xz|"
    r"zstd|pdf|x-7z-compressed|vnd\.rar|octet-stream|vnd\.openxmlformats|epub))",
    re.I,
)
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")\s]+)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)


class FetchError(Exception):
    """A fetch that failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


_TOOL_VERSIONS = {
    "preserve": __version__,
    "python": sys.version.split()[0],
    "requests": requests.__version__,
    "urllib3": urllib3.__version__,
    "warcio": getattr(warcio, "__version__", "unknown"),
}


def tool_versions() -> dict[str, str]:
    return dict(_TOOL_VERSIONS)  # a copy per capture: a Capture's dict is its own


@dataclass
class Exchange:
    """One request and its response as seen on the wire, the body spooled (memory up to 1 MiB, then a
    temporary file) and hashed."""

    url: str
    method: str
    request_target: str
    request_headers: list[tuple[str, str]]
    status: int
    status_line: str
    headers: list[tuple[str, str]]
    head: bytes  # the HTTP header block as stored (`http_head_bytes`), which the block digest covers
    body: IO[bytes]
    size: int
    sha256: str
    sha512: str
    block_sha256: str
    peer: str | None
    started: datetime
    content_type: str
    redacted: tuple[str, ...] = ()  # request headers whose values the WARC does not keep

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def is_html(self) -> bool:
        return self.content_type.split(";")[0].strip().lower() in _HTML_TYPES

    def discard(self) -> None:
        self.body.close()  # a spooled temporary file: closing removes it


@dataclass
class _Result:
    records: list[WarcRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    attempts: int = 0


class HttpFetcher:
    """Fetches URLs politely and records every exchange into a WarcFile. Safe to share between threads."""

    def __init__(
        self,
        settings: CaptureSettings,
        *,
        tmp_dir: Path,
        resolver: Resolver | None = None,
        allow_private: bool | None = None,
        gate: HostGate | None = None,
    ) -> None:
        self.settings = settings
        allow = settings.allow_private_addresses if allow_private is None else allow_private
        self.policy = AddressPolicy(
            allow_private=allow,
            resolver=resolver or system_resolver,
            allowed_networks=tuple(settings.allowed_networks),
        )
        # keep-alive pools for many hosts (requests drops the least recently used pool beyond this number)
        self.session = guarded_session(
            self.policy, hosts=max(64, 4 * settings.workers), per_host=max(2, settings.per_host_concurrency)
        )
        self.session.headers["User-Agent"] = settings.user_agent
        self.gate = gate or HostGate(settings.per_host_concurrency, settings.per_host_rate)
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)

    # -- one exchange -----------------------------------------------------------------------------------

    def exchange(self, url: str, max_bytes: int | None = None) -> Exchange:
        """One request, no redirect following; raises FetchError."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"{url}: only http and https are fetched", retryable=False)
        host = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        limit = self.settings.max_body_bytes if max_bytes is None else max_bytes
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        extra = self.settings.headers_for(parts.hostname or "") if self.settings.site_headers else {}
        with self.gate.slot(host):
            started = datetime.now(UTC)
            try:
                response = self._get(url, timeout, extra)
            except BlockedAddress as exc:
                raise FetchError(str(exc), retryable=False) from None
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, ValueError) as exc:
                raise FetchError(f"{url}: invalid URL: {exc}", retryable=False) from None
            except requests.exceptions.RequestException as exc:
                raise FetchError(f"{url}: {_one_line(exc)}", retryable=True) from None
            try:
                return self._spool(url, response, started, limit)
            finally:
                response.close()

    def _get(self, url: str, timeout: tuple[float, float], extra: dict[str, str]) -> requests.Response:
        """`session.get(url, stream=True, allow_redirects=False)` without what it does per request that we
        never use (copies of the cookie jar and of merged settings, hooks, proxies, preparing the next hop
        of a redirect not followed), which cost as much CPU as a small page's WARC: the same prepared
        request (URL checks and quoting, the session's headers and cookies, credentials in the URL), sent by
        the session's guarded adapter, its cookies kept in the session's jar as `Session.send` keeps them."""
        session = self.session
        prepared = requests.PreparedRequest()
        headers = {**session.headers, **extra} if extra else session.headers
        prepared.prepare(method="GET", url=url, headers=headers, cookies=session.cookies, data={}, params={})
        adapter = session.get_adapter(url=url)
        response = adapter.send(prepared, stream=True, timeout=timeout, verify=session.verify, cert=None, proxies={})
        extract_cookies_to_jar(session.cookies, prepared, response.raw)
        return response

    def _spool(self, url: str, response: requests.Response, started: datetime, limit: int) -> Exchange:
        raw = response.raw
        version = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}.get(getattr(raw, "version", 11), "HTTP/1.1")
        reason = response.reason or ""
        status_line = f"{version} {response.status_code}" + (f" {reason}" if reason else "")
        headers = [(str(k), str(v)) for k, v in raw.headers.items()]
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{url}: body of {declared} bytes is over the limit of {limit}", retryable=False)
        head = http_head_bytes(status_line, headers)
        peer = last_peer_address()
        request = response.request
        request_headers, redacted = _redact(
            [("Host", urlsplit(url).netloc), *((str(k), str(v)) for k, v in request.headers.items())],
            self.settings.site_headers,
        )
        sha256, sha512, block = hashlib.sha256(), hashlib.sha512(), hashlib.sha256(head)
        size = 0
        # small bodies stay in memory: a temporary file per page cost more than the hashing
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=CHUNK, prefix="body-", dir=self.tmp_dir)  # noqa: SIM115 - closed by Exchange.discard
        try:
            for chunk in raw.stream(CHUNK, decode_content=False):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"{url}: body is over the limit of {limit} bytes", retryable=False)
                sha256.update(chunk)
                sha512.update(chunk)
                block.update(chunk)
                spool.write(chunk)
        except FetchError:
            spool.close()
            raise
        except OSError as exc:
            spool.close()
            if exc.errno in DISK_FULL:  # our disk, not the connection: the caller stops capturing
                raise
            raise FetchError(f"{url}: connection broken after {size} bytes: {_one_line(exc)}", retryable=True) from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException) as exc:
            spool.close()
            raise FetchError(f"{url}: connection broken after {size} bytes: {_one_line(exc)}", retryable=True) from None
        return Exchange(
            url=url,
            method=request.method or "GET",
            request_target=request.path_url,
            request_headers=request_headers,
            status=response.status_code,
            status_line=status_line,
            headers=headers,
            head=head,
            body=spool,
            size=size,
            sha256=sha256.hexdigest(),
            sha512=sha512.hexdigest(),
            block_sha256=block.hexdigest(),
            peer=peer,
            started=started,
            redacted=redacted,
            content_type=response.headers.get("Content-Type", ""),
        )

    def exchange_with_retries(self, url: str, result: _Result, max_bytes: int | None = None) -> Exchange:
        """Retries connection errors, 408, 429 (honouring Retry-After) and 5xx with exponential backoff and
        jitter; never other 4xx. Returns the last response even when it is still an error status."""
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            result.attempts += 1
            last = attempt == attempts - 1
            try:
                exchange = self.exchange(url, max_bytes)
            except FetchError as exc:
                if not exc.retryable or last:
                    raise
                result.notes.append(f"attempt {attempt + 1}: {exc}")
                time.sleep(self._backoff(attempt))
                continue
            if exchange.status not in RETRY_STATUSES or last:
                return exchange
            result.notes.append(f"attempt {attempt + 1}: {url}: HTTP {exchange.status}")
            delay = self._retry_after(exchange.header("Retry-After"))
            exchange.discard()
            time.sleep(delay if delay is not None else self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        base = min(self.settings.backoff_max, self.settings.backoff_base * (2**attempt))
        return base * random.uniform(0.5, 1.5)

    def _retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = (when - datetime.now(UTC)).total_seconds()
        return max(0.0, min(seconds, self.settings.max_retry_after))

    # -- into the WARC ----------------------------------------------------------------------------------

    def record(self, warc: WarcFile, warc_name: str, exchange: Exchange) -> list[WarcRecord]:
        """Write one exchange as a request and a response record; the spooled body is then removed."""
        try:
            request = warc.write_request(
                exchange.url,
                method=exchange.method,
                request_target=exchange.request_target,
                headers=exchange.request_headers,
                date=exchange.started,
            )
            level = 1 if _already_compressed(exchange) else self.settings.warc_compresslevel
            exchange.body.seek(0)
            response = warc.write_response(
                exchange.url,
                status_line=exchange.status_line,
                headers=exchange.headers,
                http_head=exchange.head,
                body=exchange.body,
                body_length=exchange.size,
                payload_sha256=exchange.sha256,
                block_sha256=exchange.block_sha256,
                date=exchange.started,
                ip_address=exchange.peer,
                concurrent_to=request.record_id,
                compresslevel=level,
            )
            note = None
            if exchange.redacted:  # say what the request record leaves out, so no reader mistakes it for sent
                note = warc.write_metadata(
                    exchange.url,
                    fields=[
                        ("redacted-request-headers", ", ".join(exchange.redacted)),
                        ("description", f"redacted request headers: {', '.join(exchange.redacted)}; sent, not kept"),
                    ],
                    refers_to=request.record_id,
                    date=exchange.started,
                )
        finally:
            exchange.discard()
        return [
            as_warc_record(warc_name, request),
            *([as_warc_record(warc_name, note)] if note is not None else []),
            as_warc_record(
                warc_name,
                response,
                http_status=exchange.status,
                payload_sha256=exchange.sha256,
                payload_sha512=exchange.sha512,
                payload_size=exchange.size,
                content_type=exchange.content_type or None,
            ),
        ]

    def follow(
        self, url: str, warc: WarcFile, warc_name: str, result: _Result, max_bytes: int | None = None
    ) -> tuple[Exchange, str, bytes]:
        """Fetch a URL and every redirect hop after it, each hop recorded; returns the final exchange (its
        body already in the WARC), its URL and up to 4 MiB of its body for link discovery."""
        seen: set[str] = set()
        current = url
        for _ in range(self.settings.max_redirects + 1):
            if current in seen:
                raise FetchError(f"{url}: redirect loop at {current}", retryable=False)
            seen.add(current)
            exchange = self.exchange_with_retries(current, result, max_bytes)
            location = exchange.header("Location") if exchange.status in REDIRECT_STATUSES else None
            head = b""
            if location is None and (exchange.is_html or "css" in exchange.content_type.lower()):
                exchange.body.seek(0)
                head = _decoded_head(exchange.body, exchange.header("Content-Encoding"), 4 * CHUNK)
            result.records.extend(self.record(warc, warc_name, exchange))
            if location is None:
                return exchange, current, head
            target = urljoin(current, location.strip())
            if urlsplit(target).scheme not in ("http", "https"):
                raise FetchError(f"{current}: redirect to a non-http(s) URL {target[:200]!r} refused", retryable=False)
            result.notes.append(f"{exchange.status} redirect: {current} -> {target}")
            current = target
        raise FetchError(f"{url}: more than {self.settings.max_redirects} redirects", retryable=False)

    # -- one target -------------------------------------------------------------------------------------

    def capture(self, url: str, *, canonical: str, kind: str, warc: WarcFile, warc_name: str) -> Capture:
        """Capture a page or file, and for HTML pages what a reader needs to see it again."""
        started = datetime.now(UTC)
        result = _Result()
        details: dict[str, Any] = {}
        try:
            final, final_url, head = self.follow(url, warc, warc_name, result)
        except FetchError as exc:
            return Capture(
                url=url,
                canonical=canonical,
                kind=kind,
                fetcher="http",
                outcome="failed",
                started=started.isoformat(),
                ended=datetime.now(UTC).isoformat(),
                warc_records=tuple(result.records),
                tools=tool_versions(),
                error=str(exc),
                retryable=exc.retryable,
                attempts=result.attempts,
                details={"notes": result.notes} if result.notes else {},
            )
        title = None
        if final.is_html and head:
            page = _PageScanner.scan(head, final.content_type)
            title = page.title
            if page.embeds_media:
                details["embeds_media"] = True
            if self.settings.requisites and 200 <= final.status < 300:
                details["requisites"] = self._requisites(final_url, page.resources, warc, warc_name, result)
        ok = 200 <= final.status < 300
        if result.notes:
            details["notes"] = result.notes
        return Capture(
            url=url,
            canonical=canonical,
            kind=kind,
            fetcher="http",
            outcome="ok" if ok else "failed",
            started=started.isoformat(),
            ended=datetime.now(UTC).isoformat(),
            http_status=final.status,
            final_url=final_url,
            title=title,
            warc_records=tuple(result.records),
            tools=tool_versions(),
            error=None if ok else f"{final_url}: HTTP {final.status_line.split(' ', 1)[1]}",
            retryable=final.status in RETRY_STATUSES,
            attempts=result.attempts,
            details=details,
        )

    def _requisites(
        self, page_url: str, resources: list[str], warc: WarcFile, warc_name: str, result: _Result
    ) -> dict[str, Any]:
        """Images, stylesheets and scripts of a page (and images of its stylesheets), within the limits."""
        budget = self.settings.max_requisites_bytes
        queue = list(dict.fromkeys(urljoin(page_url, r) for r in resources))
        done: set[str] = set()
        captured, failed, skipped = 0, [], 0
        while queue:
            url = queue.pop(0)
            if url in done or urlsplit(url).scheme not in ("http", "https"):
                continue
            done.add(url)
            if captured + len(failed) >= self.settings.max_requisites or budget <= 0:
                skipped += 1
                continue
            sub = _Result()
            try:
                exchange, final_url, head = self.follow(url, warc, warc_name, sub, max_bytes=budget)
            except FetchError as exc:
                failed.append(str(exc))
                result.records.extend(sub.records)
                continue
            result.records.extend(sub.records)
            budget -= exchange.size
            captured += 1
            if "css" in exchange.content_type.lower() and head:
                css = head.decode("utf-8", errors="replace")
                for match in _CSS_URL.finditer(css):
                    found = match.group(2) or match.group(4)
                    if found and not found.startswith("data:"):
                        queue.append(urljoin(final_url, found))
        return {"captured": captured, "failed": failed, "skipped_over_limits": skipped}


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _redact(headers: list[tuple[str, str]], sites: list[Any]) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """Request headers as the WARC keeps them: credentials (any configured site header, and Authorization
    and Cookie whatever set them) replaced by `[redacted]`; returns the names replaced."""
    secret = SECRET_HEADERS | {name.lower() for site in sites for name in site.headers}
    kept, redacted = [], []
    for name, value in headers:
        if name.lower() in secret:
            kept.append((name, "[redacted]"))
            redacted.append(name)
        else:
            kept.append((name, value))
    return kept, tuple(dict.fromkeys(redacted))


INFLATABLE = ("gzip", "x-gzip", "deflate")


def inflate(body: IO[bytes], coding: str, limit: int) -> tuple[bytes, str | None]:
    """Up to `limit` bytes of a gzip or deflate body, inflated no further (a bomb costs nothing), and why it
    stopped short when the body is damaged (None otherwise)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in coding else zlib.MAX_WBITS)
    out = bytearray()
    try:
        while len(out) < limit and (chunk := body.read(64 * 1024)):
            out += inflater.decompress(chunk, limit - len(out))
            while len(out) < limit and inflater.unconsumed_tail:
                out += inflater.decompress(inflater.unconsumed_tail, limit - len(out))
    except zlib.error as exc:
        return bytes(out[:limit]), str(exc)
    return bytes(out[:limit]), None


def _decoded_head(body: IO[bytes], encoding: str | None, limit: int) -> bytes:
    """Up to `limit` bytes of the body as a reader sees it, for link discovery only (the WARC keeps the bytes
    as sent)."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body.read(limit)
    if coding not in INFLATABLE:
        return b""  # br, zstd, ...: not read for links
    return inflate(body, coding, limit)[0]  # damaged: what inflated so far is still worth scanning


def _already_compressed(exchange: Exchange) -> bool:
    encoding = (exchange.header("Content-Encoding") or "").lower()
    if encoding and encoding != "identity":
        return True
    return bool(_COMPRESSED_TYPES.match(exchange.content_type.strip()))


def _one_line(exc: BaseException) -> str:
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = " ".join(first.split())
    return text[:500] or type(exc).__name__


class _PageScanner(HTMLParser):
    """The title of a page and the resources a reader needs to see it again."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.resources: list[str] = []
        self.embeds_media = False  # a <video>/<audio> or og:video: worth handing to yt-dlp
        self._in_title = False
        self._title_parts: list[str] = []
        self._in_style = False

    @classmethod
    def scan(cls, head: bytes, content_type: str) -> _PageScanner:
        charset = re.search(r"charset=([\w-]+)", content_type, re.I)
        try:
            text = head.decode(charset.group(1) if charset else "utf-8", errors="replace")
        except LookupError:
            text = head.decode("utf-8", errors="replace")
        scanner = cls()
        try:
            scanner.feed(text)
            scanner.close()
        except (AssertionError, ValueError):  # pragma: no cover - html.parser is lenient
            pass
        if scanner._title_parts and scanner.title is None:
            scanner.title = " ".join("".join(scanner._title_parts).split())[:500]
        return scanner

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): (v or "").strip() for k, v in attrs}
        if tag == "title" and self.title is None:
            self._in_title = True
        elif tag == "style":
            self._in_style = True
        elif tag == "img" or (tag == "input" and values.get("type", "").lower() == "image"):
            self._add(values.get("src"))
            for candidate in (values.get("srcset") or "").split(","):
                self._add(candidate.strip().split(" ")[0] if candidate.strip() else None)
        elif tag == "link":
            rel = values.get("rel", "").lower().split()
            if {"stylesheet", "icon", "apple-touch-icon"} & set(rel) or (
                "preload" in rel and values.get("as") in ("style", "image", "script", "font")
            ):
                self._add(values.get("href"))
        elif tag == "script":
            self._add(values.get("src"))
        elif tag in ("video", "audio"):
            self.embeds_media = True
            self._add(values.get("poster"))
        elif tag == "meta" and values.get("property", "").lower() in ("og:video", "og:video:url", "og:audio"):
            self.embeds_media = True
        if values.get("style"):
            self._css(values["style"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split())[:500]
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        elif self._in_style:
            self._css(data)

    def _css(self, css: str) -> None:
        for match in _CSS_URL.finditer(css):
            self._add(match.group(2) or match.group(4))

    def _add(self, url: str | None) -> None:
        if url and not url.startswith(("data:", "javascript:", "#")):
            self.resources.append(url)
