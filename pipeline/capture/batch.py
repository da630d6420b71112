"""Capture many targets: a bounded worker pool, one WARC file per target, the ledger as the record.

Each target's captures are one unit: its WARC is written under a temporary name, fsynced and renamed by
the worker, and only then does the main thread commit the ledger rows. A run killed at any moment
therefore resumes cleanly: `Ledger.sweep` removes what no committed row names, and targets held
already are skipped (`recapture_after` decides when a held capture is too old).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from urllib.parse import urlsplit

from pipeline import __version__
from pipeline.capture.guard import BlockedAddress, Resolver
from pipeline.capture.http import DISK_FULL, HttpFetcher, tool_versions
from pipeline.capture.warc import WarcFile, fsync_dir
from pipeline.config import CaptureSettings
from pipeline.ledger import Ledger
from pipeline.records import Capture, CapturedFile, Target, target_key
from pipeline.resolve import EXTENSIONS

SOFTWARE = f"preserve-pipeline/{__version__}"
Progress = Callable[[Target, list[Capture]], None]


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
        pending: dict[Future[list[Capture]], int] = {}
        # finished futures arrive here: cheaper for the main thread than `wait(FIRST_COMPLETED)`, which
        # registers a waiter with every pending future on each call
        done_queue: SimpleQueue[Future[list[Capture]]] = SimpleQueue()
        fetchable = [(i, t) for i, t in enumerate(targets) if t.fetchable]
        recapture = self.settings.recapture_seconds()
        # what the ledger held when the run started, plus what this run commits (its only writer): the ledger
        # is asked about a target only when it can hold something for it, not twice for every target
        held_keys = self.ledger.held_keys()
        disk_full: OSError | None = None

        def submit(pool: ThreadPoolExecutor, index: int, target: Target) -> None:
            # what is held is read here, on the main thread, so workers never wait on the ledger's lock
            held = {
                f: self.ledger.held(target.canonical, f, recapture) if (target.canonical, f) in held_keys else None
                for f in ("http", "media")
            }
            future = pool.submit(self.capture_target, target, held)
            pending[future] = index
            future.add_done_callback(done_queue.put)

        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="capture") as pool:
            queue = iter(fetchable)
            # bounded: never more than 2 x workers targets in flight, so memory stays flat on huge lists
            for index, target in _take(queue, 2 * self.settings.workers):
                submit(pool, index, target)
            while pending:
                done = [done_queue.get()]
                while not done_queue.empty():  # everything else that finished meanwhile, in the same batch
                    done.append(done_queue.get())
                finished: list[tuple[int, list[Capture]]] = []
                for future in done:
                    index = pending.pop(future)
                    try:
                        captures = future.result()
                    except OSError as exc:
                        if exc.errno not in DISK_FULL:
                            raise
                        # a full disk fails every target after it: stop taking new ones, finish what is in
                        # flight, then say so; the targets not attempted are captured by the next run
                        disk_full = disk_full or exc
                        continue
                    except Exception as exc:  # a bug: the target failed, the run goes on
                        error = f"internal error: {type(exc).__name__}: {exc}"
                        captures = [_failed(targets[index], "http", error)]
                    finished.append((index, captures))
                # everything that finished meanwhile is committed in one transaction: one disk sync for all,
                # after the directory holding the renamed WARC files is synced (once, not once per file)
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

    def capture_target(self, target: Target, held: dict[str, Capture | None] | None = None) -> list[Capture]:
        """All captures one target needs (the page or file, and its media), into one WARC file.

        `held` maps each fetcher to the capture the ledger already holds (read by the caller); without it
        the ledger is asked here."""
        if held is None:
            recapture = self.settings.recapture_seconds()
            held = {f: self.ledger.held(target.canonical, f, recapture) for f in ("http", "media")}
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
            return skipped
        key = target_key(target.canonical)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        warc_name = f"warc/{key}-{stamp}.warc.gz"
        captures: list[Capture] = []
        info = {"operator-software": SOFTWARE, "isPartOf": target.canonical, "description": "preserve capture"}
        with WarcFile(self.out_dir / warc_name, software=SOFTWARE, info=info, sync_dir=False) as warc:
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
                    )
                )
        path = self.out_dir / warc_name
        if warc.sha256 and warc.sha512:
            sha256, sha512 = warc.sha256, warc.sha512
        else:  # a record was patched in place, so the running digest is void: one read of the file
            sha256, sha512 = _hash_file(path)
        warc_file = CapturedFile(warc_name, warc.size, sha256, sha512, "application/warc", "warc")
        first = captures[0]
        captures[0] = replace(first, files=(warc_file, *first.files))
        return captures + skipped


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
