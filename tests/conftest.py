"""Shared test configuration: the local web site fixtures live in tests/support."""

pytest_plugins = ["tests.support.fixtures"]
