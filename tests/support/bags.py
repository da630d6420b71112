"""Small bag-building helpers shared by tests."""

from __future__ import annotations

from typing import Any

from pipeline.manifest import provenance
from pipeline.package import PayloadFile


def minimal_provenance(bag: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-valid provenance manifest of a document with no links, for bags built by hand in tests."""
    return provenance(
        bag=bag,
        run_id="run-1",
        config_digest="0" * 64,
        operator={},
        document={"source": "doc.md", "id": "doc", **(document or {})},
        targets=[],
        captures=[],
        paths_in_bag={},
        held_in={},
    )


def document_provenance(bag: str, document: PayloadFile) -> dict[str, Any]:
    """`minimal_provenance` naming the document as package_document does: where it is in the bag, and its
    size and digests."""
    return minimal_provenance(
        bag,
        {"path_in_bag": document.path, "size": document.size, "sha256": document.sha256, "sha512": document.sha512},
    )
