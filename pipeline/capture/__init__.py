"""Capture stage: one fetcher per kind of target."""
