"""A batch run from a config.

Until capture is wired together with the package and store stages, a run extracts and resolves the
links of every document in the config and writes them to `runs/<run id>/targets.jsonl`, and says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import LoadedConfig
from pipeline.extract import DocumentError, ExtractResult, extract_file
from pipeline.records import Link, Rejected, Target
from pipeline.resolve import resolve

NOT_YET = (
    "the batch run does not capture, package or store yet: this run only extracts and resolves links "
    "(nothing is fetched or archived; `preserve capture URL...` captures one-off URLs)"
)


@dataclass
class LinkListing:
    """What `preserve links` and the batch run report: targets, rejected links and problems."""

    targets: list[Target] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    results: list[ExtractResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def list_links(paths: Sequence[Path], loaded: LoadedConfig, base_url: str | None = None) -> LinkListing:
    """Extract and resolve the links of every document; a bad document is an error, the rest go on."""
    listing = LinkListing()
    links = []
    for path in paths:
        try:
            result = extract_file(path, loaded.settings_for(path, base_url), source=display_path(path))
        except DocumentError as exc:
            listing.errors.append(str(exc))
            continue
        listing.results.append(result)
        listing.errors.extend(result.errors)
        listing.warnings.extend(result.warnings)
        links.extend(result.links)
    resolution = resolve(links)
    listing.targets = resolution.targets
    listing.rejected = resolution.rejected
    unresolved: dict[str, list[Link]] = {}
    for target in resolution.targets:
        if not target.fetchable:
            for link in target.links:
                unresolved.setdefault(link.source, []).append(link)
    for source, found in unresolved.items():
        first = found[0]
        listing.warnings.append(
            f"{source}: {len(found)} relative link{'s' if len(found) > 1 else ''} but no base URL "
            f"(first at {first.location}: {first.href!r}); kept as unresolved-relative: set base_url for it"
        )
    for item in resolution.rejected:
        link = item.link
        listing.warnings.append(f"{link.source}:{link.location}: {link.href[:200]!r} is not a target: {item.reason}")
    return listing


def display_path(path: Path) -> str:
    """A document's name as people refer to it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
