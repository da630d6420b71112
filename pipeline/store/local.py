"""The embedded default store: a directory laid out exactly like the bucket (`<root>/<prefix>/<bag>/...`).

Each object is copied to a temporary name while its sha256 is checked against the bag's manifest, then
fsynced and renamed, so the store never holds a half-written object under its real name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.capture.warc import fsync_dir
from pipeline.store.base import CHUNK, BagUploadError, StoredObject, UploadResult, sha256_of, upload_bag_with


class LocalStore:
    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix.strip("/")
        self.base = root / self.prefix if self.prefix else root

    @property
    def uri(self) -> str:
        return self.base.resolve().as_uri() + "/"

    def upload_bag(self, bag: Path, verify: bool = False) -> UploadResult:
        """Store a bag: idempotent, resumable, never overwriting (every copy is checked as it is written,
        so `verify` adds nothing here)."""
        return upload_bag_with(
            bag, self.uri, lambda path, key, sha256, size: self._put(path, self.base / key, sha256, size)
        )

    def _put(self, source: Path, destination: Path, sha256: str, size: int) -> StoredObject:
        uri = destination.resolve().as_uri()
        if destination.exists():
            held = sha256_of(destination)
            if held != sha256:
                raise BagUploadError(
                    f"{destination}: already stored with different content (sha256 {held}, bag has {sha256}); "
                    "stored bags are never overwritten"
                )
            return StoredObject("", uri, size, sha256, skipped=True, checksum=held)
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(destination.name + ".part")
        digest = hashlib.sha256()
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:  # a full disk, most likely: nothing half-written is left under any name
            tmp.unlink(missing_ok=True)
            raise BagUploadError(f"{destination}: cannot write: {exc.strerror or exc}") from None
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise BagUploadError(f"{source}: sha256 {digest.hexdigest()} differs from the manifest's {sha256}")
        os.replace(tmp, destination)
        fsync_dir(destination.parent)
        return StoredObject("", uri, size, sha256, checksum=digest.hexdigest())
