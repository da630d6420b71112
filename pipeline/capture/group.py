"""Small targets of one document share a WARC file: one create, fsync and rename for many captures.

A file per target costs a create, a warcinfo, an fsync and a rename each; for small pages those cost
more than the fetch (BENCHMARKS.md, Capture). A group file holds the records of up to `limit` targets
that share their first source document, so a bag, which takes whole files, still takes only files of its
own document's targets. Each target keeps its own warcinfo record (with `isPartOf` naming it), so every
record's `WARC-Warcinfo-ID` resolves within the file, and a capture cites its records by offset as always.

The unit of crash safety is the group: it is written to `<name>.part`, fsynced and renamed before any of
its targets' ledger rows are committed. A crash loses at most the open groups' targets; the ledger's sweep
removes the `.part` and the next run fetches those targets again.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

from pipeline.capture.warc import WarcFile
from pipeline.faults import disk_full
from pipeline.records import Capture, CapturedFile

Member = tuple[int, list[Capture]]


class WarcGroup:
    """One group WARC file being filled: `add` appends a target's in-memory records, `close` publishes it."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.name = name
        self.path = out_dir / name
        self.part_path = self.path.with_name(self.path.name + ".part")
        if self.path.exists():
            raise FileExistsError(f"refusing to overwrite finished WARC {self.path}")
        self.opened = time.monotonic()
        self.members: list[Member] = []
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512()
        self._fd = os.open(self.part_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def add(self, index: int, captures: list[Capture], warc: WarcFile, own: str) -> None:
        """Append the target's records (`warc`, named `own` in them, must still be in memory) and cite them
        in this file instead."""
        data, shift = warc.take_segment(self.path.name)
        disk_full("warc-group")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._sha256.update(data)
        self._sha512.update(data)
        moved = self.size + shift
        self.size += len(data)
        self.members.append((index, [_moved(c, own, self.name, moved) for c in captures]))

    def close(self) -> list[Member]:
        """fsync, rename, and hand back the members, each citing the finished file (the directory's fsync
        is the caller's, once for everything renamed in a batch)."""
        try:
            disk_full("warc-close")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if self.path.exists():
                raise FileExistsError(f"{self.path} appeared while writing")
            os.replace(self.part_path, self.path)
        except BaseException:
            self.abort()
            raise
        file = CapturedFile(
            self.name, self.size, self._sha256.hexdigest(), self._sha512.hexdigest(), "application/warc", "warc"
        )
        done = []
        for index, captures in self.members:
            first = captures[0]
            done.append((index, [replace(first, files=(file, *first.files)), *captures[1:]]))
        return done

    def abort(self) -> None:
        """Drop the unfinished file; its members were never committed, so the next run captures them."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part_path.unlink(missing_ok=True)


def _moved(capture: Capture, own: str, name: str, by: int) -> Capture:
    """The capture citing its records where they now are: in file `name`, `by` bytes further on."""
    if not any(r.file == own for r in capture.warc_records):
        return capture
    records = tuple(replace(r, file=name, offset=r.offset + by) if r.file == own else r for r in capture.warc_records)
    return replace(capture, warc_records=records)
