"""A run's record on disk, so a later stage (or a later command) can pick up where a run left off.

    <run dir>/run.json         run id, time, config digest, operator fields, documents, capture dir, ledger
    <run dir>/targets.jsonl    Targets with every Link (the `preserve links --format jsonl` contract)
    <run dir>/captures.jsonl   Captures of the run, skipped ones included
    <run dir>/rejected.jsonl   links that are never targets, with the reason

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves a half-written
record under its real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.records import (
    Capture,
    Rejected,
    Target,
    capture_from_json,
    link_from_json,
    target_from_json,
    to_json,
)


@dataclass
class RunRecord:
    run_id: str
    created: str
    capture_dir: str
    ledger: str
    config_digest: str
    operator: dict[str, str] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)  # source, id, path, file_name, content


def write_jsonl(path: Path, items: Iterable[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(to_json(item), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_run(
    run_dir: Path,
    record: RunRecord,
    targets: Sequence[Target],
    captures: Sequence[Capture],
    rejected: Sequence[Rejected],
) -> None:
    write_jsonl(run_dir / "targets.jsonl", targets)
    write_jsonl(run_dir / "captures.jsonl", captures)
    write_jsonl(run_dir / "rejected.jsonl", rejected)
    write_jsonl(run_dir / "run.json", [record])  # last: its presence says the others are complete


def read_run(run_dir: Path) -> tuple[RunRecord, list[Target], list[Capture], list[Rejected]]:
    """Read a run directory; raises ValueError with a one-line message when it is not one."""
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise ValueError(f"{run_dir}: not a run directory (no run.json)")
    try:
        record = RunRecord(**json.loads(run_file.read_text(encoding="utf-8")))
        targets = [target_from_json(t) for t in _read_jsonl(run_dir / "targets.jsonl")]
        captures = [capture_from_json(c) for c in _read_jsonl(run_dir / "captures.jsonl")]
        rejected = [Rejected(link_from_json(r["link"]), r["reason"]) for r in _read_jsonl(run_dir / "rejected.jsonl")]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"{run_dir}: damaged run record: {exc}") from None
    return record, targets, captures, rejected
