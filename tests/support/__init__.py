"""Shared test support: a real local HTTP site and the pytest fixtures that expose it."""
