"""Package stage: one BagIt 1.0 bag per document per run that captured something new.

The manifests are written from the digests computed while capturing: payload files are hardlinked
from the capture directory (copied, and checked while copied, only across filesystems), so no payload
byte is read again to build them. bagit-python's own checks run afterwards. A bag is built in
`.<name>.building` beside its destination and renamed into place only once complete and valid, so a
crash never leaves a directory that looks like a finished bag.

bagit-python is not used to write: it sorts `bag-info.txt` (RFC 8493 asks for the order written) and
hashes every payload file again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bagit

from pipeline import __version__
from pipeline.capture.warc import fsync_dir
from pipeline.faults import crashpoint, disk_full
from pipeline.ledger import Ledger
from pipeline.manifest import encode, provenance
from pipeline.manifest import write as write_manifest
from pipeline.records import Capture, CapturedFile, Rejected, Target

BAGIT_VERSION = "1.0"
PROFILE_IDENTIFIER = "https://preserve-pipeline.example/bagit-profile/v1.json"
SOFTWARE_AGENT = f"preserve-pipeline/{__version__} (https://preserve-pipeline.example/)"
_MAX_NAME = 200  # bytes of UTF-8 per path segment, well under common 255-byte limits


class PackageError(Exception):
    """A bag that could not be built; nothing finished-looking is left behind."""


@dataclass(frozen=True)
class BagSettings:
    source_organization: str = "Unnamed archive"
    contact_email: str | None = None
    profile_identifier: str = PROFILE_IDENTIFIER


@dataclass(frozen=True)
class PayloadFile:
    """A file going into `data/`: where it comes from (or its bytes) and its known digests."""

    path: str  # path inside the bag, starting with "data/"
    size: int
    sha256: str
    sha512: str
    source: Path | None = None
    content: bytes | None = None
    media_type: str = "application/octet-stream"


@dataclass
class BuiltBag:
    name: str
    path: Path
    payload_oxum: str
    bag_size: str
    files: list[PayloadFile] = field(default_factory=list)
    tag_digests: dict[str, str] = field(default_factory=dict)  # sha256 of each tag file


def sanitize_name(name: str, taken: set[str] | None = None) -> str:
    """A file name safe in any bag and read the same by every BagIt tool.

    NFC, no path separators, no `..`, no control characters, and no `%`, CR or LF (bagit-python neither
    encodes nor decodes `%` in manifests, its issue 157); spaces and non-Latin scripts stay. Bounded to
    200 bytes of UTF-8 (the extension kept), and made unique against `taken` (which it updates).
    """
    name = unicodedata.normalize("NFC", name)
    name = re.sub(r"[\x00-\x1f\x7f%/\\]", "_", name)
    name = name.strip().lstrip(".-").strip()
    if not name or name in (".", ".."):
        name = "file"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    name = _fit(stem, ext)
    if taken is not None:
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = _fit(stem, ext, suffix=f" ({number})")
        taken.add(candidate.casefold())
        name = candidate
    return name


def _fit(stem: str, ext: str, suffix: str = "") -> str:
    tail = suffix + (f".{ext}" if ext else "")
    budget = _MAX_NAME - len(tail.encode("utf-8"))
    encoded = stem.encode("utf-8")[:budget]
    return encoded.decode("utf-8", errors="ignore").rstrip() + tail


def bag_name(slug: str, when: datetime) -> str:
    return f"{slug}_{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def slugify(text: str) -> str:
    """A document's slug for bag names: letters, digits, `-`, `_` and `.` (other scripts kept)."""
    text = unicodedata.normalize("NFC", text)
    slug = re.sub(r"[^\w.-]+", "-", text, flags=re.UNICODE).strip("-.")
    return sanitize_name(slug or "document")[:80]


def payload_from_capture(
    file: CapturedFile, capture_dir: Path, taken: dict[str, set[str]] | None = None
) -> PayloadFile:
    """A captured file as bag payload: `warc/x` and `media/k/y` keep their place under `data/`, each segment
    sanitised, and unique within its directory when `taken` (names used so far, per directory) is given."""
    *directories, name = Path(file.path).parts
    clean = [sanitize_name(d) for d in directories]  # our own names: warc/, media/<target id>/
    used = None if taken is None else taken.setdefault("/".join(clean), set())
    parts = [*clean, sanitize_name(name, used)]
    return PayloadFile(
        path="data/" + "/".join(parts),
        size=file.size,
        sha256=file.sha256,
        sha512=file.sha512,
        source=capture_dir / file.path,
        media_type=file.media_type,
    )


def payload_from_bytes(path: str, content: bytes, media_type: str = "application/octet-stream") -> PayloadFile:
    return PayloadFile(
        path=path,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        sha512=hashlib.sha512(content).hexdigest(),
        content=content,
        media_type=media_type,
    )


def build_bag(
    bags_dir: Path,
    name: str,
    files: Sequence[PayloadFile],
    info: list[tuple[str, str]],
    when: datetime | None = None,
    before_publish: Callable[[], None] | None = None,
) -> BuiltBag:
    """Write a bag of `files` with bag-info fields `info` (in this order), atomically, and check it.
    `before_publish` runs once the bag is complete, just before the rename that publishes it."""
    when = when or datetime.now(UTC)
    bags_dir.mkdir(parents=True, exist_ok=True)
    final = bags_dir / name
    if final.exists():
        raise PackageError(f"{final}: a bag of that name already exists; bags are never overwritten")
    building = bags_dir / f".{name}.building"
    if building.exists():
        shutil.rmtree(building)
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise PackageError(f"{name}: two payload files share a path")
    for path in paths:
        if not path.startswith("data/") or ".." in path.split("/") or "\\" in path or re.search(r"[%\r\n]", path):
            raise PackageError(f"{name}: unsafe payload path {path!r}")
    try:
        building.mkdir()
        made: set[Path] = set()
        for file in files:
            _place(building, file, made)
        oxum = f"{sum(f.size for f in files)}.{len(files)}"
        size = _human_size(sum(f.size for f in files))
        fields = [
            *info,
            ("Bagging-Date", when.astimezone(UTC).strftime("%Y-%m-%d")),
            ("Bagging-Time", when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
            ("Bag-Software-Agent", SOFTWARE_AGENT),
            ("Payload-Oxum", oxum),
            ("Bag-Size", size),
        ]
        tags: dict[str, bytes] = {
            "bagit.txt": f"BagIt-Version: {BAGIT_VERSION}\nTag-File-Character-Encoding: UTF-8\n".encode(),
            "bag-info.txt": _bag_info(fields),
            "manifest-sha256.txt": _manifest(files, "sha256"),
            "manifest-sha512.txt": _manifest(files, "sha512"),
        }
        for algorithm in ("sha256", "sha512"):
            lines = "".join(f"{hashlib.new(algorithm, content).hexdigest()}  {tag}\n" for tag, content in tags.items())
            tags[f"tagmanifest-{algorithm}.txt"] = lines.encode()
        for tag, content in tags.items():
            _write_synced(building / tag, content)
        fsync_dir(building)
        _check(building, name)
        if before_publish is not None:
            before_publish()
        crashpoint("bag-publish")
        os.rename(building, final)
        fsync_dir(bags_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    digests = {tag: hashlib.sha256(content).hexdigest() for tag, content in tags.items()}
    return BuiltBag(name=name, path=final, payload_oxum=oxum, bag_size=size, files=list(files), tag_digests=digests)


def sweep_building(bags_dir: Path) -> list[str]:
    """Remove bags a crash left half-built (`.<name>.building`); call only while holding the run lock."""
    removed = []
    if bags_dir.is_dir():
        for entry in bags_dir.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".building") and entry.is_dir():
                shutil.rmtree(entry)
                removed.append(entry.name)
    return removed


def _place(root: Path, file: PayloadFile, made: set[Path]) -> None:
    target = root / file.path
    if target.parent not in made:
        target.parent.mkdir(parents=True, exist_ok=True)
        made.add(target.parent)
    if file.content is not None:
        _write_synced(target, file.content)
        return
    if file.source is None:
        raise PackageError(f"{file.path}: no source and no content")
    try:
        status = os.lstat(file.source)
    except FileNotFoundError:
        raise PackageError(f"{file.source}: captured file is missing") from None
    if not stat.S_ISREG(status.st_mode):
        raise PackageError(f"{file.source}: captured file is not a regular file")
    if status.st_size != file.size:
        raise PackageError(f"{file.source}: size {status.st_size} differs from the recorded {file.size}")
    try:
        os.link(file.source, target)  # same bytes, no copy and no read: the capture's digests stand
    except OSError:
        _copy_checked(file, target)


def _copy_checked(file: PayloadFile, target: Path) -> None:
    """Across filesystems: copy, hashing as the bytes pass, and refuse a file that changed since capture."""
    assert file.source is not None
    digest = hashlib.sha256()
    with file.source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != file.sha256:
        raise PackageError(f"{file.source}: sha256 differs from the one recorded at capture")


def _write_synced(path: Path, content: bytes) -> None:
    disk_full("bag-write")
    with path.open("xb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _manifest(files: Sequence[PayloadFile], algorithm: str) -> bytes:
    return "".join(f"{getattr(f, algorithm)}  {f.path}\n" for f in sorted(files, key=lambda f: f.path)).encode()


def _bag_info(fields: list[tuple[str, str]]) -> bytes:
    lines = []
    for label, value in fields:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", label):
            raise PackageError(f"bag-info label {label!r} is not a plain token")
        flat = " ".join(str(value).split())  # one line: no folding ambiguity for any reader
        lines.append(f"{label}: {flat}\n")
    return "".join(lines).encode("utf-8")


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # pragma: no cover


def _check(path: Path, name: str) -> None:
    """bagit-python's structural checks (Oxum and completeness, no re-hashing) before publishing."""
    try:
        bag = bagit.Bag(str(path))
        bag.validate(completeness_only=True)
    except bagit.BagError as exc:
        raise PackageError(f"{name}: bagit-python rejects the bag: {exc}") from None


def info_fields(settings: BagSettings, document_id: str, description: str, run_id: str) -> list[tuple[str, str]]:
    """bag-info fields in the order they are written (RFC 8493 2.2.2: order is preserved)."""
    fields = [("Source-Organization", settings.source_organization)]
    if settings.contact_email:
        fields.append(("Contact-Email", settings.contact_email))
    fields += [
        ("External-Identifier", document_id),
        ("External-Description", description),
        ("Bag-Group-Identifier", run_id),
        ("BagIt-Profile-Identifier", settings.profile_identifier),
    ]
    return fields


@dataclass(frozen=True)
class Document:
    """What a bag is about: a source document on disk, or (for one-off captures) a description of the
    command that asked for them, kept as `content`."""

    source: str  # as Links name it
    id: str  # External-Identifier
    path: Path | None = None
    content: bytes | None = None
    file_name: str | None = None
    description: str | None = None


@dataclass
class PackageResult:
    document: Document
    bag: BuiltBag | None
    manifest_path: Path
    reason: str | None = None


def package_document(
    document: Document,
    targets: Sequence[Target],
    captures: Sequence[Capture],
    *,
    capture_dir: Path,
    bags_dir: Path,
    manifests_dir: Path,
    ledger: Ledger,
    run_id: str,
    config_digest: str,
    settings: BagSettings,
    operator: dict[str, str] | None = None,
    rejected: Sequence[Rejected] = (),
    when: datetime | None = None,
    document_changed: bool = False,
) -> PackageResult:
    """Bag one document's new captures with its provenance manifest; no bag when nothing is new. A new or
    changed document is itself new: it gets a bag even when every file it cites is held in earlier bags."""
    when = when or datetime.now(UTC)
    mine = [t for t in targets if any(link.source == document.source for link in t.links)]
    canonicals = {t.canonical for t in mine}
    relevant = [c for c in captures if c.canonical in canonicals]
    all_files = [f.path for c in relevant for f in c.files]
    held_in = ledger.bags_holding(all_files)
    # assigned just before a publish that a crash prevented: neither the bag nor its manifest exists
    unpublished = {
        b for b in set(held_in.values()) if not (bags_dir / b).is_dir() and not (manifests_dir / f"{b}.json").is_file()
    }
    if unpublished:
        ledger.unassign_bags(unpublished)
        held_in = {path: bag for path, bag in held_in.items() if bag not in unpublished}
    # a capture skipped as held may still be in no bag (its run was killed before packaging): bag it now
    new_files = [f for c in relevant for f in c.files if f.path not in held_in]
    content = document.content if document.content is not None else _read_document(document)
    doc_name = sanitize_name(document.file_name or (document.path.name if document.path else "document.txt"))
    doc_payload = payload_from_bytes(f"data/document/{doc_name}", content, "text/plain; charset=utf-8")
    doc_info = {
        "source": document.source,
        "id": document.id,
        "path_in_bag": doc_payload.path,
        "sha256": doc_payload.sha256,
        "sha512": doc_payload.sha512,
        "size": doc_payload.size,
    }
    name = bag_name(slugify(document.id), when)
    stamp = when
    while (bags_dir / name).exists() or (manifests_dir / f"{name}.json").exists():
        stamp += timedelta(seconds=1)  # two runs in one second: the next free name, never an overwrite
        name = bag_name(slugify(document.id), stamp)
    taken: dict[str, set[str]] = {}
    payload = [payload_from_capture(f, capture_dir, taken) for f in dict.fromkeys(new_files)]
    paths_in_bag = {f.path: p.path for f, p in zip(dict.fromkeys(new_files), payload, strict=True)}
    common = {
        "run_id": run_id,
        "config_digest": config_digest,
        "operator": operator or {},
        "document": doc_info,
        "targets": mine,
        "captures": relevant,
        "held_in": held_in,
        "rejected": rejected,
        "created": when,
    }
    if not payload and not document_changed:
        reason = (
            f"nothing new captured: {len(mine)} targets, {len(relevant)} captures, every file already held in a bag"
            if relevant
            else f"nothing captured for {len(mine)} targets"
        )
        manifest = provenance(bag=None, paths_in_bag={}, reason=reason, **common)
        path = manifests_dir / f"{name}.nobag.json"
        write_manifest(manifest, path)
        return PackageResult(document, None, path, reason)
    manifest = provenance(bag=name, paths_in_bag=paths_in_bag, **common)
    files = [doc_payload, *payload, payload_from_bytes("data/provenance.json", encode(manifest), "application/json")]
    info = info_fields(settings, document.id, document.description or _describe(document), run_id)
    # assigned before the rename: a crash between leaves an assignment to an unpublished bag (undone above on
    # the next run), never a published bag that the ledger does not know (which the next run would duplicate)
    try:
        built = build_bag(
            bags_dir, name, files, info, when, before_publish=lambda: ledger.assign_bag(list(paths_in_bag), name)
        )
    except OSError as exc:  # a full disk, most likely; build_bag has removed what it started
        raise PackageError(f"{bags_dir / name}: cannot write the bag: {exc.strerror or exc}") from None
    path = manifests_dir / f"{name}.json"
    try:
        write_manifest(manifest, path)
    except OSError as exc:  # the bag is published; the next upload writes this copy from its provenance.json
        raise PackageError(f"{path}: cannot write the manifest copy: {exc.strerror or exc}") from None
    return PackageResult(document, built, path)


def _read_document(document: Document) -> bytes:
    if document.path is None:
        raise PackageError(f"{document.source}: no document file and no content")
    try:
        return document.path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{document.path}: cannot read the document: {exc.strerror or exc}") from None


def _describe(document: Document) -> str:
    return f"Evidence cited by {document.source}, captured by preserve-pipeline"
