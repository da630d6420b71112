"""Pytest fixtures for the local test site.

Load as a plugin (``pytest_plugins = ["tests.support.fixtures"]`` in ``tests/conftest.py``, or
``-p tests.support.fixtures`` on the command line).
"""

from __future__ import annotations

import os
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


@pytest.fixture
def dummy_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's standard chain finds the dummy credentials of the loopback S3 endpoint, and nothing of this
    machine's own configuration."""
    from tests.support.s3 import s3_env

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_env("http://127.0.0.1:1").items():
        if not name.startswith("AWS_ENDPOINT"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
