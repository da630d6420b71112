"""What every store shares: reading a bag's files and digests, the upload order, and the result records.

Uploads send the payload first and the tag files after it, `bagit.txt` last, so a bag that was only
partly uploaded has no `bagit.txt` and never looks complete. An object already stored with the same
sha256 is skipped, so an interrupted upload run again sends only what did not arrive; an object stored
with different bytes is never overwritten: that stops the bag's upload and is reported. A bag's own
`data/provenance.json` is also stored beside it (`<bag>.provenance.json`) and under `archive_manifests/`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.faults import crashpoint

CHUNK = 1 << 20
TAG_ORDER_LAST = ("bag-info.txt", "bagit.txt")  # written last, bagit.txt the very last


class StoreError(Exception):
    """A store that cannot be used at all (bad target, no credentials, unreachable): exit status 2."""


class BagUploadError(Exception):
    """One bag that could not be stored completely; other bags go on."""


@dataclass(frozen=True)
class BagFile:
    """A file of a bag: its path relative to the bag, size, and sha256 (from the manifest when known)."""

    relpath: str
    path: Path
    size: int
    sha256: str | None
    is_tag: bool


@dataclass
class StoredObject:
    relpath: str
    uri: str
    size: int
    sha256: str
    skipped: bool = False  # already stored with the same digest
    version_id: str | None = None
    etag: str | None = None
    checksum: str | None = None  # what the server says it holds (e.g. ChecksumSHA256)


@dataclass
class UploadResult:
    bag: str
    store: str
    objects: list[StoredObject] = field(default_factory=list)
    bytes_sent: int = 0
    manifest_copies: list[StoredObject] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(1 for o in self.objects if o.skipped)


def upload_bag_with(bag: Path, store: str, put: Callable[[Path, str, str, int], StoredObject]) -> UploadResult:
    """The upload every store does, `put(path, key under the store root, sha256, size)` being its own:
    each file of the bag in order under `<bag>/`, then the bag's sealed `data/provenance.json` beside the
    bag and under `archive_manifests/`."""
    name = bag.name
    result = UploadResult(bag=name, store=store)
    for file in bag_files(bag):
        stored = put(file.path, f"{name}/{file.relpath}", file.sha256 or sha256_of(file.path), file.size)
        stored.relpath = file.relpath
        result.objects.append(stored)
        if not stored.skipped:
            result.bytes_sent += file.size
        crashpoint("upload-object")  # `upload-object:<n>`: killed right after the n-th object is stored
    manifest = bag / "data" / "provenance.json"  # sealed by the bag's manifests: never changes
    if manifest.is_file():
        digest = sha256_of(manifest)
        for key in (f"{name}.provenance.json", f"archive_manifests/{name}.json"):
            copy = put(manifest, key, digest, manifest.stat().st_size)
            copy.relpath = key
            result.manifest_copies.append(copy)
    return result


def decode_manifest_path(path: str) -> str:
    """RFC 8493 2.1.3: `%0A`, `%0D` and `%25` in manifest paths stand for LF, CR and `%`."""
    return re.sub(r"%(0A|0D|25)", lambda m: {"0A": "\n", "0D": "\r", "25": "%"}[m.group(1).upper()], path, flags=re.I)


def manifest_digests(bag: Path, algorithm: str = "sha256") -> dict[str, str]:
    """Path (decoded) -> digest for one manifest of a bag, payload or tag; empty when there is none."""
    digests: dict[str, str] = {}
    for name in (f"manifest-{algorithm}.txt", f"tagmanifest-{algorithm}.txt"):
        manifest = bag / name
        if not manifest.is_file():
            continue
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            digest, _, path = line.partition(" ")
            digests[decode_manifest_path(path.lstrip(" *"))] = digest.lower()
    return digests


def bag_files(bag: Path) -> list[BagFile]:
    """Every file of a bag in upload order: payload, then tag files, `bag-info.txt` and `bagit.txt` last.

    Refuses symlinks and anything outside the bag: a hostile bag must not make us read elsewhere.
    """
    if not (bag / "bagit.txt").is_file():
        raise BagUploadError(f"{bag}: not a bag (no bagit.txt)")
    known = manifest_digests(bag)
    files: list[BagFile] = []
    root = bag.resolve()
    for path in sorted(bag.rglob("*")):
        relpath = path.relative_to(bag).as_posix()
        if path.is_symlink():
            raise BagUploadError(f"{bag}: {relpath} is a symbolic link; refusing to follow it")
        if not path.is_file():
            continue
        if root not in path.resolve().parents:
            raise BagUploadError(f"{bag}: {relpath} resolves outside the bag")
        is_tag = not relpath.startswith("data/")
        files.append(BagFile(relpath, path, path.stat().st_size, known.get(relpath), is_tag))

    def order(file: BagFile) -> tuple[int, int, str]:
        if not file.is_tag:
            return (0, 0, file.relpath)
        if file.relpath in TAG_ORDER_LAST:
            return (2, TAG_ORDER_LAST.index(file.relpath), file.relpath)
        return (1, 0, file.relpath)

    return sorted(files, key=order)


def sha256_of(path: Path) -> str:
    """For files no manifest gives a sha256 for (tag files of other tools' bags): one read."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
