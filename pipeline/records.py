"""Records that cross stage boundaries.

Plain frozen dataclasses, serialisable to JSON with :func:`to_json`, so any stage can be run alone on
another stage's output (and the `--format jsonl` contract is simply these records).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Link:
    """One reference to a resource, exactly as a document wrote it.

    `href` is the text as written (for a wiki link, the page title). `url` is that href made absolute
    (against the base URL or the wiki), or None when it could not be (see `flags`).
    """

    source: str
    href: str
    url: str | None
    text: str = ""
    line: int | None = None
    column: int | None = None
    key_path: str | None = None
    syntax: str = "inline"
    flags: tuple[str, ...] = ()

    @property
    def location(self) -> str:
        """`line:column` in the document body, or the front-matter key path."""
        if self.key_path is not None:
            return self.key_path
        if self.line is None:
            return "?"
        return f"{self.line}:{self.column if self.column is not None else 1}"


@dataclass(frozen=True)
class Hop:
    """One unwrapping step: the rule that fired and the URL it produced."""

    rule: str
    url: str


@dataclass(frozen=True)
class Target:
    """A resource to preserve: one per canonical URL, with every Link that points to it."""

    url: str
    canonical: str
    kind: str
    hops: tuple[Hop, ...] = ()
    links: tuple[Link, ...] = ()
    flags: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fetchable(self) -> bool:
        return "unresolved-relative" not in self.flags

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(link.source for link in self.links))


@dataclass(frozen=True)
class Rejected:
    """A link that is reported but never becomes a Target (javascript:, file:, mailto:, ...)."""

    link: Link
    reason: str


def to_json(record: Any) -> Any:
    """A JSON-ready structure of a record, including the derived `location`/`fetchable` fields."""
    if record is None or isinstance(record, (str, int, float)):  # the leaves, most calls: first
        return record
    if isinstance(record, Link):  # by hand: dataclasses.asdict deep-copies, 3x slower on 100,000 links
        return {
            "source": record.source,
            "href": record.href,
            "url": record.url,
            "text": record.text,
            "line": record.line,
            "column": record.column,
            "key_path": record.key_path,
            "syntax": record.syntax,
            "flags": list(record.flags),
            "location": record.location,
        }
    if isinstance(record, Target):
        return {
            "url": record.url,
            "canonical": record.canonical,
            "kind": record.kind,
            "fetchable": record.fetchable,
            "flags": list(record.flags),
            "hops": [{"rule": h.rule, "url": h.url} for h in record.hops],
            "details": record.details,
            "links": [to_json(link) for link in record.links],
        }
    if isinstance(record, Rejected):
        return {"link": to_json(record.link), "reason": record.reason}
    if isinstance(record, Capture):  # one per ledger row: by hand, as for Link (same keys, same order)
        return _capture_json(record)
    if isinstance(record, (WarcRecord, CapturedFile)):  # every field a str, int or None
        return dict(vars(record))
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        # field by field, shallow: dataclasses.asdict deep-copies every value and was a hot spot
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, dict):
        return {k: to_json(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    return record


def link_from_json(data: dict[str, Any]) -> Link:
    return Link(
        source=data["source"],
        href=data["href"],
        url=data.get("url"),
        text=data.get("text", ""),
        line=data.get("line"),
        column=data.get("column"),
        key_path=data.get("key_path"),
        syntax=data.get("syntax", "inline"),
        flags=tuple(data.get("flags", ())),
    )


def target_from_json(data: dict[str, Any]) -> Target:
    """Read back a Target from a `preserve links --format jsonl` line."""
    return Target(
        url=data["url"],
        canonical=data["canonical"],
        kind=data["kind"],
        hops=tuple(Hop(h["rule"], h["url"]) for h in data.get("hops", ())),
        links=tuple(link_from_json(link) for link in data.get("links", ())),
        flags=tuple(data.get("flags", ())),
        details=dict(data.get("details", {})),
    )


@dataclass(frozen=True)
class CapturedFile:
    """A file a capture produced, with digests computed while its bytes were written."""

    path: str  # relative to the capture output directory (later: to the bag's data/)
    size: int
    sha256: str
    sha512: str
    media_type: str = "application/octet-stream"
    role: str = "warc"  # warc | media | info-json | thumbnail | subtitle | other


@dataclass(frozen=True)
class WarcRecord:
    """Where one WARC record of a capture is: enough to cite it or read it back."""

    file: str  # relative path of the WARC file
    record_id: str
    record_type: str
    target_uri: str
    offset: int
    length: int
    http_status: int | None = None
    payload_sha256: str | None = None
    payload_sha512: str | None = None
    payload_size: int | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Capture:
    """The outcome of capturing one Target: `ok`, `failed` (with `error`), or `skipped` (already held)."""

    url: str
    canonical: str
    kind: str
    fetcher: str  # http | media
    outcome: str
    started: str  # UTC, ISO 8601
    ended: str
    http_status: int | None = None
    final_url: str | None = None
    title: str | None = None
    files: tuple[CapturedFile, ...] = ()
    warc_records: tuple[WarcRecord, ...] = ()
    tools: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    attempts: int = 1
    details: dict[str, Any] = field(default_factory=dict)


def _capture_json(capture: Capture) -> dict[str, Any]:
    return {
        "url": capture.url,
        "canonical": capture.canonical,
        "kind": capture.kind,
        "fetcher": capture.fetcher,
        "outcome": capture.outcome,
        "started": capture.started,
        "ended": capture.ended,
        "http_status": capture.http_status,
        "final_url": capture.final_url,
        "title": capture.title,
        "files": [dict(vars(f)) for f in capture.files],
        "warc_records": [dict(vars(r)) for r in capture.warc_records],
        "tools": to_json(capture.tools),
        "error": capture.error,
        "retryable": capture.retryable,
        "attempts": capture.attempts,
        "details": to_json(capture.details),
    }


def capture_from_json(data: dict[str, Any]) -> Capture:
    return Capture(
        **{
            **data,
            "files": tuple(CapturedFile(**f) for f in data.get("files", ())),
            "warc_records": tuple(WarcRecord(**r) for r in data.get("warc_records", ())),
        }
    )


def target_key(canonical: str) -> str:
    """A short stable id for a target, safe in file names: the first 16 hex digits of sha256(canonical)."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
