"""Audit stage: fixity checks of stored bags, stricter than bagit-python.

A full audit reads every file once, computing sha256 and sha512 together, and checks: every manifest
entry present with its digests (payload and tag manifests), nothing unlisted in `data/` or among the tag
files, Payload-Oxum, no symlinks and no manifest path leaving the bag (reported as `hostile`, never
read), the provenance manifest against its schema and against the payload manifest, and every gzip
member of every `.warc.gz` complete (a truncated tail passes `warcio check`, warcio issue 138).
Each audit appends a PREMIS-like fixity event per bag to a JSON Lines log.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.store.base import decode_manifest_path

CHUNK = 1 << 20
KINDS = (
    "missing",
    "unexpected",
    "digest-mismatch",
    "size-mismatch",
    "tag-manifest-mismatch",
    "oxum-mismatch",
    "incomplete-upload",
    "hostile",
    "warc-truncated",
    "provenance",
)


@dataclass(frozen=True)
class Failure:
    bag: str
    file: str
    kind: str
    detail: str = ""


@dataclass
class BagAudit:
    bag: str
    path: str
    files: int = 0
    bytes: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def is_bag(path: Path) -> bool:
    return (path / "bagit.txt").is_file() or any(path.glob("manifest-*.txt"))


def find_bags(target: Path) -> list[Path]:
    """A bag, or the bags directly inside a directory (a local store keeps them under its prefix)."""
    if is_bag(target):
        return [target]
    if not target.is_dir():
        return []
    return sorted(p for p in target.iterdir() if p.is_dir() and not p.name.startswith(".") and is_bag(p))


def _manifest(path: Path) -> dict[str, str]:
    return parse_manifest(path.read_text(encoding="utf-8", errors="replace"))


def parse_manifest(content: str) -> dict[str, str]:
    """Path (RFC 8493 percent-decoded) -> digest, for the lines of a manifest or tag manifest."""
    entries: dict[str, str] = {}
    for line in content.splitlines():
        if line.strip():
            digest, _, name = line.partition(" ")
            entries[decode_manifest_path(name.lstrip(" *"))] = digest.strip().lower()
    return entries


def _inside(bag: Path, relpath: str) -> bool:
    """A manifest path must name a place inside the bag: no absolute path, no `..`, no symlink on the way."""
    if relpath.startswith("/") or "\\" in relpath or ".." in relpath.split("/"):
        return False
    current = bag
    for part in relpath.split("/"):
        current = current / part
        if current.is_symlink():
            return False
    return True


def _hash(path: Path, algorithms: Iterable[str]) -> tuple[dict[str, str], int]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            size += len(chunk)
            for hasher in hashers.values():
                hasher.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}, size


def warc_members_complete(path: Path) -> str | None:
    """Why a `.warc.gz` is not a run of complete gzip members (None when it is)."""
    with path.open("rb") as handle:
        data_left = True
        members = 0
        while data_left:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            started = False
            while not decompressor.eof:
                chunk = decompressor.unconsumed_tail or handle.read(CHUNK)
                if not chunk:
                    if started:
                        return f"gzip member {members + 1} is cut short"
                    data_left = False
                    break
                started = True
                try:
                    decompressor.decompress(chunk, CHUNK)
                except zlib.error as exc:
                    return f"gzip member {members + 1} is damaged: {exc}"
            if decompressor.eof:
                members += 1
                rest = decompressor.unused_data
                if rest:
                    handle.seek(-len(rest), os.SEEK_CUR)
    return None if members else "no gzip member"


def audit_bag(bag: Path, jobs: int = 2, full: bool = True) -> BagAudit:
    """Everything wrong with one local bag, each failure naming its file and kind."""
    name = bag.name
    result = BagAudit(bag=name, path=str(bag))

    def fail(file: str, kind: str, detail: str = "") -> None:
        result.failures.append(Failure(name, file, kind, detail))

    if not (bag / "bagit.txt").is_file():
        fail("bagit.txt", "incomplete-upload", "no bagit.txt: the bag was never completely stored")
    payload = {a: _manifest(p) for p in bag.glob("manifest-*.txt") if (a := p.stem.split("-", 1)[1])}
    tags = {a: _manifest(p) for p in bag.glob("tagmanifest-*.txt") if (a := p.stem.split("-", 1)[1])}
    if not payload:
        fail("manifest-*.txt", "missing", "no payload manifest")
    listed: dict[str, dict[str, str]] = {}
    for algorithm, entries in payload.items():
        for relpath, digest in entries.items():
            listed.setdefault(relpath, {})[algorithm] = digest
    tag_listed: dict[str, dict[str, str]] = {}
    for algorithm, entries in tags.items():
        for relpath, digest in entries.items():
            tag_listed.setdefault(relpath, {})[algorithm] = digest

    # what is on disk: symlinks are hostile and never followed
    on_disk: set[str] = set()
    for root, dirs, files in os.walk(bag, followlinks=False):
        for entry in [*dirs, *files]:
            full_path = Path(root) / entry
            rel = full_path.relative_to(bag).as_posix()
            if full_path.is_symlink():
                fail(rel, "hostile", "symbolic link inside the bag")
            elif entry in files:
                on_disk.add(rel)

    work: list[tuple[str, dict[str, str], str]] = []  # (relpath, expected digests, failure kind)
    for relpath, digests in {**tag_listed, **listed}.items():
        is_tag = relpath in tag_listed and relpath not in listed
        if not _inside(bag, relpath):
            fail(relpath, "hostile", "manifest names a path outside the bag; not read")
            continue
        if relpath not in on_disk:
            fail(relpath, "missing")
            continue
        work.append((relpath, digests, "tag-manifest-mismatch" if is_tag else "digest-mismatch"))
    for relpath in sorted(on_disk):
        if relpath.startswith("data/") and relpath not in listed:
            fail(relpath, "unexpected", "in data/ but in no payload manifest")
        elif tags and relpath not in tag_listed and not relpath.startswith(("data/", "tagmanifest-")):
            fail(relpath, "unexpected", "tag file in no tag manifest")  # tag manifests never list themselves

    oxum = _bag_info(bag).get("Payload-Oxum")
    if oxum:
        payload_files = [p for p in on_disk if p.startswith("data/")]
        size = sum((bag / p).stat().st_size for p in payload_files)
        if oxum != f"{size}.{len(payload_files)}":
            fail("bag-info.txt", "oxum-mismatch", f"Payload-Oxum {oxum}, found {size}.{len(payload_files)}")

    def check(item: tuple[str, dict[str, str], str]) -> list[tuple[str, str, str]]:
        relpath, expected, kind = item
        path = bag / relpath
        problems: list[tuple[str, str, str]] = []
        if full:
            found, _ = _hash(path, expected)
            for algorithm, digest in expected.items():
                if found[algorithm] != digest:
                    problems.append((relpath, kind, f"{algorithm} {found[algorithm]}, manifest {digest}"))
            if relpath.endswith(".warc.gz"):
                reason = warc_members_complete(path)
                if reason:
                    problems.append((relpath, "warc-truncated", reason))
        return problems

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # hashlib releases the GIL on large reads
        for problems in pool.map(check, work):
            for relpath, kind, detail in problems:
                fail(relpath, kind, detail)
    result.files = len(on_disk)
    result.bytes = sum((bag / p).stat().st_size for p in on_disk)
    _check_provenance(bag, listed, result, fail)
    return result


def _check_provenance(bag: Path, listed: dict[str, dict[str, str]], result: BagAudit, fail: Any) -> None:
    path = bag / "data" / "provenance.json"
    if not path.is_file() or path.is_symlink():
        result.notes.append("no provenance.json (a bag from another tool?)")
        return
    from pipeline.manifest import ManifestError, validate

    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        validate(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError, ManifestError) as exc:
        fail("data/provenance.json", "provenance", str(exc).splitlines()[0])
        return
    for link in manifest.get("links", []):
        for capture in link.get("captures", []):
            for file in capture.get("files", []):
                inside = file.get("path")
                if not inside:
                    continue
                if inside not in listed:
                    fail(inside, "provenance", "named by provenance.json but in no manifest")
                elif listed[inside].get("sha256", file["sha256"]) != file["sha256"]:
                    fail(inside, "provenance", "provenance.json and the manifest disagree on its sha256")


def _bag_info(bag: Path) -> dict[str, str]:
    info: dict[str, str] = {}
    path = bag / "bag-info.txt"
    if path.is_file() and not path.is_symlink():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            label, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                info[label.strip()] = value.strip()
    return info


def fixity_event(audit: BagAudit, full: bool, when: datetime | None = None) -> dict[str, Any]:
    """A PREMIS-like event: type, date, agent and version, outcome, and the failures."""
    return {
        "eventType": "fixity check",
        "eventDateTime": (when or datetime.now(UTC)).isoformat(),
        "eventDetail": "full" if full else "fast",
        "agent": f"preserve-pipeline/{__version__}",
        "object": audit.bag,
        "location": audit.path,
        "outcome": "pass" if audit.ok else "fail",
        "files": audit.files,
        "bytes": audit.bytes,
        "failures": [asdict(f) for f in audit.failures],
        "notes": audit.notes,
    }


def append_events(log: Path, events: Iterable[dict[str, Any]]) -> None:
    """Append to a JSON Lines log, one line per event, synced: an audit trail must not lose its end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def history(log: Path, bag: str) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    events = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            event = json.loads(line)
            if event.get("object") == bag:
                events.append(event)
    return events


def audit_s3_bag(store: Any, bag: str, full: bool = False) -> BagAudit:
    """Audit one bag in object storage. Fast: presence, sizes against Payload-Oxum, and each object's
    stored checksum (or its sha256 metadata) against the manifest, with no payload byte downloaded. Full:
    every object streamed through the hashes, nothing written to disk. The version checked is noted."""
    import botocore.exceptions

    from pipeline.store.s3 import stored_sha256

    result = BagAudit(bag=bag, path=f"{store.uri}{bag}/")

    def fail(file: str, kind: str, detail: str = "") -> None:
        result.failures.append(Failure(bag, file, kind, detail))

    listed = {entry["Key"].removeprefix(store.key(f"{bag}/")): entry for entry in store.list_keys(f"{bag}/")}
    if "bagit.txt" not in listed:
        fail("bagit.txt", "incomplete-upload", "no bagit.txt: the bag was never completely stored")

    def text(relpath: str) -> str | None:
        if relpath not in listed:
            return None
        chunks: list[bytes] = []
        store.download(store.key(f"{bag}/{relpath}"), chunks.append)  # tag files only: small
        return b"".join(chunks).decode("utf-8", errors="replace")

    payload_sha256 = parse_manifest(text("manifest-sha256.txt") or "")
    if not payload_sha256:
        fail("manifest-sha256.txt", "missing", "no sha256 payload manifest to audit against")
    for relpath, digest in payload_sha256.items():
        key = store.key(f"{bag}/{relpath}")
        if not _inside(Path("/bag"), relpath):
            fail(relpath, "hostile", "manifest names a path outside the bag; not read")
            continue
        if relpath not in listed:
            fail(relpath, "missing")
            continue
        try:
            head = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            fail(relpath, "missing", str(exc))
            continue
        if head.get("VersionId"):
            result.notes.append(f"{relpath}: version {head['VersionId']} checked")
        held = stored_sha256(head)
        if held != digest:
            fail(relpath, "digest-mismatch", f"stored object says sha256 {held}, manifest {digest}")
        elif full:
            hasher = hashlib.sha256()
            store.download(key, hasher.update)
            if hasher.hexdigest() != digest:
                fail(relpath, "digest-mismatch", f"object hashes to {hasher.hexdigest()}, manifest {digest}")
    for relpath in listed:
        if relpath.startswith("data/") and relpath not in payload_sha256:
            fail(relpath, "unexpected", "in data/ but in no payload manifest")
    oxum = None
    for line in (text("bag-info.txt") or "").splitlines():
        if line.startswith("Payload-Oxum:"):
            oxum = line.split(":", 1)[1].strip()
    data = [entry for relpath, entry in listed.items() if relpath.startswith("data/")]
    if oxum and oxum != f"{sum(e['Size'] for e in data)}.{len(data)}":
        fail("bag-info.txt", "oxum-mismatch", f"Payload-Oxum {oxum}, found {sum(e['Size'] for e in data)}.{len(data)}")
    result.files = len(listed)
    result.bytes = sum(e["Size"] for e in listed.values())
    return result
