"""WARC 1.1 writer: one gzip member per record, SHA-256 Base16 digests, bodies streamed in one pass.

HTTP header blocks are serialised with warcio's `StatusAndHeaders`, and WARC header blocks are joined to
the same bytes directly, so they match what warcio's own reader parses. The gzip members are framed here
rather than by `warcio.warcwriter.WARCWriter`
because that writer (1.7.x-1.8.x) always compresses at level 9 and gets block digests either from the
caller or by reading the record's stream a second time, while we need a per-record level and a single
pass over bodies of up to a few GiB.

Single pass, yet the block digest sits in the header *before* the block: each member is laid out as

    gzip header | deflate(header up to 'WARC-Block-Digest: sha256:') | stored block(64 hex digits)
                | deflate(rest of header, HTTP header block, body, CRLF CRLF) | CRC-32 | ISIZE

The 64 hex digits are written as zeros, then overwritten in place once the body has been streamed; a
stored (uncompressed) deflate block keeps their position and size fixed. The CRC-32 of the member is
assembled from the CRC of the patched prefix and the CRC of the streamed part (`_crc32_combine`).
Every member is an ordinary gzip member, so the file is a standard concatenated-gzip `.warc.gz`.

Small files cost per record and per file, not per byte, so: a record whose block digest is known and whose
body is up to 1 MiB is built in memory and deflated in one call, with a deflate window no larger than the
record (zlib's full-size state took longer to set up than a small record took to compress); appended bytes
collect in memory and reach the file (and the file's running digests) in one write per MiB, so a page's
whole WARC is one write; a digest patched while its record is still in memory keeps those digests valid.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from warcio.statusandheaders import StatusAndHeaders, StatusAndHeadersParser

from pipeline.faults import disk_full
from pipeline.records import WarcRecord

WARC_VERSION = "WARC/1.1"
WARC_FORMAT = "WARC File Format 1.1"
WARC_CONFORMS_TO = "http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/"
CHUNK_SIZE = 1 << 20
PENDING_LIMIT = 1 << 20  # appended bytes held in memory before they are written to the file
SMALL_RECORD = 1 << 20  # records with a body up to this size are deflated in one call
ORIG_TRANSFER_ENCODING = "X-Archive-Orig-Transfer-Encoding"

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RECORD_ID_RE = re.compile(r"<[^<>\s]+>")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_STATUS_LINE_RE = re.compile(r"(HTTP/\d(?:\.\d)?) (\d{3}(?: [^\r\n]*)?)")
_NO_CONTROLS_RE = re.compile(r"[^\x00-\x20\x7f]+")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")

_PLACEHOLDER = b"0" * 64
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CRLF2 = b"\r\n\r\n"  # ends the WARC header block, and follows every record block


@dataclass(frozen=True)
class RecordRef:
    """Where a record landed: enough to cite it (CDX-style offset/length) or to re-read it."""

    record_id: str
    record_type: str
    target_uri: str
    offset: int
    length: int


class WarcFile:
    """One gzip WARC 1.1 file, written to `<path>.part` and renamed to `path` only by `close()`.

    The first record is a `warcinfo`; every later record carries its id in `WARC-Warcinfo-ID`. Use as a
    context manager: a clean exit closes (fsync + rename), an exception aborts (the `.part` is removed),
    so no crash ever leaves a half-written file under a finished WARC's name. Not thread-safe.
    """

    def __init__(
        self,
        path: Path,
        *,
        software: str,
        info: dict[str, str] | None = None,
        record_id_factory: Callable[[], str] | None = None,
        clock: Callable[[], datetime] | None = None,
        sync_dir: bool = True,
        lazy: bool = False,
    ) -> None:
        """Create `<path>.part` and write the warcinfo record.

        `software` names the producer and its version (e.g. ``preserve-pipeline/0.1.0``); `info` adds or
        overrides warcinfo fields (`format` and `conformsTo` default to WARC 1.1). `sync_dir=False` leaves
        the fsync of the directory (which makes the rename durable) to a caller that batches it. `lazy=True`
        creates `<path>.part` only once more than `PENDING_LIMIT` bytes are written: until then the records
        live in memory and `take_segment` can hand them to a shared file instead. Refuses to start if
        `path` or `<path>.part` exists: the first is finished evidence, the second another (or a crashed)
        writer's.
        """
        if not software.strip():
            raise ValueError("software must name the producing software and its version")
        self.path = Path(path)
        self.part_path = self.path.with_name(self.path.name + ".part")
        if not lazy and self.path.exists():  # a lazy file may never be created: `close` checks before renaming
            raise FileExistsError(f"refusing to overwrite finished WARC {self.path}")
        self._new_id = record_id_factory or StatusAndHeadersParser.make_warc_id
        self._clock = clock or _utc_now
        self._warcinfo_id: str | None = None
        self._state = "open"
        self._sync_dir = sync_dir
        # Digests of the finished file, computed while writing; None if a record had to be patched in place.
        self.sha256: str | None = None
        self.sha512: str | None = None
        self.size = 0
        # Kept open across calls (records are appended one by one); closed by close()/abort().
        # unbuffered: _HashingFile buffers appends itself (and an unbuffered open skips the isatty and seek calls)
        part_path = self.part_path
        self._fh = _HashingFile(lambda: open(part_path, "xb", buffering=0))  # noqa: SIM115
        try:
            if not lazy:
                self._fh.open()
            fields = {"software": software, "format": WARC_FORMAT, "conformsTo": WARC_CONFORMS_TO}
            fields.update(info or {})
            self._info_body = warc_fields(fields)
            self._info_id = self._new_id()
            self._info_date = self._clock()
            member = self._warcinfo_member(self.path.name)
            self._fh.write(member)
            self.warcinfo = RecordRef(self._info_id, "warcinfo", "", 0, len(member))
        except BaseException:
            self.abort()
            raise
        self._warcinfo_id = self.warcinfo.record_id

    # -- public record writers -------------------------------------------------------------------------

    def write_request(
        self,
        uri: str,
        *,
        method: str,
        request_target: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        date: datetime | None = None,
        concurrent_to: str | None = None,
        http_version: str = "HTTP/1.1",
    ) -> RecordRef:
        """Write a `request` record: request line + headers as sent, and the (small, in-memory) body."""
        if not _TOKEN_RE.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not _NO_CONTROLS_RE.fullmatch(request_target):
            raise ValueError(f"invalid request target {request_target!r}")
        if not re.fullmatch(r"HTTP/\d(?:\.\d)?", http_version):
            raise ValueError(f"invalid HTTP version {http_version!r}")
        head = StatusAndHeaders(f"{request_target} {http_version}", stored_http_headers(headers), protocol=method)
        warc = self._start_headers("request", uri, date)
        _add_link(warc, "WARC-Concurrent-To", concurrent_to)
        warc.append(("Content-Type", "application/http; msgtype=request"))
        payload = _EMPTY_SHA256 if not body else hashlib.sha256(body).hexdigest()
        warc.append(("WARC-Payload-Digest", "sha256:" + payload))
        http_head = _encode_http_head(head)
        block = hashlib.sha256(http_head + body).hexdigest()
        return self._write_record(warc, http_head, io.BytesIO(body), len(body), 6, block)

    def write_response(
        self,
        uri: str,
        *,
        status_line: str,
        headers: list[tuple[str, str]],
        body: BinaryIO,
        body_length: int,
        payload_sha256: str,
        date: datetime | None = None,
        ip_address: str | None = None,
        concurrent_to: str | None = None,
        compresslevel: int = 6,
        block_sha256: str | None = None,
        http_head: bytes | None = None,
    ) -> RecordRef:
        """Write a `response` record, streaming `body` (de-chunked, content-encoding kept) once.

        `payload_sha256` is trusted as computed by the caller while downloading (it is not recomputed, so
        the body is read only once). `block_sha256`, when the caller computed it over
        `http_head_bytes(...)` + body while downloading, lets the record be written strictly in order
        (it is still checked as the body streams); without it the digest is patched in afterwards.
        `compresslevel` is per record: pass 1 for media that are already compressed. `http_head`, when the
        caller already has `http_head_bytes(status_line, headers)` (it hashed it), saves encoding it twice.
        """
        if http_head is None:
            http_head = http_head_bytes(status_line, headers)
        warc = self._start_headers("response", uri, date)
        if ip_address is not None:
            warc.append(("WARC-IP-Address", str(ipaddress.ip_address(ip_address))))
        _add_link(warc, "WARC-Concurrent-To", concurrent_to)
        warc.append(("Content-Type", "application/http; msgtype=response"))
        warc.append(("WARC-Payload-Digest", "sha256:" + _check_sha256(payload_sha256)))
        return self._write_record(warc, http_head, body, body_length, compresslevel, block_sha256)

    def write_resource(
        self,
        uri: str,
        *,
        content_type: str,
        body: BinaryIO,
        body_length: int,
        sha256: str,
        date: datetime | None = None,
        compresslevel: int = 6,
    ) -> RecordRef:
        """Write a `resource` record (no HTTP envelope, e.g. a yt-dlp download), streaming `body` once."""
        _check_value("Content-Type", content_type)
        warc = self._start_headers("resource", uri, date)
        warc.append(("Content-Type", content_type))
        warc.append(("WARC-Payload-Digest", "sha256:" + _check_sha256(sha256)))
        return self._write_record(warc, b"", body, body_length, compresslevel, sha256)

    def write_metadata(
        self,
        uri: str,
        *,
        fields: dict[str, str] | list[tuple[str, str]],
        refers_to: str | None = None,
        date: datetime | None = None,
    ) -> RecordRef:
        """Write a `metadata` record whose block is `application/warc-fields` (e.g. capture provenance)."""
        extra: list[tuple[str, str]] = []
        _add_link(extra, "WARC-Refers-To", refers_to)
        return self._write_fields_record("metadata", uri, fields, date, extra)

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def in_memory(self) -> bool:
        """Nothing is on disk yet (a lazy file whose records all fit in memory)."""
        return self._state == "open" and not self._fh.opened

    def take_segment(self, file_name: str) -> tuple[bytes, int]:
        """Hand the records over to another file, named `file_name`, instead of writing this one.

        Returns the bytes (the warcinfo record rebuilt to name `file_name`, same id and date, then every
        other record unchanged) and by how much the offsets of records after the warcinfo moved within them.
        Only while `in_memory`; afterwards this file is done and creates nothing."""
        if not self.in_memory:
            raise ValueError(f"WARC file {self.path} is not held in memory")
        data = self._fh.take()
        self._state = "detached"
        member = self._warcinfo_member(file_name)
        return member + data[self.warcinfo.length :], len(member) - self.warcinfo.length

    def close(self) -> Path:
        """Make the file durable, then give it its final name: fsync file, rename, fsync directory."""
        if self._state == "closed":
            return self.path
        self._ensure_open()
        try:
            # a small file's bytes reach the disk only here, so this is where a full disk shows
            disk_full("warc-close")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            self.abort()
            raise
        self._fh.close()
        self.size = self._fh.size
        if self._fh.sequential:
            self.sha256, self.sha512 = self._fh.sha256.hexdigest(), self._fh.sha512.hexdigest()
        if self.path.exists():
            self._state = "failed"
            raise FileExistsError(f"{self.path} appeared while writing; {self.part_path} kept")
        os.replace(self.part_path, self.path)
        if self._sync_dir:
            fsync_dir(self.path.parent)
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file. A no-op once closed: a finished WARC is never deleted here."""
        if self._state not in ("open", "failed"):
            return
        self._state = "aborted"
        created = self._fh.opened  # a `.part` this writer did not create is another writer's: left alone
        try:
            self._fh.close()
        finally:
            if created:
                self.part_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------------------------------------

    def _warcinfo_member(self, file_name: str) -> bytes:
        """The warcinfo record naming `file_name`; rebuilt with the same id and date when the records move."""
        if not _RECORD_ID_RE.fullmatch(self._info_id):
            raise ValueError(f"record_id_factory returned {self._info_id!r}, expected '<urn:...>'")
        body = self._info_body
        headers = [
            ("WARC-Type", "warcinfo"),
            ("WARC-Record-ID", self._info_id),
            ("WARC-Date", warc_date(self._info_date)),
            ("WARC-Filename", file_name),
            ("Content-Type", "application/warc-fields"),
        ]
        _check_values(headers)
        headers += [
            ("Content-Length", str(len(body))),
            ("WARC-Block-Digest", "sha256:" + hashlib.sha256(body).hexdigest()),
        ]
        # stored, not deflated: a few hundred bytes, built once per target and again when its records join a
        # group file, where setting up deflate took longer than the rest of the record (BENCHMARKS.md)
        return _small_member(_warc_head_bytes(headers), body, 0)

    def _ensure_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"WARC file {self.path} is {self._state}")

    def _start_headers(self, record_type: str, uri: str, date: datetime | None) -> list[tuple[str, str]]:
        """WARC headers common to all records, in a stable order."""
        record_id = self._new_id()
        if not _RECORD_ID_RE.fullmatch(record_id):
            raise ValueError(f"record_id_factory returned {record_id!r}, expected '<urn:...>'")
        headers = [
            ("WARC-Type", record_type),
            ("WARC-Record-ID", record_id),
            ("WARC-Date", warc_date(date if date is not None else self._clock())),
        ]
        if uri:
            if not _NO_CONTROLS_RE.fullmatch(uri):
                raise ValueError(f"target URI must not contain whitespace or controls: {uri!r}")
            headers.append(("WARC-Target-URI", uri))
        if self._warcinfo_id is not None:
            headers.append(("WARC-Warcinfo-ID", self._warcinfo_id))
        return headers

    def _write_fields_record(
        self,
        record_type: str,
        uri: str,
        fields: dict[str, str] | list[tuple[str, str]],
        date: datetime | None,
        extra: list[tuple[str, str]],
    ) -> RecordRef:
        body = warc_fields(fields)
        warc = self._start_headers(record_type, uri, date)
        warc.extend(extra)
        warc.append(("Content-Type", "application/warc-fields"))
        return self._write_record(warc, b"", io.BytesIO(body), len(body), 6, hashlib.sha256(body).hexdigest())

    def _write_record(
        self,
        warc_headers: list[tuple[str, str]],
        http_head: bytes,
        body: BinaryIO,
        body_length: int,
        compresslevel: int,
        block_sha256: str | None = None,
    ) -> RecordRef:
        """Append one record as one gzip member (layout in the module docstring).

        On any failure (short body, I/O error) the file is truncated back to where the record began, so
        the WARC stays valid and further records can still be written.
        """
        self._ensure_open()
        if not 0 <= compresslevel <= 9:
            raise ValueError(f"compresslevel must be 0..9, not {compresslevel}")
        if body_length < 0:
            raise ValueError(f"body_length must be >= 0, not {body_length}")
        _check_values(warc_headers)
        if block_sha256 is not None:
            return self._write_in_order(warc_headers, http_head, body, body_length, compresslevel, block_sha256)
        headers = [
            *warc_headers,
            ("Content-Length", str(len(http_head) + body_length)),
            ("WARC-Block-Digest", "sha256:" + _PLACEHOLDER.decode()),
        ]
        raw = _warc_head_bytes(headers)
        cut = len(raw) - len(_CRLF2) - len(_PLACEHOLDER)
        assert raw[cut:] == _PLACEHOLDER + _CRLF2
        prefix, suffix = raw[:cut], raw[cut + len(_PLACEHOLDER) :]

        fh = self._fh
        start = fh.tell()
        try:
            fh.write(_gzip_header(compresslevel))
            first = _compressor(compresslevel, len(prefix))
            fh.write(first.compress(prefix) + first.flush(zlib.Z_SYNC_FLUSH))
            digest_at = fh.tell() + 5  # after the stored block's 5-byte header
            fh.write(_stored_block(_PLACEHOLDER))

            tail = _DeflateTail(fh, compresslevel, len(suffix) + len(http_head) + body_length + len(_CRLF2))
            block = hashlib.sha256(http_head)
            tail.write(suffix)
            tail.write(http_head)
            for chunk in _read_exactly(body, body_length):
                block.update(chunk)
                tail.write(chunk)
            tail.write(_CRLF2)
            tail.finish()

            digest = block.hexdigest().encode("ascii")
            crc = _crc32_combine(zlib.crc32(digest, zlib.crc32(prefix)), tail.crc, tail.size)
            fh.write(struct.pack("<II", crc, (len(prefix) + len(digest) + tail.size) & 0xFFFFFFFF))
            end = fh.tell()
            fh.seek(digest_at)
            fh.write(digest)
            fh.seek(end)
        except BaseException:
            self._roll_back(start)
            raise
        return _ref(warc_headers, start, end)

    def _write_in_order(
        self,
        warc_headers: list[tuple[str, str]],
        http_head: bytes,
        body: BinaryIO,
        body_length: int,
        compresslevel: int,
        block_sha256: str,
    ) -> RecordRef:
        """Append one record whose block digest is known up front: one deflate stream, no seeking back, so
        the file's own digests can be computed as it is written. The digest is checked as the body streams."""
        expected = _check_sha256(block_sha256)
        headers = [
            *warc_headers,
            ("Content-Length", str(len(http_head) + body_length)),
            ("WARC-Block-Digest", "sha256:" + expected),
        ]
        raw = _warc_head_bytes(headers)
        fh = self._fh
        start = fh.tell()
        try:
            if body_length <= SMALL_RECORD:
                # a small record is built in memory and deflated in one call: one write, no per-chunk work
                block = http_head + b"".join(_read_exactly(body, body_length))
                actual = hashlib.sha256(block).hexdigest()
                if actual != expected:
                    raise ValueError(f"block digest given as {expected} but the block hashes to {actual}")
                fh.write(_small_member(raw, block, compresslevel))
                return _ref(warc_headers, start, fh.tell())
            fh.write(_gzip_header(compresslevel))
            tail = _DeflateTail(fh, compresslevel)
            tail.write(raw)
            tail.write(http_head)
            digest = hashlib.sha256(http_head)
            for chunk in _read_exactly(body, body_length):
                digest.update(chunk)
                tail.write(chunk)
            tail.write(_CRLF2)
            tail.finish()
            if digest.hexdigest() != expected:
                raise ValueError(f"block digest given as {expected} but the block hashes to {digest.hexdigest()}")
            fh.write(struct.pack("<II", tail.crc, tail.size & 0xFFFFFFFF))
            end = fh.tell()
        except BaseException:
            self._roll_back(start)
            raise
        return _ref(warc_headers, start, end)

    def _roll_back(self, start: int) -> None:
        try:
            self._fh.seek(start)
            self._fh.truncate()
        except OSError:
            self._state = "failed"  # the file can no longer be made valid: only abort() is left


# -- helpers, public because callers and tests may want the same normalisation ----------------------------


def stored_http_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """HTTP headers as they are stored: unchanged, except a `chunked` transfer coding.

    The body is stored de-chunked, so a `Transfer-Encoding: chunked` header would make readers (warcio,
    pywb, ...) try to de-chunk it again and corrupt or reject the payload. The original header is kept,
    renamed to `X-Archive-Orig-Transfer-Encoding`; any other transfer codings (rare) stay in effect under
    `Transfer-Encoding`.
    """
    stored: list[tuple[str, str]] = []
    headers = list(headers)
    _check_values(headers)
    for name, value in headers:
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
        if name.lower() == "transfer-encoding":
            codings = [c.strip() for c in value.split(",") if c.strip()]
            others = [c for c in codings if c.lower() != "chunked"]
            if len(others) != len(codings):
                stored.append((ORIG_TRANSFER_ENCODING, value))
                if others:
                    stored.append((name, ", ".join(others)))
                continue
        stored.append((name, value))
    return stored


def http_head_bytes(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    """The HTTP header block exactly as `write_response` stores it, so callers can compute the block digest
    (`sha256(head + body)`) while the body downloads."""
    match = _STATUS_LINE_RE.fullmatch(status_line)
    if not match:
        raise ValueError(f"invalid HTTP status line {status_line!r}")
    head = StatusAndHeaders(match.group(2), stored_http_headers(headers), protocol=match.group(1))
    return _encode_http_head(head)


class _HashingFile:
    """The WARC file handle. Appended bytes collect in memory (up to `PENDING_LIMIT`) and reach the file in
    one write, hashed as they go out, so a small WARC costs one write and one digest update. A write
    anywhere else that is still in memory (a patched digest) is made there; one already written to the file
    (or a rolled-back record) makes the running digests unusable, and `sequential` says so."""

    def __init__(self, opener: Callable[[], BinaryIO]) -> None:
        self._opener = opener
        self._raw: BinaryIO | None = None
        self.sha256 = hashlib.sha256()
        self.sha512 = hashlib.sha512()
        self.size = 0
        self.sequential = True
        self._pending = bytearray()  # the bytes from `_flushed` to `size`, not yet in the file
        self._flushed = 0
        self._pos = 0

    def write(self, data: bytes) -> int:
        length = len(data)
        pos = self._pos
        if pos == self.size:  # appending: the usual case
            self._pending += data
            self.size += length
            if len(self._pending) >= PENDING_LIMIT:
                self._drain()
        elif pos >= self._flushed and pos + length <= self.size:  # patching bytes still in memory
            start = pos - self._flushed
            self._pending[start : start + length] = data
        else:
            self._drain()
            self.sequential = False
            self._file().seek(pos)
            self._write_all(data)
            self.size = max(self.size, pos + length)
            self._flushed = self.size
            self._file().seek(self._flushed)
        self._pos = pos + length
        return length

    def _drain(self) -> None:
        """Write what is pending at the end of the file, hashing it first while the file is still in order."""
        if not self._pending:
            return
        pending = self._pending
        if self.sequential:
            self.sha256.update(pending)
            self.sha512.update(pending)
        self._write_all(pending)
        self._flushed += len(pending)
        self._pending = bytearray()

    def _write_all(self, data: bytes | bytearray) -> None:
        """An unbuffered write may be short: repeat until every byte is in the file."""
        view = memoryview(data)
        raw = self._file()
        while view:
            written = raw.write(view)
            if not written:
                raise OSError(f"could not write to {getattr(raw, 'name', 'the WARC file')}")
            view = view[written:]

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int) -> int:
        self._pos = offset
        return offset

    def truncate(self) -> int:
        """Cut the file at the current position (a rolled-back record)."""
        self.sequential = False
        if self._pos >= self._flushed:
            del self._pending[self._pos - self._flushed :]
        else:
            self._drain()
            self._file().seek(self._pos)
            self._file().truncate()
            self._flushed = self._pos
        self.size = self._pos
        return self._pos

    def flush(self) -> None:
        self._drain()
        self._file().flush()

    def fileno(self) -> int:
        return self._file().fileno()

    def close(self) -> None:
        self._pending = bytearray()  # close() after flush() writes nothing more; abort() drops what is left
        if self._raw is not None:
            self._raw.close()

    @property
    def opened(self) -> bool:
        return self._raw is not None

    def open(self) -> None:
        self._file()

    def take(self) -> bytes:
        """Everything written, when none of it reached a file; nothing more can be written."""
        assert self._raw is None and self._flushed == 0
        data, self._pending = bytes(self._pending), bytearray()
        return data

    def _file(self) -> BinaryIO:
        if self._raw is None:
            self._raw = self._opener()
        return self._raw


def warc_fields(fields: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Serialise `application/warc-fields` (UTF-8 `name: value` lines), as used by warcinfo/metadata."""
    items = fields.items() if isinstance(fields, dict) else fields
    lines = []
    for name, value in items:
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid warc-fields name {name!r}")
        _check_value(name, str(value))
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


def warc_date(when: datetime) -> str:
    """`WARC-Date` value: UTC with microseconds (WARC 1.1 allows fractional seconds)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("WARC dates need a timezone-aware datetime (naive ones are ambiguous)")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- private helpers --------------------------------------------------------------------------------------


def as_warc_record(file: str, ref: RecordRef, **payload: Any) -> WarcRecord:
    """The record as captures cite it: file name, id, type, URI, offset and length, plus payload facts."""
    return WarcRecord(file, ref.record_id, ref.record_type, ref.target_uri, ref.offset, ref.length, **payload)


def _ref(warc_headers: list[tuple[str, str]], start: int, end: int) -> RecordRef:
    named = dict(warc_headers)
    return RecordRef(
        record_id=named["WARC-Record-ID"],
        record_type=named["WARC-Type"],
        target_uri=named.get("WARC-Target-URI", ""),
        offset=start,
        length=end - start,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_values(headers: list[tuple[str, str]]) -> None:
    """`_check_value` for every header, in one regex pass (a joined string has a CR, LF or NUL only if a
    value has one); the loop runs only to name the culprit."""
    if _BAD_VALUE_RE.search("".join([value for _, value in headers])):
        for name, value in headers:
            _check_value(name, value)


def _check_value(name: str, value: str) -> None:
    """Reject CR/LF/NUL in header values: they would let a value end the header block early."""
    if _BAD_VALUE_RE.search(value):
        raise ValueError(f"header {name!r} has a CR, LF or NUL in its value: {value!r}")


def _check_sha256(hexdigest: str) -> str:
    lowered = hexdigest.lower()
    if not _SHA256_HEX_RE.fullmatch(lowered):
        raise ValueError(f"expected a SHA-256 as 64 hex digits, got {hexdigest!r}")
    return lowered


def _add_link(headers: list[tuple[str, str]], name: str, record_id: str | None) -> None:
    if record_id is None:
        return
    if not _RECORD_ID_RE.fullmatch(record_id):
        raise ValueError(f"{name} must be a record id like '<urn:uuid:...>', not {record_id!r}")
    headers.append((name, record_id))


def _warc_head_bytes(headers: list[tuple[str, str]]) -> bytes:
    """The WARC header block, as `StatusAndHeaders("", headers, protocol="WARC/1.1").to_bytes()` gives it
    (UTF-8), joined directly: values were checked for CR, LF and NUL by the caller."""
    lines = [f"{name}: {value}\r\n" for name, value in headers]
    return (f"{WARC_VERSION}\r\n" + "".join(lines) + "\r\n").encode("utf-8")


def _encode_http_head(head: StatusAndHeaders) -> bytes:
    """HTTP header block bytes: Latin-1 gives back the wire bytes (http.client decodes headers as
    Latin-1); anything beyond it falls back to warcio's RFC 8187 percent-encoding."""
    try:
        return head.to_bytes(encoding="latin-1")
    except UnicodeEncodeError:
        return head.to_ascii_bytes()


def _read_exactly(body: BinaryIO, length: int) -> Iterable[bytes]:
    """Yield `length` bytes of `body` in chunks of at most CHUNK_SIZE; fail if it is shorter or longer,
    because the WARC Content-Length was already written from `length`."""
    remaining = length
    while remaining > 0:
        chunk = body.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            raise ValueError(f"body ended {remaining} bytes before body_length={length}")
        if len(chunk) > remaining:
            raise ValueError(f"body stream returned more than the {remaining} bytes asked for")
        remaining -= len(chunk)
        yield chunk
    if body.read(1):
        raise ValueError(f"body is longer than body_length={length}")


def _small_member(warc_head: bytes, block: bytes, level: int) -> bytes:
    """A whole record as one gzip member, deflated in one call."""
    data = warc_head + block + _CRLF2
    size = len(data)
    trailer = struct.pack("<II", zlib.crc32(data), size & 0xFFFFFFFF)
    if level == 0 and size <= 0xFFFF:  # one final stored block: no deflate state to set up at all
        return _gzip_header(0) + struct.pack("<BHH", 1, size, size ^ 0xFFFF) + data + trailer
    compressor = _compressor(level, size)
    return _gzip_header(level) + compressor.compress(data) + compressor.flush(zlib.Z_FINISH) + trailer


def _gzip_header(level: int) -> bytes:
    """RFC 1952 member header: deflate, no name, mtime 0 (reproducible), OS unknown."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255))


def _stored_block(data: bytes) -> bytes:
    """A non-final stored deflate block (RFC 1951 3.2.4): its bytes sit verbatim in the file."""
    assert len(data) <= 0xFFFF
    return struct.pack("<BHH", 0, len(data), len(data) ^ 0xFFFF) + data


def _compressor(level: int, size: int | None = None) -> Any:
    """A raw deflate compressor for `size` bytes of input (None: unknown). Below 16 KiB the window covers the
    input and the hash table is halved: any inflater reads the stream, it comes out within 0.05 % of the
    full-size state's bytes on the whole (3 % at worst, on a few hundred bytes), and setting it up costs a
    fraction: zlib's full-size state (about 256 KiB) took longer to set up than a small record took to
    deflate."""
    if size is None or size >= 1 << 14:
        return zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return zlib.compressobj(level, zlib.DEFLATED, -max(9, size.bit_length()), 7)


class _DeflateTail:
    """Raw deflate stream written straight to the file, tracking CRC-32 and length of its input."""

    def __init__(self, out: BinaryIO, level: int, size: int | None = None) -> None:
        self._out = out
        self._compressor = _compressor(level, size)
        self.crc = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self._out.write(self._compressor.compress(data))

    def finish(self) -> None:
        self._out.write(self._compressor.flush(zlib.Z_FINISH))


_CRC32_POLY = 0xEDB88320  # CRC-32 (gzip) polynomial, bit-reflected: bit 31 is x^0, bit 0 is x^31


def _gf2_mulmod(a: int, b: int) -> int:
    """Product of two polynomials modulo the CRC-32 polynomial, in the bit-reflected representation."""
    product = 0
    mask = 1 << 31
    while mask:
        if a & mask:
            product ^= b
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1  # b *= x
        mask >>= 1
    return product


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B): crc(A)·x^(8·len B) + crc(B) mod P.

    Python's zlib has no crc32_combine; we need it because the digest (in A) is known only after B
    was streamed. Square-and-multiply makes this O(log len B).
    """
    power = 1 << 31  # x^0
    square = 1 << 30  # x^1
    exponent = 8 * len2
    while exponent:
        if exponent & 1:
            power = _gf2_mulmod(power, square)
        square = _gf2_mulmod(square, square)
        exponent >>= 1
    return _gf2_mulmod(power, crc1) ^ crc2


def fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry), not only the file's data."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
