"""Stores: where bags are kept. `local` (a directory laid out like a bucket, the embedded default) and
`s3` (boto3, any S3-compatible endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pipeline.store.base import StoreError, UploadResult


class Store(Protocol):
    @property
    def uri(self) -> str: ...

    def upload_bag(self, bag: Path, verify: bool = False) -> UploadResult: ...


def open_store(spec: str | None, loaded: object) -> Store:
    """A store by name from the config, an `s3://bucket/prefix` URI, or a local directory; None gives the
    config's default (the embedded local store unless the config says otherwise)."""
    from pipeline.config import LoadedConfig, StoreConfig
    from pipeline.store.local import LocalStore
    from pipeline.store.s3 import S3Store

    assert isinstance(loaded, LoadedConfig)
    config = loaded.config
    name = spec if spec is not None else config.default_store
    if name in config.stores:
        chosen: StoreConfig = config.stores[name]
        if chosen.type == "local":
            return LocalStore(loaded.output_path(chosen.path or config.output.store_dir), chosen.prefix)
        return S3Store(
            chosen.bucket or "",
            chosen.prefix,
            endpoint_url=str(chosen.endpoint_url) if chosen.endpoint_url else None,
            region=chosen.region,
            addressing_style=chosen.addressing_style,
            checksum_mode=chosen.checksum_mode,
            multipart_threshold=chosen.multipart_threshold_mib << 20,
            part_size=chosen.part_size_mib << 20,
            concurrency=chosen.concurrency,
            object_lock_mode=chosen.object_lock_mode,
            object_lock_days=chosen.object_lock_days,
            outage_seconds=chosen.outage_seconds,
        )
    if name == "local":
        return LocalStore(loaded.output_path(config.output.store_dir))
    if name.startswith("s3://"):
        bucket, _, prefix = name.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"{name}: no bucket named")
        return S3Store(bucket, prefix)
    if "://" in name:
        raise StoreError(f"{name}: not a store name, an s3:// URI or a local directory")
    return LocalStore(Path(name))


__all__ = ["Store", "StoreError", "UploadResult", "open_store"]
