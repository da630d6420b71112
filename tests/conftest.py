"""Shared test configuration: local web site and S3 fixtures live in tests/support."""

pytest_plugins = ["tests.support.fixtures", "tests.support.s3"]
