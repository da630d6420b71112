"""The local store: a directory laid out like a bucket; idempotent, resumable, never overwriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.package import build_bag, payload_from_bytes
from pipeline.store.base import BagUploadError, bag_files, decode_manifest_path
from pipeline.store.local import LocalStore

ROOT = Path(__file__).resolve().parent.parent


def make_bag(tmp_path: Path, name: str = "doc_20261124T000000Z") -> Path:
    files = [
        payload_from_bytes("data/document/doc.md", b"# evidence\n"),
        payload_from_bytes("data/warc/a.warc.gz", os.urandom(50_000)),
        payload_from_bytes("data/media/k/clip [x].mp4", os.urandom(120_000)),
    ]
    return build_bag(tmp_path / "bags", name, files, [("Source-Organization", "test")]).path


def bagit_validate(path: Path) -> int:
    return subprocess.run([sys.executable, "-m", "bagit", "--validate", str(path)], capture_output=True).returncode


def test_upload_order_puts_payload_first_and_bagit_txt_last(tmp_path: Path) -> None:
    order = [f.relpath for f in bag_files(make_bag(tmp_path))]
    assert order[:3] == sorted(order[:3]) and all(p.startswith("data/") for p in order[:3])
    assert order[-2:] == ["bag-info.txt", "bagit.txt"]


def test_upload_then_again_sends_nothing_and_the_copy_validates(tmp_path: Path) -> None:
    bag = make_bag(tmp_path)
    store = LocalStore(tmp_path / "store", "archive")
    first = store.upload_bag(bag)
    assert first.bytes_sent == sum(f.size for f in bag_files(bag)) and first.skipped == 0
    stored = tmp_path / "store" / "archive" / bag.name
    assert bagit_validate(stored) == 0
    second = store.upload_bag(bag)
    assert second.bytes_sent == 0 and second.skipped == len(second.objects)


def test_an_interrupted_upload_resumes_and_never_looks_complete(tmp_path: Path) -> None:
    bag = make_bag(tmp_path)
    stored = tmp_path / "store" / bag.name
    # as a killed upload leaves it: some payload arrived, one object half-written, no tag files yet
    (stored / "data" / "warc").mkdir(parents=True)
    (stored / "data" / "warc" / "a.warc.gz").write_bytes((bag / "data" / "warc" / "a.warc.gz").read_bytes())
    (stored / "data" / "document").mkdir()
    (stored / "data" / "document" / "doc.md.part").write_bytes(b"# evi")
    assert not (stored / "bagit.txt").exists()  # recognisable as partial
    result = LocalStore(tmp_path / "store").upload_bag(bag)
    assert [o.relpath for o in result.objects if o.skipped] == ["data/warc/a.warc.gz"]
    assert bagit_validate(stored) == 0
    assert not list(stored.rglob("*.part"))


def test_a_different_object_is_never_overwritten(tmp_path: Path) -> None:
    bag = make_bag(tmp_path)
    store = LocalStore(tmp_path / "store")
    store.upload_bag(bag)
    victim = tmp_path / "store" / bag.name / "data" / "document" / "doc.md"
    os.chmod(victim, 0o644)
    victim.write_bytes(b"# edited\n")
    with pytest.raises(BagUploadError, match="never overwritten"):
        store.upload_bag(bag)
    assert victim.read_bytes() == b"# edited\n"


def test_symlinks_in_a_bag_are_refused(tmp_path: Path) -> None:
    bag = make_bag(tmp_path)
    (bag / "data" / "link").symlink_to("/etc/passwd")
    with pytest.raises(BagUploadError, match="symbolic link"):
        LocalStore(tmp_path / "store").upload_bag(bag)


def test_manifest_paths_are_percent_decoded_as_the_rfc_says() -> None:
    assert decode_manifest_path("data/50%25.txt") == "data/50%.txt"
    assert decode_manifest_path("data/a%0Ab%0d.txt") == "data/a\nb\r.txt"
    assert decode_manifest_path("data/%41.txt") == "data/%41.txt"


def test_upload_command_to_a_directory_records_where_copies_went(tmp_path: Path) -> None:
    from pipeline.manifest import validate, write
    from tests.support.bags import minimal_provenance

    manifest_bag = "doc_20261124T000000Z"
    manifest = minimal_provenance(manifest_bag)
    files = [payload_from_bytes("data/provenance.json", json.dumps(manifest).encode())]
    bag = build_bag(tmp_path / "bags", "doc_20261124T000000Z", files, [("Source-Organization", "test")]).path
    manifests = tmp_path / "manifests"
    write(manifest, manifests / f"{bag.name}.json")
    config = tmp_path / "c.yaml"
    config.write_text(f"output:\n  manifests_dir: {manifests}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "pipeline.cli", "upload", "--config", str(config), "--store", str(tmp_path / "dir")]
    proc = subprocess.run([*cli, str(bag)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "0 already there" in proc.stdout
    assert bagit_validate(tmp_path / "dir" / bag.name) == 0
    assert (tmp_path / "dir" / f"{bag.name}.provenance.json").exists()
    assert (tmp_path / "dir" / "archive_manifests" / f"{bag.name}.json").exists()
    recorded = json.loads((manifests / f"{bag.name}.json").read_text())
    validate(recorded)
    paths = {copy["path"] for copy in recorded["copies"]}
    assert {"bagit.txt", "data/provenance.json", f"archive_manifests/{bag.name}.json"} <= paths
    assert all(copy["uri"].startswith("file://") for copy in recorded["copies"])
    again = subprocess.run([*cli, str(bag)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and ", 0 bytes sent" in again.stdout
    missing = subprocess.run([*cli, str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "not a bag" in missing.stderr


def test_a_bag_made_by_another_tool_uploads_too(tmp_path: Path) -> None:
    import bagit

    source = tmp_path / "foreign"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "50% report.txt").write_bytes(b"made elsewhere\n")
    bagit.make_bag(str(source), {"Source-Organization": "Elsewhere"}, checksums=["md5"])
    result = LocalStore(tmp_path / "store").upload_bag(source)
    assert {o.relpath for o in result.objects} >= {"data/sub/50% report.txt", "manifest-md5.txt", "bagit.txt"}
    assert bagit_validate(tmp_path / "store" / "foreign") == 0
