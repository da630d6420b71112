"""Preserve the evidence that documents cite: extract, resolve, capture, package, store, audit."""

__version__ = "0.1.0"
