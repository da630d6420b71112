"""Provenance manifests: one JSON document per bag tying every Link to its Target and Capture.

Written into the bag as `data/provenance.json` and copied to `archive_manifests/<bag name>.json`.
Validated against the JSON Schema published in `configs/provenance.schema.json` before it is written.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.records import Capture, Rejected, Target, to_json

SCHEMA_ID = "https://preserve-pipeline.example/schemas/provenance-v1.json"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "configs" / "provenance.schema.json"


class ManifestError(Exception):
    """A manifest that does not match its schema: a bug, never written."""


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(manifest: dict[str, Any]) -> None:
    """Raise ManifestError naming the first problem, with its JSON path."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise ManifestError(f"provenance manifest invalid at {where}: {first.message}")


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """Versions of everything that touched the bytes (ffmpeg's as yt-dlp would run it)."""
    import bagit
    import requests
    import urllib3
    import warcio
    import yt_dlp

    from pipeline import __version__

    versions = {
        "preserve": __version__,
        "python": platform.python_version(),
        "requests": requests.__version__,
        "urllib3": urllib3.__version__,
        "warcio": getattr(warcio, "__version__", "unknown"),
        "yt-dlp": yt_dlp.version.__version__,
        "bagit": getattr(bagit, "VERSION", "unknown"),
    }
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=10, check=False)
        versions["ffmpeg"] = out.stdout.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" ")[0] or "unknown"
    except (OSError, subprocess.SubprocessError):
        versions["ffmpeg"] = "absent"
    return versions


def provenance(
    *,
    bag: str | None,
    run_id: str,
    config_digest: str,
    operator: dict[str, str],
    document: dict[str, Any],
    targets: Sequence[Target],
    captures: Sequence[Capture],
    paths_in_bag: dict[str, str],
    held_in: dict[str, str],
    rejected: Sequence[Rejected] = (),
    reason: str | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """The manifest of one document's bag (or of a document for which no bag was made, with `reason`).

    `paths_in_bag` maps a capture file's path to its path in this bag; `held_in` maps it to the bag that
    already holds it (captures skipped as held, or files packaged in another document's bag).
    """
    by_target: dict[str, list[Capture]] = {}
    for capture in captures:
        by_target.setdefault(capture.canonical, []).append(capture)
    source = document.get("source")
    links = []
    for target in targets:
        target_json = {k: v for k, v in to_json(target).items() if k != "links"}
        entries = [_capture_entry(c, paths_in_bag, held_in) for c in by_target.get(target.canonical, [])]
        for link in target.links:
            if source is not None and link.source != source:
                continue
            links.append(
                {
                    "location": link.location,
                    "line": link.line,
                    "column": link.column,
                    "key_path": link.key_path,
                    "syntax": link.syntax,
                    "text": link.text,
                    "href": link.href,
                    "url": link.url,
                    "target": target_json,
                    "captures": entries,
                }
            )
    manifest = {
        "$schema": SCHEMA_ID,
        "bag": bag,
        "reason": reason,
        "run_id": run_id,
        "created": (created or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "config_digest": config_digest,
        "operator": dict(operator),
        "tools": tool_versions(),
        "host": {"system": platform.system(), "python_executable": os.path.basename(sys.executable)},
        "document": document,
        "links": links,
        "rejected": [
            {"location": r.link.location, "href": r.link.href, "reason": r.reason}
            for r in rejected
            if source is None or r.link.source == source
        ],
    }
    validate(manifest)
    return manifest


def _capture_entry(capture: Capture, paths_in_bag: dict[str, str], held_in: dict[str, str]) -> dict[str, Any]:
    files = []
    for file in capture.files:
        files.append(
            {
                "path": paths_in_bag.get(file.path),
                "captured_as": file.path,
                "held_in_bag": held_in.get(file.path),
                "size": file.size,
                "sha256": file.sha256,
                "sha512": file.sha512,
                "media_type": file.media_type,
                "role": file.role,
            }
        )
    records = [
        {
            "file": paths_in_bag.get(r.file, r.file),
            "record_id": r.record_id,
            "type": r.record_type,
            "target_uri": r.target_uri,
            "offset": r.offset,
            "length": r.length,
            "http_status": r.http_status,
            "payload_sha256": r.payload_sha256,
        }
        for r in capture.warc_records
    ]
    return {
        "fetcher": capture.fetcher,
        "outcome": capture.outcome,
        "http_status": capture.http_status,
        "started": capture.started,
        "ended": capture.ended,
        "final_url": capture.final_url,
        "title": capture.title,
        "error": capture.error,
        "attempts": capture.attempts,
        "tools": capture.tools,
        "files": files,
        "warc_records": records,
    }


def write(manifest: dict[str, Any], path: Path) -> bytes:
    """Serialise (stable, UTF-8) and write atomically; returns the bytes written."""
    data = encode(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return data


def record_copies(path: Path, result: Any) -> None:
    """Add where a bag's copies went (URI, version id, ETag, checksum) to the local archive manifest.

    Only the local copy under archive_manifests/ gains this: the bag's own data/provenance.json was
    sealed by its manifests before any copy existed."""
    manifest = json.loads(path.read_text(encoding="utf-8"))
    copies = manifest.setdefault("copies", [])
    stamp = datetime.now(UTC).isoformat()
    for stored in [*result.objects, *result.manifest_copies]:
        copies.append(
            {
                "store": result.store,
                "path": stored.relpath,
                "uri": stored.uri,
                "sha256": stored.sha256,
                "version_id": stored.version_id,
                "etag": stored.etag,
                "checksum": stored.checksum,
                "already_stored": stored.skipped,
                "recorded": stamp,
            }
        )
    validate(manifest)
    write(manifest, path)


def encode(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
