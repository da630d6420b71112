"""Named crash points for crash tests: `PRESERVE_CRASH_AT=<name>` kills the process there with SIGKILL.

Crash safety is only shown by crashing for real (no cleanup handler runs on SIGKILL), at the moment that
matters, in a subprocess; the variable is never set outside tests. `<name>:<n>` crashes on the n-th pass
through a point that runs in a loop (after the n-th object uploaded, say), so the moment is exact.
"""

from __future__ import annotations

import errno
import os
import signal

_passes: dict[str, int] = {}


def _due(variable: str, name: str) -> bool:
    """Whether `<variable>=<name>[:<n>]` asks for this pass through point `name` (the n-th, or the first)."""
    wanted = os.environ.get(variable)
    if not wanted:
        return False
    point, _, count = wanted.partition(":")
    if point != name:
        return False
    key = f"{variable}:{name}"
    _passes[key] = _passes.get(key, 0) + 1
    return _passes[key] >= int(count or 1)


def crashpoint(name: str) -> None:
    if _due("PRESERVE_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def disk_full(name: str) -> None:
    """`PRESERVE_ENOSPC_AT=<name>[:<n>]` makes the n-th write through this point fail as a full disk would,
    for machines where a test cannot mount a small filesystem (tests/test_disk_full.py uses one where it can)."""
    if _due("PRESERVE_ENOSPC_AT", name):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
