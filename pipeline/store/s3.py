"""S3 and S3-compatible object storage through boto3, with checksums end to end.

Credentials come only from boto3's standard chain (environment, shared config, instance roles); nothing
here reads or logs them. Endpoint, region and addressing style come from the config or, for
`s3://bucket/prefix` targets, from boto3's environment (`AWS_ENDPOINT_URL_S3`, `AWS_DEFAULT_REGION`).

Every object carries the file's sha256 from the bag manifest in its metadata (`x-amz-meta-sha256`), its
identity. Transport: single-part objects are sent with `ChecksumSHA256` for the server to verify;
multipart objects with composite SHA-256 part checksums (S3 cannot take a full-object SHA-256 there).
The server's word is not taken alone (moto, for one, accepts a wrong checksum): a single-part upload's
ETag, the MD5 of the bytes the server received, is compared with the MD5 of the bytes sent, and a
mismatch is re-sent; `verify=True` reads every object back and hashes it.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from pipeline.store.base import BagUploadError, StoredObject, StoreError, UploadResult, upload_bag_with

T = TypeVar("T")

MIB = 1 << 20


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        checksum_mode: str = "when_supported",
        multipart_threshold: int = 64 * MIB,
        part_size: int = 16 * MIB,
        concurrency: int = 4,
        max_attempts: int = 6,
        object_lock_mode: str | None = None,
        object_lock_days: int | None = None,
        outage_seconds: float = 300.0,
    ) -> None:
        self.bucket = bucket
        self.outage_seconds = outage_seconds
        self.prefix = prefix.strip("/")
        config = botocore.config.Config(
            region_name=region,
            s3={"addressing_style": addressing_style or "auto"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, 2 * concurrency),
        )
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
            use_threads=concurrency > 1,
        )
        self.multipart_threshold = multipart_threshold
        self.lock_mode = object_lock_mode
        self.lock_days = object_lock_days

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"

    def key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    # -- bags -------------------------------------------------------------------------------------------

    def check(self, wait: bool = True) -> None:
        """Fail early, as a store error, when the bucket cannot be reached (after waiting out an outage,
        with `wait`) or used."""
        try:
            if wait:
                self._through_outage(lambda: self.client.head_bucket(Bucket=self.bucket))
            else:
                self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.NoCredentialsError:
            raise StoreError(f"{self.uri}: no AWS credentials found (environment, shared config or role)") from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise StoreError(f"{self.uri}: cannot use the bucket: {_message(exc)}") from None

    def upload_bag(self, bag: Path, verify: bool = False) -> UploadResult:
        """Store a bag: payload first, tag files after, `bagit.txt` last; skip what is stored already."""
        # one listing says which of the bag's objects exist; only those need a HEAD (a HEAD per object cost
        # more client CPU than the checksums)
        try:
            listed = {entry["Key"] for entry in self._through_outage(lambda: self.list_keys(f"{bag.name}/"))}
        except _UNREACHABLE as exc:
            raise BagUploadError(f"{self.uri}{bag.name}/: store unreachable: {_message(exc)}") from None
        inside = self.key(f"{bag.name}/")

        def put(path: Path, key: str, sha256: str, size: int) -> StoredObject:
            full = self.key(key)
            known_absent = full.startswith(inside) and full not in listed
            return self._put(path, full, sha256, size, verify, known_absent=known_absent)

        return upload_bag_with(bag, self.uri, put)

    def _through_outage(self, call: Callable[[], T]) -> T:
        """Run `call`, waiting out an endpoint that cannot be reached (refused, reset, timed out) for up to
        `outage_seconds` from the first failure, with exponential backoff; any other error is raised at once.
        botocore's own retries (`max_attempts`) cover short blips; this covers a store restarting."""
        deadline: float | None = None
        delay = 1.0
        while True:
            try:
                return call()
            except _UNREACHABLE:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.outage_seconds
                if now + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- objects ----------------------------------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise BagUploadError(f"s3://{self.bucket}/{key}: {_message(exc)}") from None

    def _put(
        self, path: Path, key: str, sha256: str, size: int, verify: bool, known_absent: bool = False
    ) -> StoredObject:
        uri = f"s3://{self.bucket}/{key}"
        existing = None if known_absent else self.head(key)
        if existing is not None:
            held = stored_sha256(existing)
            if held == sha256 and existing.get("ContentLength") == size:
                return StoredObject("", uri, size, sha256, skipped=True, **_identity(existing))
            raise BagUploadError(
                f"{uri}: already stored with different content (sha256 {held or 'unknown'}, bag has {sha256}); "
                "stored bags are never overwritten"
            )
        problems = []
        for _ in range(3):
            try:
                stored = self._through_outage(lambda: self._send(path, key, sha256, size))
            except botocore.exceptions.ClientError as exc:
                raise BagUploadError(f"{uri}: {_message(exc)}") from None
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                raise BagUploadError(f"{uri}: upload failed after retries: {_message(exc)}") from None
            problem = self._check(key, sha256, size, stored, verify)
            if problem is None:
                return StoredObject("", uri, size, sha256, **stored)
            problems.append(problem)  # the bytes that arrived are not ours: send them again
        # never leave wrong bytes under a key whose metadata claims the bag's sha256: a later run would skip them
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            problems.append(f"and the wrong object could not be removed ({_message(exc)}): remove it by hand")
        raise BagUploadError(f"{uri}: stored object does not match after 3 attempts: {'; '.join(problems)}")

    def _send(self, path: Path, key: str, sha256: str, size: int) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": {"sha256": sha256}}
        if self.lock_mode and self.lock_days:
            extra["ObjectLockMode"] = self.lock_mode
            extra["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.lock_days)
        if size <= self.multipart_threshold:
            with path.open("rb") as handle:
                body = _Md5Reader(handle)
                response = self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    # the value is ours (the manifest's digest, not recomputed); naming the algorithm too makes
                    # botocore send x-amz-sdk-checksum-algorithm, which Object Lock puts require
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                    **extra,
                )
            return {**_identity(response), "sent_md5": body.md5.hexdigest()}
        # by path, not as an open file: s3transfer then reads parts from disk as it sends them, where a file
        # object makes it buffer up to 10 parts in memory (measured: 241 MiB peak against 64)
        self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"}, Config=self.transfer
        )
        head = self.head(key) or {}
        return _identity(head)

    def _check(self, key: str, sha256: str, size: int, stored: dict[str, Any], verify: bool) -> str | None:
        """Why the stored object is not the file (None when it is): ETag against the MD5 sent, size, and,
        with `verify`, the sha256 of the object read back."""
        sent_md5 = stored.pop("sent_md5", None)
        etag = (stored.get("etag") or "").strip('"')
        if sent_md5 is not None and len(etag) == 32 and "-" not in etag and etag != sent_md5:
            return f"server received other bytes (ETag {etag}, sent MD5 {sent_md5})"
        if verify:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            digest, received = hashlib.sha256(), 0
            for chunk in response["Body"].iter_chunks(MIB):
                digest.update(chunk)
                received += len(chunk)
            if received != size or digest.hexdigest() != sha256:
                return f"read back {received} bytes with sha256 {digest.hexdigest()}"
        return None

    # -- reading, for audits and downloads --------------------------------------------------------------

    def list_keys(self, prefix: str) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(prefix)):
                keys.extend(page.get("Contents", []))
        except botocore.exceptions.ClientError as exc:
            raise BagUploadError(f"{self.uri}{prefix}: cannot list: {_message(exc)}") from None
        return keys

    def download(self, key: str, write: Callable[[bytes], object], version_id: str | None = None) -> str | None:
        """Stream an object (one version of it, when given) into `write`, 1 MiB at a time; its version id."""
        extra = {"VersionId": version_id} if version_id and version_id != "null" else {}
        response = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        for chunk in response["Body"].iter_chunks(MIB):
            write(chunk)
        version: str | None = response.get("VersionId")
        return version


_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)


class _Md5Reader:
    """The file as botocore reads it, with the MD5 of the bytes actually sent (reset when botocore rewinds
    to retry), to compare with the ETag the server computed from what it received."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.md5.update(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._handle.seek(offset, whence)
        if position == 0:
            self.md5 = hashlib.md5(usedforsecurity=False)
        return position

    def tell(self) -> int:
        return self._handle.tell()


def _identity(response: dict[str, Any]) -> dict[str, Any]:
    return {
        "version_id": response.get("VersionId"),
        "etag": response.get("ETag"),
        "checksum": response.get("ChecksumSHA256"),
    }


def stored_sha256(head: dict[str, Any]) -> str | None:
    """The sha256 an object says it has. A single-part object's checksum is the server's own (S3 verifies it
    on arrival) and outranks the metadata we wrote; a multipart ETag (`...-N`) means a composite checksum
    that names no file digest, so the metadata it is."""
    multipart = "-" in (head.get("ETag") or "")
    server = None if multipart else _hex_checksum(head.get("ChecksumSHA256"))
    return server or head.get("Metadata", {}).get("sha256")


def _hex_checksum(value: str | None) -> str | None:
    """A full-object ChecksumSHA256 (base64) as hex; composite ones (`...-N`) name no file digest."""
    if not value or "-" in value:
        return None
    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return None


def _message(exc: BaseException) -> str:
    """One line, never the request's headers (they carry the signature)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return " ".join(str(exc).split())[:300]
