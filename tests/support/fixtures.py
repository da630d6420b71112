"""Pytest fixtures for the local test site.

Load as a plugin (``pytest_plugins = ["tests.support.fixtures"]`` in ``tests/conftest.py``, or
``-p tests.support.fixtures`` on the command line).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.site import LocalSite, ensure_clip


@pytest.fixture(scope="session")
def mp4_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test MP4, rendered by ffmpeg once per session and shared by every ``LocalSite``."""
    return ensure_clip(tmp_path_factory.mktemp("media"))


@pytest.fixture
def site() -> Iterator[LocalSite]:
    """A fresh running site per test, so hit counters and flaky/ratelimit state never leak.

    It does not depend on ``mp4_file``: tests that never touch the video do not need ffmpeg.
    """
    with LocalSite() as local_site:
        yield local_site
