"""WarcFile against the real warcio reader, checker and indexer (no mocks)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.cli import main as warcio_main
from warcio.statusandheaders import StatusAndHeaders

from pipeline.capture.warc import (
    CHUNK_SIZE,
    ORIG_TRANSFER_ENCODING,
    RecordRef,
    WarcFile,
    _crc32_combine,
)

SOFTWARE = "preserve-pipeline/0.1.0"
T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


class ReadSizeRecorder(io.RawIOBase):
    """A real readable stream over bytes that remembers how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.sizes: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        return self._inner.read(size)


@dataclass
class Exchange:
    uri: str
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes
    compresslevel: int = 6


def _exchanges() -> list[Exchange]:
    text = b"<!doctype html><title>plain</title><p>evidence</p>\n" * 50
    encoded = gzip.compress(b'{"claim": "gzip-encoded"}\n' * 400, mtime=0)
    big = os.urandom(5 * 1024 * 1024 + 123)
    return [
        Exchange(
            "https://example.org/plain?a=1&b=%20",
            "HTTP/1.1 200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(text)))],
            text,
        ),
        Exchange(
            "https://example.org/data.json",
            "HTTP/1.1 200 OK",
            [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            encoded,
            compresslevel=1,
        ),
        Exchange(
            "https://example.org/chunked",
            "HTTP/1.1 200 OK",
            [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")],
            b"this body arrived in three chunks\n",
        ),
        Exchange("https://example.org/empty", "HTTP/1.1 204 No Content", [("Server", "t")], b""),
        Exchange(
            "https://example.org/video.mp4",
            "HTTP/1.1 200 OK",
            [("Content-Type", "video/mp4"), ("Content-Length", str(len(big)))],
            big,
            compresslevel=1,
        ),
    ]


def _counter_ids() -> Callable[[], str]:
    counter = iter(range(1, 1_000_000))
    return lambda: f"<urn:uuid:{uuid.UUID(int=next(counter))}>"


def _ticking_clock() -> Callable[[], datetime]:
    ticks = iter(range(1_000_000))
    return lambda: T0 + timedelta(microseconds=next(ticks))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One WARC with warcinfo, five request/response pairs, a resource and a metadata record."""
    path = tmp_path_factory.mktemp("warc") / "capture.warc.gz"
    exchanges = _exchanges()
    refs: list[RecordRef] = []
    pairs: list[tuple[RecordRef, RecordRef, Exchange]] = []
    recorders: list[ReadSizeRecorder] = []
    with WarcFile(
        path,
        software=SOFTWARE,
        info={"operator": "tests", "isPartOf": "unit"},
        record_id_factory=_counter_ids(),
        clock=_ticking_clock(),
    ) as warc:
        assert warc.part_path.exists() and not path.exists()
        refs.append(warc.warcinfo)
        for ex in exchanges:
            stream = ReadSizeRecorder(ex.body)
            recorders.append(stream)
            response = warc.write_response(
                ex.uri,
                status_line=ex.status_line,
                headers=ex.headers,
                body=stream,
                body_length=len(ex.body),
                payload_sha256=hashlib.sha256(ex.body).hexdigest(),
                ip_address="192.0.2.7",
                compresslevel=ex.compresslevel,
            )
            request = warc.write_request(
                ex.uri,
                method="GET",
                request_target=ex.uri.split("example.org", 1)[1],
                headers=[("Host", "example.org"), ("Accept-Encoding", "gzip")],
                concurrent_to=response.record_id,
            )
            refs += [response, request]
            pairs.append((response, request, ex))
        resource_body = b"%PDF-1.7 pretend this is a PDF\n" * 100
        resource = warc.write_resource(
            "https://example.org/doc.pdf",
            content_type="application/pdf",
            body=io.BytesIO(resource_body),
            body_length=len(resource_body),
            sha256=hashlib.sha256(resource_body).hexdigest(),
        )
        metadata = warc.write_metadata(
            "https://example.org/plain?a=1&b=%20",
            fields=[("via", "https://t.co/xyz"), ("hop", "t.co"), ("hop", "bit.ly")],
            refers_to=pairs[0][0].record_id,
        )
        refs += [resource, metadata]
    return {
        "path": path,
        "refs": refs,
        "pairs": pairs,
        "recorders": recorders,
        "resource_body": resource_body,
    }


def _run_warcio(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the real `warcio` CLI in-process; `check` always ends in SystemExit(code)."""
    capsys.readouterr()
    try:
        warcio_main(args=list(args))
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().out


def test_final_file_only_after_close(written: dict) -> None:
    path: Path = written["path"]
    assert path.exists()
    assert not path.with_name(path.name + ".part").exists()


def test_warcio_check_passes_with_base16_sha256(written: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_warcio(capsys, "check", "-v", str(written["path"]))
    assert code == 0, out
    # every record was checked (not merely "no digest to check") and passed
    assert out.count("digest pass") == len(written["refs"]), out
    assert "failed" not in out and "no digest" not in out


def test_warcio_index_lists_every_record_at_its_offset(written: dict, capsys: pytest.CaptureFixture[str]) -> None:
    fields = "offset,length,warc-type,warc-record-id,warc-target-uri"
    code, out = _run_warcio(capsys, "index", "-f", fields, str(written["path"]))
    assert code == 0
    index = [json.loads(line) for line in out.splitlines()]
    expected = [
        {
            "offset": str(ref.offset),
            "length": str(ref.length),
            "warc-type": ref.record_type,
            "warc-record-id": ref.record_id,
            **({"warc-target-uri": ref.target_uri} if ref.target_uri else {}),
        }
        for ref in written["refs"]
    ]
    assert index == expected
    assert [r.record_type for r in written["refs"]] == (
        ["warcinfo"] + ["response", "request"] * 5 + ["resource", "metadata"]
    )


def test_each_record_is_its_own_gzip_member(written: dict) -> None:
    data = written["path"].read_bytes()
    refs: list[RecordRef] = written["refs"]
    assert refs[0].offset == 0
    for ref, following in zip(refs, [*refs[1:], None], strict=True):
        assert ref.offset + ref.length == (following.offset if following else len(data))
        member = data[ref.offset : ref.offset + ref.length]
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # checks the gzip CRC-32 and ISIZE
        record = inflater.decompress(member) + inflater.flush()
        assert inflater.eof and inflater.unused_data == b""
        assert record.startswith(b"WARC/1.1\r\n")
        assert record.endswith(b"\r\n\r\n")
        assert f"WARC-Record-ID: {ref.record_id}\r\n".encode() in record
    # and the file as a whole is ordinary multi-member gzip
    assert gzip.decompress(data).count(b"WARC/1.1\r\n") == len(refs)


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip binary")
def test_gnu_gzip_accepts_the_file(written: dict) -> None:
    subprocess.run(["gzip", "-t", str(written["path"])], check=True)


@dataclass
class ReadRecord:
    rec_headers: StatusAndHeaders
    http_headers: StatusAndHeaders | None
    payload: bytes


def _read(path: Path, decode: bool) -> list[ReadRecord]:
    """Records as warcio reads them: payload as stored, or decoded (de-chunked, content-decoded)."""
    with path.open("rb") as fh:
        return [
            ReadRecord(
                record.rec_headers,
                record.http_headers,
                (record.content_stream() if decode else record.raw_stream).read(),
            )
            for record in ArchiveIterator(fh)
        ]


def test_read_back_with_archive_iterator(written: dict) -> None:
    records = [
        (raw.rec_headers, raw.http_headers, raw.payload, decoded.payload)
        for raw, decoded in zip(_read(written["path"], False), _read(written["path"], True), strict=True)
    ]
    refs: list[RecordRef] = written["refs"]
    assert len(records) == len(refs)

    warcinfo_id = refs[0].record_id
    for (rec_headers, _, _, _), ref in zip(records, refs, strict=True):
        assert rec_headers.protocol == "WARC/1.1"
        assert rec_headers["WARC-Record-ID"] == ref.record_id
        assert rec_headers["WARC-Type"] == ref.record_type
        date = rec_headers["WARC-Date"]
        assert date.startswith("2025-03-04T05:06:07.") and date.endswith("Z") and len(date) == 27
        if ref.record_type == "warcinfo":
            assert rec_headers["WARC-Warcinfo-ID"] is None
            assert rec_headers["WARC-Filename"] == "capture.warc.gz"
        else:
            assert rec_headers["WARC-Warcinfo-ID"] == warcinfo_id
            assert rec_headers["WARC-Target-URI"] == ref.target_uri
    assert len({ref.record_id for ref in refs}) == len(refs)

    info_fields = records[0][2].decode()
    assert info_fields.startswith(f"software: {SOFTWARE}\r\nformat: WARC File Format 1.1\r\nconformsTo: ")
    assert "operator: tests\r\n" in info_fields

    by_id = {ref.record_id: rec for ref, rec in zip(refs, records, strict=True)}
    for response, request, ex in written["pairs"]:
        rec_headers, http, payload, decoded = by_id[response.record_id]
        assert payload == ex.body
        assert rec_headers["WARC-Payload-Digest"] == "sha256:" + hashlib.sha256(payload).hexdigest()
        assert rec_headers["WARC-IP-Address"] == "192.0.2.7"
        assert rec_headers["WARC-Target-URI"] == ex.uri
        assert f"{http.protocol} {http.statusline}" == ex.status_line
        assert rec_headers["Content-Length"] == str(len(http.to_bytes(encoding="latin-1")) + len(ex.body))
        if ("Content-Encoding", "gzip") in ex.headers:
            assert decoded == gzip.decompress(ex.body)
        else:
            assert decoded == ex.body
        if ("Transfer-Encoding", "chunked") in ex.headers:
            assert http["Transfer-Encoding"] is None
            assert http[ORIG_TRANSFER_ENCODING] == "chunked"

        req_headers, req_http, _, _ = by_id[request.record_id]
        assert req_headers["WARC-Concurrent-To"] == response.record_id
        assert req_http.protocol == "GET"
        assert req_headers["WARC-Target-URI"] == ex.uri

    resource_headers, _, resource_payload, _ = records[-2]
    assert resource_payload == written["resource_body"]
    assert resource_headers["Content-Type"] == "application/pdf"

    metadata_headers, _, metadata_block, _ = records[-1]
    assert metadata_headers["WARC-Refers-To"] == written["pairs"][0][0].record_id
    assert metadata_headers["Content-Type"] == "application/warc-fields"
    assert metadata_block == b"via: https://t.co/xyz\r\nhop: t.co\r\nhop: bit.ly\r\n"


def test_block_digest_covers_http_headers_and_body(written: dict) -> None:
    with written["path"].open("rb") as fh:
        for record in ArchiveIterator(fh, no_record_parse=True):
            block = record.raw_stream.read()
            assert len(block) == int(record.rec_headers["Content-Length"])
            digest = "sha256:" + hashlib.sha256(block).hexdigest()
            assert record.rec_headers["WARC-Block-Digest"] == digest


def test_body_streamed_in_bounded_chunks(written: dict) -> None:
    for recorder in written["recorders"]:
        assert recorder.sizes, "body was never read"
        assert all(0 < size <= CHUNK_SIZE for size in recorder.sizes)
    assert len(written["recorders"][-1].sizes) > 5  # the 5 MB body really came in several reads


def test_crash_leaves_neither_final_nor_part_file(tmp_path: Path) -> None:
    path = tmp_path / "crash.warc.gz"
    with pytest.raises(RuntimeError, match="network gone"), WarcFile(path, software=SOFTWARE) as warc:
        warc.write_request("https://example.org/", method="GET", request_target="/", headers=[])
        assert warc.part_path.exists() and not path.exists()
        raise RuntimeError("network gone")
    assert list(tmp_path.iterdir()) == []


def test_misstated_payload_digest_is_caught_by_warcio_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lie.warc.gz"
    body = b"the real body\n"
    with WarcFile(path, software=SOFTWARE) as warc:
        warc.write_response(
            "https://example.org/lie",
            status_line="HTTP/1.1 200 OK",
            headers=[("Content-Type", "text/plain")],
            body=io.BytesIO(body),
            body_length=len(body),
            payload_sha256=hashlib.sha256(b"some other body\n").hexdigest(),
        )
    code, out = _run_warcio(capsys, "check", "-v", str(path))
    assert code == 1
    assert "payload digest failed" in out
    assert "block digest failed" not in out  # the writer's own block digest is still right


def test_short_or_long_body_is_rolled_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rollback.warc.gz"
    body = b"0123456789"
    digest = hashlib.sha256(body).hexdigest()
    with WarcFile(path, software=SOFTWARE) as warc:
        for stated in (len(body) + 5, len(body) - 1):
            with pytest.raises(ValueError, match="body"):
                warc.write_response(
                    "https://example.org/x",
                    status_line="HTTP/1.1 200 OK",
                    headers=[],
                    body=io.BytesIO(body),
                    body_length=stated,
                    payload_sha256=digest,
                )
        good = warc.write_response(
            "https://example.org/x",
            status_line="HTTP/1.1 200 OK",
            headers=[],
            body=io.BytesIO(body),
            body_length=len(body),
            payload_sha256=digest,
        )
    assert good.offset == warc.warcinfo.length  # the failed attempts left nothing behind
    code, out = _run_warcio(capsys, "check", "-v", str(path))
    assert code == 0 and out.count("digest pass") == 2, out


def test_rejects_existing_file_and_naive_dates(tmp_path: Path) -> None:
    path = tmp_path / "a.warc.gz"
    path.write_bytes(b"finished evidence")
    with pytest.raises(FileExistsError):
        WarcFile(path, software=SOFTWARE)
    assert path.read_bytes() == b"finished evidence"

    other = tmp_path / "b.warc.gz"
    with WarcFile(other, software=SOFTWARE) as warc, pytest.raises(ValueError, match="timezone"):
        warc.write_metadata("urn:x", fields={"a": "b"}, date=datetime(2025, 1, 1))


def test_crc32_combine_matches_zlib() -> None:
    for length in (0, 1, 3, 64, 1000, 70_000):
        head, tail = os.urandom(100), os.urandom(length)
        assert _crc32_combine(zlib.crc32(head), zlib.crc32(tail), length) == zlib.crc32(head + tail)


def test_known_block_digest_writes_in_order_and_digests_the_file(tmp_path: Path) -> None:
    """With the block digest computed while downloading, the file's own digests come free of a re-read."""
    from pipeline.capture.warc import http_head_bytes

    body = b"<html>evidence</html>" * 1000
    status, headers = "HTTP/1.1 200 OK", [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked")]
    head = http_head_bytes(status, headers)
    path = tmp_path / "ordered.warc.gz"
    with WarcFile(path, software="test/1") as warc:
        warc.write_response(
            "http://example.org/",
            status_line=status,
            headers=headers,
            body=io.BytesIO(body),
            body_length=len(body),
            payload_sha256=hashlib.sha256(body).hexdigest(),
            block_sha256=hashlib.sha256(head + body).hexdigest(),
        )
        with pytest.raises(ValueError, match="block digest"):
            warc.write_response(
                "http://example.org/wrong",
                status_line=status,
                headers=headers,
                body=io.BytesIO(body),
                body_length=len(body),
                payload_sha256=hashlib.sha256(body).hexdigest(),
                block_sha256=hashlib.sha256(b"not the block").hexdigest(),
            )
    assert warc.sha256 is None  # the rolled-back record voided the running digest: callers read once
    assert subprocess.run([sys.executable, "-m", "warcio.cli", "check", str(path)], check=False).returncode == 0
    path.unlink()
    with WarcFile(path, software="test/1") as warc:
        warc.write_response(
            "http://example.org/",
            status_line=status,
            headers=headers,
            body=io.BytesIO(body),
            body_length=len(body),
            payload_sha256=hashlib.sha256(body).hexdigest(),
            block_sha256=hashlib.sha256(head + body).hexdigest(),
        )
    data = path.read_bytes()
    assert warc.sha256 == hashlib.sha256(data).hexdigest()
    assert warc.sha512 == hashlib.sha512(data).hexdigest()
    assert warc.size == len(data)
    check = subprocess.run([sys.executable, "-m", "warcio.cli", "check", str(path)], capture_output=True)
    assert check.returncode == 0, check.stdout
    with path.open("rb") as handle:
        payloads = [r.content_stream().read() for r in ArchiveIterator(handle) if r.rec_type == "response"]
    assert payloads == [body]


def test_digest_patched_in_memory_keeps_the_file_digests(tmp_path: Path) -> None:
    """Without a block digest the record is patched in place; while it is still in memory, the running
    digests of the file stay valid, so nothing is read back."""
    body = b"<html>no digest given</html>" * 50
    path = tmp_path / "patched.warc.gz"
    with WarcFile(path, software="test/1") as warc:
        warc.write_response(
            "http://example.org/",
            status_line="HTTP/1.1 200 OK",
            headers=[("Content-Type", "text/html")],
            body=io.BytesIO(body),
            body_length=len(body),
            payload_sha256=hashlib.sha256(body).hexdigest(),
        )
    data = path.read_bytes()
    assert warc.sha256 == hashlib.sha256(data).hexdigest()
    assert warc.sha512 == hashlib.sha512(data).hexdigest()
    check = subprocess.run([sys.executable, "-m", "warcio.cli", "check", str(path)], capture_output=True)
    assert check.returncode == 0, check.stdout
