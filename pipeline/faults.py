"""Named crash points for crash tests: `PRESERVE_CRASH_AT=<name>` kills the process there with SIGKILL.

Crash safety is only shown by crashing for real (no cleanup handler runs on SIGKILL), at the moment that
matters, in a subprocess; the variable is never set outside tests.
"""

from __future__ import annotations

import os
import signal


def crashpoint(name: str) -> None:
    if os.environ.get("PRESERVE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
