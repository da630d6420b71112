"""Capture many targets: a bounded worker pool, WARC files made durable before the ledger names them.

Each target's captures are one unit. A worker writes them into a WARC of the target's own, held in memory
while it is small; the main thread appends small ones to a group file shared by targets of the same
document (`group.py`) and publishes it (fsync, rename) after `warc_group_targets` targets or
`warc_group_seconds`, and a target too large for memory gets its own file, fsynced and renamed by the
worker. Only then does the main thread commit the ledger rows. A run killed at any moment therefore
resumes cleanly: `Ledger.sweep` removes what no committed row names, and targets held already are skipped
(`recapture_after` decides when a held capture is too old).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from urllib.parse import urlsplit

from pipeline import __version__
from pipeline.capture.group import Member, WarcGroup
from pipeline.capture.guard import BlockedAddress, Resolver
from pipeline.capture.http import DISK_FULL, HttpFetcher, tool_versions
from pipeline.capture.warc import WarcFile, fsync_dir
from pipeline.config import CaptureSettings
from pipeline.faults import crashpoint
from pipeline.ledger import Ledger
from pipeline.records import Capture, CapturedFile, Target, target_key
from pipeline.resolve import EXTENSIONS

SOFTWARE = f"preserve-pipeline/{__version__}"
Progress = Callable[[Target, list[Capture]], None]
# what a worker hands back: the target's captures and, when they are still in memory, its WARC and its name
Unit = tuple[list[Capture], tuple[WarcFile, str] | None]


class Capturer:
    """Captures Targets into `out_dir` (`warc/`, `media/`), recording every attempt in the ledger."""

    def __init__(
        self,
        out_dir: Path,
        settings: CaptureSettings,
        ledger: Ledger,
        *,
        resolver: Resolver | None = None,
        allow_private: bool | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.settings = settings
        self.ledger = ledger
        (out_dir / "warc").mkdir(parents=True, exist_ok=True)
        self.http = HttpFetcher(settings, tmp_dir=out_dir / ".tmp", resolver=resolver, allow_private=allow_private)
        self.allow_private = self.http.policy.allow_private

    def wants_media(self, target: Target) -> bool:
        if not self.settings.media:
            return False
        if target.kind in ("video", "audio"):
            return True
        if target.kind == "page":
            from pipeline.capture.media import yt_dlp_claims

            return yt_dlp_claims(target.url)
        return False

    def media_check(self, url: str) -> str | None:
        """yt-dlp opens its own connections, outside the guarded session: check the target host first."""
        parts = urlsplit(url)
        try:
            self.http.policy.addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except BlockedAddress as exc:
            return str(exc)
        except Exception as exc:  # name resolution failed: yt-dlp would fail the same way
            return f"{url}: {exc}"
        return None

    def run(self, targets: Sequence[Target], progress: Progress | None = None) -> list[Capture]:
        """Capture every fetchable target; returns every Capture (ok, failed or skipped), in target order."""
        self.ledger.sweep(self.out_dir)
        _clear_dir(self.out_dir / ".tmp")
        results: dict[int, list[Capture]] = {}
        pending: dict[Future[Unit], int] = {}
        # finished futures arrive here: cheaper for the main thread than `wait(FIRST_COMPLETED)`, which
        # registers a waiter with every pending future on each call
        done_queue: SimpleQueue[Future[Unit]] = SimpleQueue()
        fetchable = [(i, t) for i, t in enumerate(targets) if t.fetchable]
        recapture = self.settings.recapture_seconds()
        # what the ledger held when the run started, plus what this run commits (its only writer): the ledger
        # is asked about a target only when it can hold something for it, not twice for every target
        held_keys = self.ledger.held_keys()
        groups = _Groups(self.out_dir, self.settings.warc_group_targets, self.settings.warc_group_seconds)
        disk_full: OSError | None = None

        def submit(pool: ThreadPoolExecutor, index: int, target: Target) -> None:
            # what is held is read here, on the main thread, so workers never wait on the ledger's lock
            held = {
                f: self.ledger.held(target.canonical, f, recapture) if (target.canonical, f) in held_keys else None
                for f in ("http", "media")
            }
            future = pool.submit(self._capture_unit, target, held, groups.enabled)
            pending[future] = index
            future.add_done_callback(done_queue.put)

        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="capture") as pool:
            queue = iter(fetchable)
            # bounded: never more than 2 x workers targets in flight, so memory stays flat on huge lists
            for index, target in _take(queue, 2 * self.settings.workers):
                submit(pool, index, target)
            while pending or groups.open:
                done = []
                if pending:
                    with contextlib.suppress(Empty):  # on a timeout an open group is due: published below
                        done.append(done_queue.get(timeout=groups.wait()))
                while not done_queue.empty():  # everything else that finished meanwhile, in the same batch
                    done.append(done_queue.get())
                finished: list[Member] = []
                lost: list[GroupLost] = []
                for future in done:
                    index = pending.pop(future)
                    try:
                        captures, in_memory = future.result()
                        if in_memory is not None:
                            finished += groups.add(_first_source(targets[index]), index, captures, *in_memory)
                        else:
                            finished.append((index, captures))
                    except GroupLost as exc:
                        lost.append(exc)
                    except OSError as exc:
                        if exc.errno not in DISK_FULL:
                            raise
                        # a full disk fails every target after it: stop taking new ones, finish what is in
                        # flight, then say so; the targets not attempted are captured by the next run
                        disk_full = disk_full or exc
                    except Exception as exc:  # a bug: the target failed, the run goes on
                        error = f"internal error: {type(exc).__name__}: {exc}"
                        finished.append((index, [_failed(targets[index], "http", error)]))
                published, unpublished = groups.close_due(everything=not pending)
                finished += published
                for group_lost in lost + unpublished:
                    error = group_lost.error
                    if isinstance(error, OSError) and error.errno in DISK_FULL:
                        disk_full = disk_full or error  # not recorded: the ledger is on that disk too
                        continue
                    reason = f"captured, but its WARC could not be written: {type(error).__name__}: {error}"
                    finished += [(i, [_failed(targets[i], "http", reason)]) for i in group_lost.indices]
                # everything that finished meanwhile is committed in one transaction: one disk sync for all,
                # after the directory holding the renamed WARC files is synced (once, not once per file)
                if finished:
                    fsync_dir(self.out_dir / "warc")
                recorded = [c for _, caps in finished for c in caps if c.outcome != "skipped"]
                self.ledger.record_many(recorded)
                held_keys.update((c.canonical, c.fetcher) for c in recorded if c.outcome == "ok")
                for index, captures in finished:
                    results[index] = captures
                    if progress is not None:
                        progress(targets[index], captures)
                if disk_full is None:
                    for next_index, next_target in _take(queue, len(done)):
                        submit(pool, next_index, next_target)
        if disk_full is not None:
            where = f" writing {disk_full.filename}" if disk_full.filename else ""
            raise OSError(disk_full.errno, f"{disk_full.strerror}{where}, while capturing") from None
        return [c for i in sorted(results) for c in results[i]]

    def _capture_unit(self, target: Target, held: dict[str, Capture | None], group: bool) -> Unit:
        """The target's captures; with `group`, a WARC that stayed small is handed back still in memory."""
        media = self.wants_media(target)
        # a media file is stored once: a direct link to one goes to yt-dlp only, not also into the WARC
        direct_media = media and target.kind in ("video", "audio") and _is_media_file(target.url)
        fetchers = [*([] if direct_media else ["http"]), *(["media"] if media else [])]
        skipped = []
        todo = []
        for fetcher in fetchers:
            previous = held.get(fetcher)
            if previous is None:
                todo.append(fetcher)
            else:
                details = {**previous.details, "held_since": previous.ended}
                skipped.append(replace(previous, outcome="skipped", details=details))
        if not todo:
            return skipped, None
        key = target_key(target.canonical)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        warc_name = f"warc/{key}-{stamp}.warc.gz"
        captures: list[Capture] = []
        info = {"operator-software": SOFTWARE, "isPartOf": target.canonical, "description": "preserve capture"}
        warc = WarcFile(self.out_dir / warc_name, software=SOFTWARE, info=info, sync_dir=False, lazy=group)
        try:
            self._fetch(target, held, todo, warc, warc_name, captures)
            if warc.in_memory:
                return captures + skipped, (warc, warc_name)
            warc.close()
        except BaseException:
            warc.abort()
            raise
        path = self.out_dir / warc_name
        if warc.sha256 and warc.sha512:
            sha256, sha512 = warc.sha256, warc.sha512
        else:  # a record was patched in place, so the running digest is void: one read of the file
            sha256, sha512 = _hash_file(path)
        warc_file = CapturedFile(warc_name, warc.size, sha256, sha512, "application/warc", "warc")
        first = captures[0]
        captures[0] = replace(first, files=(warc_file, *first.files))
        return captures + skipped, None

    def _fetch(
        self,
        target: Target,
        held: dict[str, Capture | None],
        todo: list[str],
        warc: WarcFile,
        warc_name: str,
        captures: list[Capture],
    ) -> None:
        if "http" in todo:
            captures.append(
                self.http.capture(
                    target.url, canonical=target.canonical, kind=target.kind, warc=warc, warc_name=warc_name
                )
            )
        page = captures[0] if captures else None
        embeds_media = page is not None and page.outcome == "ok" and page.details.get("embeds_media")
        if self.settings.media and embeds_media and "media" not in todo and held.get("media") is None:
            todo.append("media")
        refused = self.media_check(target.url) if "media" in todo else None
        if refused is not None:
            captures.append(_failed(target, "media", refused))
        elif "media" in todo:
            from pipeline.capture.media import MediaSettings, capture_media

            media_settings = MediaSettings(
                format=self.settings.media_format,
                max_filesize=self.settings.media_max_bytes,
                socket_timeout=self.settings.read_timeout,
                retries=self.settings.retries,
                media_in_warc=self.settings.media_in_warc,
            )
            captures.append(
                capture_media(
                    target.url,
                    canonical=target.canonical,
                    kind=target.kind,
                    out_dir=self.out_dir,
                    settings=media_settings,
                    warc=warc,
                    warc_name=warc_name,
                    page_url=target.url,
                    policy=self.http.policy,
                )
            )


class GroupLost(Exception):
    """A group file could not be written or published: its targets are not held (the next run retries)."""

    def __init__(self, error: OSError | Exception, indices: list[int]) -> None:
        super().__init__(str(error))
        self.error = error
        self.indices = indices


class _Groups:
    """The open group files, one per document; published by count, by age, or at the end of the run."""

    def __init__(self, out_dir: Path, limit: int, seconds: float) -> None:
        self.out_dir = out_dir
        self.limit = limit
        self.seconds = seconds
        self.enabled = limit > 1
        self.open: dict[str, WarcGroup] = {}
        self._numbers = itertools.count()
        self._stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")

    def add(self, source: str, index: int, captures: list[Capture], warc: WarcFile, own: str) -> list[Member]:
        """Append a target to its document's open group; the group's members once it is full."""
        group = self.open.get(source)
        try:
            if group is None:
                name = f"warc/group-{target_key(source)}-{self._stamp}-{next(self._numbers):05d}.warc.gz"
                group = self.open[source] = WarcGroup(self.out_dir, name)
            group.add(index, captures, warc, own)
        except Exception as exc:
            lost = [index, *(i for i, _ in group.members)] if group is not None else [index]
            self.open.pop(source, None)
            if group is not None:
                group.abort()
            raise GroupLost(exc, lost) from exc
        if len(group.members) < self.limit:
            return []
        return self._close(source)

    def wait(self) -> float | None:
        """How long the main thread may wait for a target before an open group is due (None: no limit)."""
        if not self.open:
            return None
        oldest = min(group.opened for group in self.open.values())
        return max(0.0, oldest + self.seconds - time.monotonic())

    def close_due(self, everything: bool) -> tuple[list[Member], list[GroupLost]]:
        """Publish every group open for `seconds` or longer (all of them with `everything`)."""
        now = time.monotonic()
        due = [s for s, g in self.open.items() if everything or now - g.opened >= self.seconds]
        members: list[Member] = []
        lost: list[GroupLost] = []
        for source in due:
            try:
                members += self._close(source)
            except GroupLost as exc:  # that group's targets are lost to this run; the others still publish
                lost.append(exc)
        return members, lost

    def _close(self, source: str) -> list[Member]:
        group = self.open.pop(source)
        try:
            members = group.close()
        except OSError as exc:
            raise GroupLost(exc, [i for i, _ in group.members]) from exc
        crashpoint("warc-group-published")  # renamed, its rows not yet committed: the next run sweeps it
        return members


def _first_source(target: Target) -> str:
    return target.links[0].source if target.links else ""


def _is_media_file(url: str) -> bool:
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    return "." in last and last.rsplit(".", 1)[-1].lower() in EXTENSIONS["video"] | EXTENSIONS["audio"]


def _take(iterator: Iterable[tuple[int, Target]], count: int) -> list[tuple[int, Target]]:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


def _failed(target: Target, fetcher: str, error: str) -> Capture:
    now = datetime.now(UTC).isoformat()
    return Capture(
        url=target.url,
        canonical=target.canonical,
        kind=target.kind,
        fetcher=fetcher,
        outcome="failed",
        started=now,
        ended=now,
        tools=tool_versions(),
        error=error,
    )


def _hash_file(path: Path) -> tuple[str, str]:
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha256.update(chunk)
            sha512.update(chunk)
    return sha256.hexdigest(), sha512.hexdigest()


def _clear_dir(path: Path) -> None:
    if path.is_dir():
        for entry in path.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)


def log_line(target: Target, captures: list[Capture]) -> None:  # pragma: no cover - used without a terminal
    for capture in captures:
        status = f" HTTP {capture.http_status}" if capture.http_status else ""
        print(f"{capture.outcome}: {capture.fetcher} {capture.url}{status}", file=sys.stderr, flush=True)
