"""Politeness: at most N requests at a time to one host, and no more than R requests per second to it.

A host is `host:port`, so several local test servers on one address count as several hosts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class HostGate:
    def __init__(self, concurrency: int = 1, rate: float = 4.0) -> None:
        self.concurrency = concurrency
        self.interval = 1.0 / rate
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore | threading.Lock] = {}
        self._next_start: dict[str, float] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's request slots, starting no sooner than its rate allows."""
        with self._lock:
            semaphore = self._slots.get(host)
            if semaphore is None:
                # one request at a time (the default) needs no counting: a plain lock is the same and cheaper
                semaphore = threading.Lock() if self.concurrency == 1 else threading.BoundedSemaphore(self.concurrency)
                self._slots[host] = semaphore
        with semaphore:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next_start.get(host, now))
                self._next_start[host] = start + self.interval
            if start > now:
                time.sleep(start - now)
            yield
