"""The embedded default store: a directory laid out exactly like the bucket (`<root>/<prefix>/<bag>/...`).

Each object is copied to a temporary name while its sha256 is checked against the bag's manifest, then
fsynced and renamed, so the store never holds a half-written object under its real name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.capture.warc import fsync_dir
from pipeline.store.base import (
    CHUNK,
    BagUploadError,
    StoredObject,
    UploadResult,
    bag_files,
    sha256_of,
)


class LocalStore:
    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix.strip("/")
        self.base = root / self.prefix if self.prefix else root

    @property
    def uri(self) -> str:
        return self.base.resolve().as_uri() + "/"

    def upload_bag(self, bag: Path, verify: bool = False) -> UploadResult:
        """Store a bag (idempotent, resumable, never overwriting) and its provenance manifest beside it and
        under `archive_manifests/`."""
        name = bag.name
        result = UploadResult(bag=name, store=self.uri)
        target_root = self.base / name
        for file in bag_files(bag):
            expected = file.sha256 or sha256_of(file.path)
            stored = self._put(file.path, target_root / file.relpath, expected, file.size)
            stored.relpath = file.relpath
            result.objects.append(stored)
            if not stored.skipped:
                result.bytes_sent += file.size
        manifest = bag / "data" / "provenance.json"  # sealed by the bag's manifests: never changes
        if manifest.is_file():
            digest = sha256_of(manifest)
            for key in (f"{name}.provenance.json", f"archive_manifests/{name}.json"):
                copy = self._put(manifest, self.base / key, digest, manifest.stat().st_size)
                copy.relpath = key
                result.manifest_copies.append(copy)
        return result

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
        with source.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise BagUploadError(f"{source}: sha256 {digest.hexdigest()} differs from the manifest's {sha256}")
        os.replace(tmp, destination)
        fsync_dir(destination.parent)
        return StoredObject("", uri, size, sha256, checksum=digest.hexdigest())
