"""What a run tells the people watching it: a rich progress display per stage on a terminal, plain lines
otherwise, or JSON lines (`--log-format json`) for cron and log collectors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Advance = Callable[..., None]


class RunLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None, run_id: str = "") -> None:
        self.format = fmt
        self.stream = stream or sys.stderr
        self.run_id = run_id
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.interactive = fmt == "text" and self.stream.isatty()

    def info(self, event: str, message: str, **fields: Any) -> None:
        self._emit("info", event, message, fields)

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self._emit("warning", event, message, fields)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self._emit("error", event, message, fields)

    def _emit(self, level: str, event: str, message: str, fields: dict[str, Any]) -> None:
        if self.format == "json":
            line = {"time": datetime.now(UTC).isoformat(), "level": level, "run": self.run_id, "event": event}
            line.update(message=message, **fields)
            self.stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            self.stream.flush()
            return
        prefix = "" if level == "info" else f"{level}: "
        self.console.print(prefix + message, markup=False)

    @contextmanager
    def stage(self, name: str, total: int) -> Iterator[Advance]:
        """A progress bar for one stage on a terminal; otherwise a start and an end line. The advance
        callable takes the number of items done and named counts (failed=1, bytes=...)."""
        counts: dict[str, int] = {}
        done = 0
        if not self.interactive:
            if total == 0:  # nothing to say about an empty stage
                yield lambda n=1, **extra: None
                return
            self.info("stage-start", f"{name}: {total} to do", stage=name, total=total)

            def count(n: int = 1, **extra: int) -> None:
                nonlocal done
                done += n
                for key, value in extra.items():
                    counts[key] = counts.get(key, 0) + value

            yield count
            summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            self.info("stage-end", f"{name}: {done} done" + (f" ({summary})" if summary else ""), stage=name, done=done)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(name, total=total)

            def advance(n: int = 1, **extra: int) -> None:
                for key, value in extra.items():
                    counts[key] = counts.get(key, 0) + value
                summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                progress.update(task, advance=n, description=name + (f" ({summary})" if summary else ""))

            yield advance
