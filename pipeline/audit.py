"""Audit stage: fixity checks of stored bags, stricter than bagit-python.

A full audit reads every file once and checks: every manifest entry present with its digests (payload and
tag manifests), nothing unlisted in `data/` or among the tag files, Payload-Oxum, no symlinks, special
files or manifest paths leaving the bag (reported as `hostile`, never read), the provenance manifest
against its schema and against the payload manifest, and every gzip member of every `.warc.gz` complete
(a truncated tail passes `warcio check`, warcio issue 138). Each audit appends a PREMIS-like fixity event
per bag to a JSON Lines log.

Reading and hashing: each file is read once, and every consumer of it (one digest per manifest
algorithm, the gzip member check) sees all of its bytes. A file of `FANOUT_MIN` bytes or more is read by
one thread into a ring of `RING` buffers of `BLOCK` bytes (16 MiB per large file, whatever its size) and
each consumer updates from the same buffers in a thread of its own (hashlib and zlib release the GIL); a
buffer is read into again only once every consumer is done with it. Why this shape (BENCHMARKS.md,
"Audit"): a bag's audit takes as long as its largest file's sha512, which cannot be split, so that
digest gets a core from the first block and never waits, while the other core reads, computes the
sha256 and goes on to the small files. Buffers, not a fresh `bytes` per read: no allocation per block,
and anonymous maps are page-aligned (reading into an address 8-24 bytes past a page boundary made the
kernel's copy four times slower here). Not `mmap` of the file: hashing a mapped file in one call was no
faster, and a file truncated while mapped kills the process (SIGBUS) instead of failing its digest.
Smaller files are read whole, in batches for a pool of `jobs` threads shared by every bag, largest first
so that a large file's threads start before any small file. Threads, not processes: measured alike,
and threads need no pickling or copies of blocks between processes. Opening never follows a symbolic
link nor waits on a FIFO put in a file's place after the bag was walked. The provenance manifest is
checked while the pool hashes. Memory stays bounded: `RING` buffers per large file in flight and a few
bags planned ahead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import queue
import stat
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline import __version__
from pipeline.store.base import decode_manifest_path

BLOCK = 4 << 20  # reads of a large file: few hand-offs between threads, and the ring fits in the L3 cache
RING = 4  # buffers of BLOCK bytes per large file being read: 16 MiB, the memory a large file takes
FANOUT_MIN = 8 << 20  # files at least this large get a thread per digest
INFLATE = 1 << 20  # the most a gzip member check inflates at once: a gzip bomb never fills memory
BATCH_FILES, BATCH_BYTES = 64, 8 << 20  # small files go to the pool in batches: fewer futures
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
    version: str | None = None  # the object version checked, in a versioned bucket


@dataclass
class BagAudit:
    bag: str
    path: str
    files: int = 0
    bytes: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # file -> object version checked (S3, versioned)

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
            name = name.lstrip(" *")
            entries[decode_manifest_path(name) if "%" in name else name] = digest.strip().lower()
    return entries


def _safe_relpath(relpath: str) -> bool:
    """A manifest path must name a place inside the bag: no absolute path, no `..`, no backslash."""
    return not (relpath.startswith("/") or "\\" in relpath or ".." in relpath.split("/"))


def _through_link(relpath: str, links: set[str]) -> bool:
    parts = relpath.split("/")
    return any("/".join(parts[: i + 1]) in links for i in range(len(parts)))


# -- reading once, hashing with every algorithm ---------------------------------------------------------


class _Consumer(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class GzipMembers:
    """Checks, block by block, that a byte stream is a run of complete gzip members (a `.warc.gz`)."""

    def __init__(self) -> None:
        self.members = 0
        self.problem: str | None = None
        self._member: Any = None  # the decompressor of the member being read

    def update(self, data: bytes | memoryview) -> None:
        while data and self.problem is None:
            if self._member is None:
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            member = self._member
            try:
                out = member.decompress(data, INFLATE)  # output bounded: a gzip bomb never fills memory
                while not member.eof and (member.unconsumed_tail or len(out) == INFLATE):  # input or output left
                    out = member.decompress(member.unconsumed_tail, INFLATE)
            except zlib.error as exc:
                self.problem = f"gzip member {self.members + 1} is damaged: {exc}"
                return
            data = b""  # zlib keeps copies of what it has not used: the caller's buffer is free again
            if member.eof:
                self.members += 1
                data, self._member = member.unused_data, None

    def result(self) -> str | None:
        """Why the stream is not complete gzip members (None when it is)."""
        if self.problem:
            return self.problem
        if self._member is not None:
            return f"gzip member {self.members + 1} is cut short"
        return None if self.members else "no gzip member"


def _open(path: str | Path) -> tuple[int, int]:
    """A descriptor of a regular file and its size. A symbolic link or a FIFO put in a file's place after
    the bag was walked is refused, never followed or waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def feed(path: str | Path, consumers: Sequence[_Consumer], fanout: bool = True) -> int:
    """Read a file once into every consumer; the bytes read. With `fanout`, a large file gives each consumer
    a thread of its own."""
    fd, size = _open(path)
    try:
        if fanout and len(consumers) > 1 and size >= FANOUT_MIN:
            return _feed_threads(fd, consumers)
        read, want = 0, min(size + 1, BLOCK)  # most files of a bag: one read to the end
        while data := os.read(fd, want):
            read += len(data)
            for consumer in consumers:
                consumer.update(data)
            if len(data) < want and read == size:  # a short read that reaches the size fstat gave: the end
                break
            want = BLOCK
        return read
    finally:
        os.close(fd)


def _feed_threads(fd: int, consumers: Sequence[_Consumer]) -> int:
    """This thread reads into a ring of `RING` buffers; each consumer updates from the same buffers in a
    thread of its own, and a buffer is read into again only once every consumer is done with it."""
    ring = [memoryview(mmap.mmap(-1, BLOCK)) for _ in range(RING)]  # anonymous maps: page-aligned
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(RING):
        free.put(index)
    users = [0] * RING  # consumers not yet done with each buffer
    lock = threading.Lock()
    inboxes: list[queue.SimpleQueue[tuple[int, memoryview] | None]] = [queue.SimpleQueue() for _ in consumers]
    errors: list[BaseException] = []

    def drain(consumer: _Consumer, inbox: queue.SimpleQueue[tuple[int, memoryview] | None]) -> None:
        while (item := inbox.get()) is not None:
            index, view = item
            if not errors:  # after a failure, keep freeing buffers so the reader never waits forever
                try:
                    consumer.update(view)
                except BaseException as exc:  # raised again in the reading thread
                    errors.append(exc)
            with lock:
                users[index] -= 1
                if not users[index]:
                    free.put(index)

    threads = [threading.Thread(target=drain, args=pair, daemon=True) for pair in zip(consumers, inboxes, strict=True)]
    for thread in threads:
        thread.start()
    read = 0
    try:
        while n := os.readv(fd, [ring[index := free.get()]]):
            read += n
            users[index] = len(inboxes)  # a free buffer: no consumer holds it
            view = ring[index] if n == BLOCK else ring[index][:n]
            for inbox in inboxes:
                inbox.put((index, view))
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return read


def hash_file(path: Path, algorithms: Iterable[str], fanout: bool = True) -> tuple[dict[str, str], int]:
    """Every digest of a file from one read (hex), and its size."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    size = feed(path, list(hashers.values()), fanout)
    return {a: h.hexdigest() for a, h in hashers.items()}, size


def warc_members_complete(path: Path) -> str | None:
    """Why a `.warc.gz` is not a run of complete gzip members (None when it is)."""
    members = GzipMembers()
    feed(path, [members])
    return members.result()


# -- local bags -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One file to read: its place in the manifest order, expected digests, the kind a mismatch is."""

    index: int
    relpath: str
    expected: dict[str, str]
    kind: str
    size: int


@dataclass
class _Plan:
    bag: Path
    result: BagAudit
    listed: dict[str, dict[str, str]]
    work: list[_Item]
    provenance: list[Failure] = field(default_factory=list)  # checked while the pool hashes, reported after


def _walk(bag: Path) -> tuple[dict[str, int], set[str], list[str]]:
    """Regular files reached without following links (relpath -> size), the symlinks, and anything else
    (FIFOs, devices, sockets): neither of the last two is ever opened."""
    sizes: dict[str, int] = {}
    links: set[str] = set()
    special: list[str] = []
    stack = [(str(bag), "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    links.add(rel)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    sizes[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    special.append(rel)
    return sizes, links, special


def _plan(bag: Path) -> _Plan:
    """Everything an audit finds without reading payload: presence, completeness, hostile paths, Oxum."""
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

    sizes, links, special = _walk(bag)
    for rel in sorted(links):
        fail(rel, "hostile", "symbolic link inside the bag")
    for rel in sorted(special):
        fail(rel, "hostile", "not a regular file; not read")

    work: list[_Item] = []
    for relpath, digests in {**tag_listed, **listed}.items():
        is_tag = relpath in tag_listed and relpath not in listed
        if not _safe_relpath(relpath) or (links and _through_link(relpath, links)):
            fail(relpath, "hostile", "manifest names a path outside the bag; not read")
            continue
        if relpath not in sizes:
            fail(relpath, "missing")
            continue
        kind = "tag-manifest-mismatch" if is_tag else "digest-mismatch"
        work.append(_Item(len(work), relpath, digests, kind, sizes[relpath]))
    for relpath in sorted(sizes):
        if relpath.startswith("data/") and relpath not in listed:
            fail(relpath, "unexpected", "in data/ but in no payload manifest")
        elif tags and relpath not in tag_listed and not relpath.startswith(("data/", "tagmanifest-")):
            fail(relpath, "unexpected", "tag file in no tag manifest")  # tag manifests never list themselves

    oxum = _bag_info(bag).get("Payload-Oxum")
    if oxum:
        payload_sizes = [size for rel, size in sizes.items() if rel.startswith("data/")]
        found = f"{sum(payload_sizes)}.{len(payload_sizes)}"
        if oxum != found:
            fail("bag-info.txt", "oxum-mismatch", f"Payload-Oxum {oxum}, found {found}")
    result.files = len(sizes)
    result.bytes = sum(sizes.values())
    return _Plan(bag, result, listed, work)


def _batches(work: list[_Item]) -> list[list[_Item]]:
    """Largest first (the long pole starts at once); a large file alone, small ones together."""
    batches: list[list[_Item]] = []
    small: list[_Item] = []
    small_bytes = 0
    for item in sorted(work, key=lambda i: i.size, reverse=True):
        if item.size >= FANOUT_MIN:
            batches.append([item])
            continue
        small.append(item)
        small_bytes += item.size
        if len(small) >= BATCH_FILES or small_bytes >= BATCH_BYTES:
            batches.append(small)
            small, small_bytes = [], 0
    if small:
        batches.append(small)
    return batches


_pool_thread = threading.local()


def _make_way() -> None:
    """Lower this pool thread's priority (on Linux, where it is per thread) before it reads small files: a
    large file's digest threads, the audit's critical path, are then not preempted by it, and the other
    core's spare time is enough for the small files. A thread may not raise its priority again, so this
    is done once (a large file it reads later hashes at its priority); the pool's threads end with the
    audit."""
    if sys.platform == "linux" and not getattr(_pool_thread, "lowered", False):
        _pool_thread.lowered = True
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + 10))


def _check(bag: Path, batch: list[_Item]) -> list[tuple[int, str, str, str]]:
    """Read each file of a batch once: its digests, and for a `.warc.gz` its gzip members."""
    problems: list[tuple[int, str, str, str]] = []
    if batch[0].size < FANOUT_MIN:
        _make_way()
    root = os.fspath(bag)
    for item in batch:
        hashers = {a: hashlib.new(a) for a in item.expected}
        consumers: list[_Consumer] = list(hashers.values())
        members = GzipMembers() if item.relpath.endswith(".warc.gz") else None
        if members is not None:
            consumers.append(members)
        try:
            feed(os.path.join(root, item.relpath), consumers)
        except OSError as exc:
            problems.append((item.index, item.relpath, "missing", f"cannot be read: {exc.strerror or exc}"))
            continue
        for algorithm, digest in item.expected.items():
            found = hashers[algorithm].hexdigest()
            if found != digest:
                problems.append((item.index, item.relpath, item.kind, f"{algorithm} {found}, manifest {digest}"))
        if members is not None and (reason := members.result()):
            problems.append((item.index, item.relpath, "warc-truncated", reason))
    return problems


def _finish(plan: _Plan, futures: list[Future[list[tuple[int, str, str, str]]]]) -> BagAudit:
    result = plan.result
    problems = sorted(problem for future in futures for problem in future.result())
    for _, relpath, kind, detail in problems:
        result.failures.append(Failure(result.bag, relpath, kind, detail))
    result.failures.extend(plan.provenance)
    return result


def audit_bags(bags: Iterable[Path], jobs: int = 2, full: bool = True) -> Iterator[BagAudit]:
    """Audit local bags, in order, with one pool of `jobs` threads shared by all of them, so the next bags'
    files are read while one bag's last large file is still hashing; at most `2 * jobs + 1` bags are
    planned ahead, so memory does not grow with the number of bags."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        in_flight: deque[tuple[_Plan, list[Future[list[tuple[int, str, str, str]]]]]] = deque()
        for bag in bags:
            plan = _plan(bag)
            futures = [pool.submit(_check, bag, batch) for batch in _batches(plan.work)] if full else []

            def fail(file: str, kind: str, detail: str = "", plan: _Plan = plan) -> None:
                plan.provenance.append(Failure(plan.result.bag, file, kind, detail))

            _check_provenance(bag, plan.listed, plan.result, fail)  # while the pool hashes this bag's files
            in_flight.append((plan, futures))
            if len(in_flight) > 2 * max(1, jobs):
                yield _finish(*in_flight.popleft())
        while in_flight:
            yield _finish(*in_flight.popleft())


def audit_bag(bag: Path, jobs: int = 2, full: bool = True) -> BagAudit:
    """Everything wrong with one local bag, each failure naming its file and kind."""
    (audited,) = audit_bags([bag], jobs=jobs, full=full)
    return audited


def _check_provenance(bag: Path, listed: dict[str, dict[str, str]], result: BagAudit, fail: Any) -> None:
    path = bag / "data" / "provenance.json"
    if not path.is_file() or path.is_symlink():
        result.notes.append("no provenance.json (a bag from another tool?)")
        return

    def size_of(inside: str) -> int | None:
        try:
            found = os.lstat(bag / inside)
        except OSError:
            return None  # reported as missing already
        return found.st_size if stat.S_ISREG(found.st_mode) else None

    for problem in provenance_problems(path.read_bytes(), listed, size_of):
        fail(*problem)


def provenance_problems(
    raw: bytes, listed: dict[str, dict[str, str]], size_of: Callable[[str], int | None]
) -> list[tuple[str, str, str]]:
    """What a provenance manifest says that the bag contradicts, as (file, kind, detail): its schema, files
    it names that no manifest lists or lists with another sha256, and files whose size (`size_of`, None
    when unknown) differs from the size it records (manifests carry no sizes)."""
    from pipeline.manifest import ManifestError, validate

    try:
        manifest = json.loads(raw.decode("utf-8"))
        validate(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError, ManifestError) as exc:
        return [("data/provenance.json", "provenance", str(exc).splitlines()[0])]
    problems: list[tuple[str, str, str]] = []
    sizes: dict[str, int] = {}
    document = manifest.get("document") or {}
    if isinstance(document.get("path_in_bag"), str) and isinstance(document.get("size"), int):
        sizes[document["path_in_bag"]] = document["size"]
    for link in manifest.get("links", []):
        for capture in link.get("captures", []):
            for file in capture.get("files", []):
                inside = file.get("path")
                if not inside:
                    continue
                if isinstance(file.get("size"), int):
                    sizes[inside] = file["size"]
                if inside not in listed:
                    problems.append((inside, "provenance", "named by provenance.json but in no manifest"))
                elif listed[inside].get("sha256", file["sha256"]) != file["sha256"]:
                    problems.append((inside, "provenance", "provenance.json and the manifest disagree on its sha256"))
    for inside, size in sorted(sizes.items()):
        if inside not in listed or not _safe_relpath(inside):
            continue
        found = size_of(inside)
        if found is not None and found != size:
            problems.append((inside, "size-mismatch", f"{found} bytes, provenance.json says {size}"))
    return problems


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
        "versions": audit.versions,
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


S3_JOBS = 8  # objects checked at once in object storage: the wait is the network's, not the CPU's


PROVENANCE = "data/provenance.json"


def _digest_failures(
    bag: str,
    relpath: str,
    kind: str,
    hashers: list[tuple[str, Any]],
    digests: dict[str, str],
    checked: str,
    version: str | None,
) -> list[Failure]:
    """One failure per digest of an object that disagrees with its manifest."""
    return [
        Failure(
            bag,
            relpath,
            kind,
            f"object hashes to {algorithm} {hasher.hexdigest()}, manifest {digests[algorithm]}{checked}",
            version,
        )
        for algorithm, hasher in hashers
        if hasher.hexdigest() != digests[algorithm]
    ]


def audit_s3_bag(store: Any, bag: str, full: bool = False, jobs: int = S3_JOBS) -> BagAudit:
    """Audit one bag in object storage, `jobs` objects at a time. Fast: presence, sizes against
    Payload-Oxum, and each object's stored checksum (or its sha256 metadata) against the manifest, with no
    payload byte downloaded. Full: also every object streamed once through the digests of every manifest
    (sha256 and sha512), nothing written to disk, and the provenance manifest checked as for a local bag
    (schema, files it names, each file's size). In a versioned bucket the version of each object checked
    is recorded (`versions`, and on each failure), and a full audit reads exactly the version it checked."""
    import botocore.exceptions

    from pipeline.store.s3 import _message, stored_sha256

    result = BagAudit(bag=bag, path=f"{store.uri}{bag}/")

    def fail(file: str, kind: str, detail: str = "") -> None:
        result.failures.append(Failure(bag, file, kind, detail))

    listed = {entry["Key"].removeprefix(store.key(f"{bag}/")): entry for entry in store.list_keys(f"{bag}/")}
    if "bagit.txt" not in listed:
        fail("bagit.txt", "incomplete-upload", "no bagit.txt: the bag was never completely stored")

    fetched: dict[str, tuple[str | None, bytes]] = {}  # tag files read for their text: (version, bytes)

    def text(relpath: str) -> str:
        if relpath not in listed:
            return ""
        if relpath not in fetched:
            chunks: list[bytes] = []
            try:
                version = store.download(store.key(f"{bag}/{relpath}"), chunks.append)  # tag files only: small
            except botocore.exceptions.FlexibleChecksumError as exc:
                fail(relpath, "digest-mismatch", f"the bytes served differ from the store's own checksum: {exc}")
                version = "unusable"  # never hashed from here: the full audit reads it again
            fetched[relpath] = (version, b"".join(chunks))
        return fetched[relpath][1].decode("utf-8", errors="replace")

    # the fast audit needs only the sha256 manifests (the stored checksums are sha256); the full one all
    algorithms = []
    for name in sorted(listed):
        algorithm = name.removeprefix("manifest-").removesuffix(".txt")
        known = name == f"manifest-{algorithm}.txt" and algorithm in hashlib.algorithms_guaranteed
        if known and (full or algorithm == "sha256"):
            algorithms.append(algorithm)
    expected: dict[str, dict[str, str]] = {}
    for algorithm in algorithms:
        for relpath, digest in parse_manifest(text(f"manifest-{algorithm}.txt")).items():
            expected.setdefault(relpath, {})[algorithm] = digest
    if "sha256" not in algorithms:
        fail("manifest-sha256.txt", "missing", "no sha256 payload manifest to audit against")
    tag_expected: dict[str, dict[str, str]] = {}
    for algorithm in [a for a in ("sha256", "sha512") if full or a == "sha256"]:
        for relpath, digest in parse_manifest(text(f"tagmanifest-{algorithm}.txt")).items():
            if relpath not in expected:
                tag_expected.setdefault(relpath, {})[algorithm] = digest

    bag_info = text("bag-info.txt")  # read before the objects are: a full audit hashes these bytes, once
    work: list[tuple[str, dict[str, str], str]] = []
    for relpath, digests, kind in [
        *((r, d, "digest-mismatch") for r, d in expected.items()),
        *((r, d, "tag-manifest-mismatch") for r, d in tag_expected.items()),
    ]:
        if not _safe_relpath(relpath):
            fail(relpath, "hostile", "manifest names a path outside the bag; not read")
        elif relpath not in listed:
            fail(relpath, "missing")
        else:
            work.append((relpath, digests, kind))

    provenance_blocks: list[bytes] = []

    def check(item: tuple[str, dict[str, str], str]) -> tuple[str | None, list[Failure]]:
        relpath, digests, kind = item
        key = store.key(f"{bag}/{relpath}")
        try:
            head = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            return None, [Failure(bag, relpath, "missing", _message(exc))]
        version = head.get("VersionId")
        checked = f" (version {version})" if version else ""
        held = stored_sha256(head)
        if "sha256" in digests and held != digests["sha256"]:
            said = f"stored object says sha256 {held}" if held else "stored object carries no sha256 at all"
            return version, [Failure(bag, relpath, kind, f"{said}, manifest {digests['sha256']}{checked}", version)]
        if not full:
            return version, []
        hashers = [(a, hashlib.new(a)) for a in digests]
        keep = provenance_blocks if relpath == PROVENANCE else None  # read once: hashed, then checked

        def update(block: bytes) -> None:
            for _, hasher in hashers:
                hasher.update(block)
            if keep is not None:
                keep.append(block)

        problems = []
        read_before = fetched.get(relpath)
        if read_before is not None and read_before[0] == version:  # a tag file already read for its text
            update(read_before[1])
            return version, _digest_failures(bag, relpath, kind, hashers, digests, checked, version)
        try:
            store.download(key, update, version_id=version)  # the very version whose checksum was read
        except botocore.exceptions.ClientError as exc:
            return version, [Failure(bag, relpath, "missing", f"{_message(exc)}{checked}", version)]
        except botocore.exceptions.FlexibleChecksumError as exc:  # every byte was hashed before this is known
            detail = f"the bytes served differ from the store's own checksum: {exc}{checked}"
            problems.append(Failure(bag, relpath, "digest-mismatch", detail, version))
        return version, problems + _digest_failures(bag, relpath, kind, hashers, digests, checked, version)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for (relpath, _, _), (version, problems) in zip(work, pool.map(check, work), strict=True):
            if version and version != "null":
                result.versions[relpath] = version
            result.failures.extend(problems)
    if result.versions:
        result.notes.append(f"versioned bucket: the version checked of each of {len(result.versions)} objects is kept")
    if full and provenance_blocks:  # its sizes per file: a fast audit downloads no payload byte, so only here

        def size_of(inside: str) -> int | None:
            return listed[inside]["Size"] if inside in listed else None

        for relpath, kind, detail in provenance_problems(b"".join(provenance_blocks), expected, size_of):
            fail(relpath, kind, detail)
    elif full and PROVENANCE not in listed:
        result.notes.append("no provenance.json (a bag from another tool?)")
    if expected:  # with no manifest (an upload cut short), every object would look unexpected: say nothing
        for relpath in listed:
            if relpath.startswith("data/") and relpath not in expected:
                fail(relpath, "unexpected", "in data/ but in no payload manifest")
    oxum = None
    for line in bag_info.splitlines():
        if line.startswith("Payload-Oxum:"):
            oxum = line.split(":", 1)[1].strip()
    data = [entry for relpath, entry in listed.items() if relpath.startswith("data/")]
    if oxum and oxum != f"{sum(e['Size'] for e in data)}.{len(data)}":
        fail("bag-info.txt", "oxum-mismatch", f"Payload-Oxum {oxum}, found {sum(e['Size'] for e in data)}.{len(data)}")
    result.files = len(listed)
    result.bytes = sum(e["Size"] for e in listed.values())
    return result
