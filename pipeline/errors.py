"""Errors and defaults that the command line needs before anything heavy is imported (pydantic, rich):
`preserve audit` of a bag starts in a fraction of the time."""

from __future__ import annotations

DEFAULT_STATE_DIR = "state"
DEFAULT_STORE_DIR = "store"


class ConfigError(Exception):
    """A config that cannot be used; the message is one line naming the file and the key."""
