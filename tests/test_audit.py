"""Audit of local bags: each kind of damage reported with its file and kind, judged beside bagit.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import audit
from pipeline.audit import FANOUT_MIN, GzipMembers, audit_bag, audit_bags, feed, hash_file, warc_members_complete
from pipeline.capture.warc import WarcFile
from pipeline.manifest import encode
from pipeline.package import build_bag, payload_from_bytes
from tests.support.bags import document_provenance

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("audit")
    warc_path = base / "a.warc.gz"
    with WarcFile(warc_path, software="test/1") as warc:
        for i in range(20):
            body = os.urandom(2000)
            warc.write_resource(
                f"http://example.org/{i}",
                content_type="application/octet-stream",
                body=io.BytesIO(body),
                body_length=len(body),
                sha256=hashlib.sha256(body).hexdigest(),
            )
    document = payload_from_bytes("data/document/doc.md", b"# evidence\n" * 50)
    manifest = document_provenance("doc_20261124T000000Z", document)
    files = [
        document,
        payload_from_bytes("data/warc/a.warc.gz", warc_path.read_bytes()),
        payload_from_bytes("data/media/k/clip.mp4", os.urandom(30_000)),
        payload_from_bytes("data/provenance.json", encode(manifest)),
    ]
    info = [("Source-Organization", "test"), ("External-Identifier", "doc")]
    return build_bag(base / "bags", "doc_20261124T000000Z", files, info).path


def damaged(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / pristine.name
    shutil.copytree(pristine, copy)
    return copy


def flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest_line(bag: Path) -> None:
    manifest = bag / "manifest-sha256.txt"
    lines = manifest.read_text().splitlines()
    digest, _, name = lines[0].partition(" ")
    lines[0] = ("0" * 64 if digest != "0" * 64 else "1" * 64) + " " + name
    manifest.write_text("\n".join(lines) + "\n")


def edit_sha512_line(bag: Path, relpath: str) -> None:
    """Change one file's sha512 manifest line (its sha256 stays right) and reseal the tag manifests, so the
    only thing wrong with the bag is that one digest."""
    manifest = bag / "manifest-sha512.txt"
    lines = manifest.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.partition(" ")[2].strip() == relpath)
    digest = lines[at].partition(" ")[0]
    lines[at] = ("0" if digest[0] != "0" else "1") + lines[at][1:]
    manifest.write_text("\n".join(lines) + "\n")
    for algorithm in ("sha256", "sha512"):
        tagmanifest = bag / f"tagmanifest-{algorithm}.txt"
        names = [line.partition(" ")[2].strip() for line in tagmanifest.read_text().splitlines() if line.strip()]
        digests = [hashlib.new(algorithm, (bag / name).read_bytes()).hexdigest() for name in names]
        tagmanifest.write_text("".join(f"{d}  {n}\n" for d, n in zip(digests, names, strict=True)))


DAMAGE = {
    "flip a payload byte": (
        lambda b: flip(b / "data/media/k/clip.mp4"),
        {("data/media/k/clip.mp4", "digest-mismatch")},
    ),
    "truncate a file": (
        lambda b: (b / "data/document/doc.md").write_bytes(b"# evid"),
        {
            ("data/document/doc.md", "digest-mismatch"),
            ("data/document/doc.md", "size-mismatch"),
            ("bag-info.txt", "oxum-mismatch"),
        },
    ),
    "delete a file": (
        lambda b: (b / "data/media/k/clip.mp4").unlink(),
        {("data/media/k/clip.mp4", "missing"), ("bag-info.txt", "oxum-mismatch")},
    ),
    "add an unlisted file": (
        lambda b: (b / "data/extra.txt").write_bytes(b"x"),
        {("data/extra.txt", "unexpected"), ("bag-info.txt", "oxum-mismatch")},
    ),
    "edit bag-info.txt": (
        lambda b: (b / "bag-info.txt").write_text((b / "bag-info.txt").read_text().replace("test", "tset")),
        {("bag-info.txt", "tag-manifest-mismatch")},
    ),
    "edit a manifest line": (
        edit_manifest_line,
        {("manifest-sha256.txt", "tag-manifest-mismatch"), ("data/document/doc.md", "digest-mismatch")},
    ),
    "cut 100 bytes off a .warc.gz": (
        lambda b: (b / "data/warc/a.warc.gz").write_bytes((b / "data/warc/a.warc.gz").read_bytes()[:-100]),
        {
            ("data/warc/a.warc.gz", "digest-mismatch"),
            ("data/warc/a.warc.gz", "warc-truncated"),
            ("bag-info.txt", "oxum-mismatch"),
        },
    ),
    "replace a file with a same-size file": (
        lambda b: (b / "data/media/k/clip.mp4").write_bytes(os.urandom(30_000)),
        {("data/media/k/clip.mp4", "digest-mismatch")},
    ),
    "add a tag file not in the tag manifest": (
        lambda b: (b / "notes.txt").write_text("added later\n"),
        {("notes.txt", "unexpected")},
    ),
    "an interrupted upload (no bagit.txt)": (
        lambda b: (b / "bagit.txt").unlink(),
        {("bagit.txt", "incomplete-upload"), ("bagit.txt", "missing")},
    ),
}
# bagit-python's known gaps: it passes these (the audit is stricter on purpose)
BAGIT_PASSES = {"add a tag file not in the tag manifest"}


def bagit_passes(bag: Path) -> bool:
    return subprocess.run([sys.executable, "-m", "bagit", "--validate", str(bag)], capture_output=True).returncode == 0


def test_an_undamaged_bag_passes(pristine: Path) -> None:
    audit = audit_bag(pristine)
    assert audit.ok, audit.failures
    assert audit.files == 10 and bagit_passes(pristine)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_damage_is_reported_with_its_file_and_kind(pristine: Path, tmp_path: Path, damage: str) -> None:
    bag = damaged(pristine, tmp_path)
    apply, expected = DAMAGE[damage]
    apply(bag)
    audit = audit_bag(bag)
    found = {(f.file, f.kind) for f in audit.failures}
    assert found == expected, audit.failures
    assert all(f.bag == bag.name for f in audit.failures)
    if damage in BAGIT_PASSES:
        assert bagit_passes(bag)  # the known gap: the audit is stricter
    else:
        assert not bagit_passes(bag)  # both agree that the bag fails


def test_fast_audit_misses_same_size_tampering_but_full_does_not(pristine: Path, tmp_path: Path) -> None:
    bag = damaged(pristine, tmp_path)
    (bag / "data/media/k/clip.mp4").write_bytes(os.urandom(30_000))
    assert audit_bag(bag, full=False).ok
    assert not audit_bag(bag, full=True).ok


def test_hostile_manifest_paths_and_symlinks_are_never_followed(pristine: Path, tmp_path: Path) -> None:
    bag = damaged(pristine, tmp_path)
    outside = tmp_path / "outside"
    os.mkfifo(outside)  # reading it would block: the test would hang if the audit ever opened it
    with (bag / "manifest-sha256.txt").open("a") as manifest:
        manifest.write(f"{'0' * 64}  data/../../outside\n{'0' * 64}  /etc/passwd\n")
    (bag / "data" / "link.txt").symlink_to(outside)
    (bag / "data" / "linkdir").symlink_to(tmp_path)
    os.mkfifo(bag / "data" / "pipe")  # a special file inside the bag is not read either
    audit = audit_bag(bag)
    hostile = {f.file for f in audit.failures if f.kind == "hostile"}
    assert {"data/../../outside", "/etc/passwd", "data/link.txt", "data/linkdir", "data/pipe"} <= hostile


def test_a_sha512_line_edited_alone_fails_as_a_digest_mismatch(pristine: Path, tmp_path: Path) -> None:
    """Every manifest counts, not only sha256: bagit.py agrees that the bag is invalid."""
    bag = damaged(pristine, tmp_path)
    edit_sha512_line(bag, "data/media/k/clip.mp4")
    audit = audit_bag(bag)
    assert [(f.file, f.kind) for f in audit.failures] == [("data/media/k/clip.mp4", "digest-mismatch")]
    assert audit.failures[0].detail.startswith("sha512 ")
    assert not bagit_passes(bag)


def test_large_files_take_the_threaded_path_and_every_check_still_sees_every_byte(tmp_path: Path) -> None:
    """A file over FANOUT_MIN is read once and fed to a thread per digest and to the gzip member check:
    a wrong sha512, a flipped byte and a cut-off gzip member must each still be found."""
    import gzip

    member = gzip.compress(os.urandom(1 << 20), compresslevel=1)
    warc = member * (FANOUT_MIN // len(member) + 2)
    video = os.urandom(FANOUT_MIN + 12345)
    files = [payload_from_bytes("data/warc/big.warc.gz", warc), payload_from_bytes("data/media/v/big.mp4", video)]
    pristine = build_bag(tmp_path / "bags", "big_20261124T000000Z", files, [("Source-Organization", "t")]).path
    assert min(p.stat().st_size for p in (pristine / "data").rglob("big*")) >= FANOUT_MIN
    assert audit_bag(pristine).ok

    sha512 = damaged(pristine, tmp_path / "sha512")
    edit_sha512_line(sha512, "data/media/v/big.mp4")
    flipped = damaged(pristine, tmp_path / "flipped")
    flip(flipped / "data/media/v/big.mp4", at=FANOUT_MIN + 1)  # in the last block
    cut = damaged(pristine, tmp_path / "cut")
    (cut / "data/warc/big.warc.gz").write_bytes(warc[:-1000])
    sha512_audit, flipped_audit, cut_audit = audit_bags([sha512, flipped, cut], jobs=2)
    assert [(f.file, f.detail[:6]) for f in sha512_audit.failures] == [("data/media/v/big.mp4", "sha512")]
    assert {(f.file, f.kind, f.detail[:6]) for f in flipped_audit.failures} == {
        ("data/media/v/big.mp4", "digest-mismatch", "sha256"),
        ("data/media/v/big.mp4", "digest-mismatch", "sha512"),
    }
    assert {(f.file, f.kind) for f in cut_audit.failures} == {
        ("data/warc/big.warc.gz", "digest-mismatch"),
        ("data/warc/big.warc.gz", "warc-truncated"),
        ("bag-info.txt", "oxum-mismatch"),
    }


def test_the_ring_of_buffers_reuses_a_buffer_only_once_every_check_is_done_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small buffers, so a large file goes round the ring many times: every digest and the gzip member check
    still see every byte in order; a check that fails is raised, never a reader left waiting; a FIFO in a
    file's place is refused at once."""
    import gzip

    monkeypatch.setattr(audit, "BLOCK", 64 << 10)
    monkeypatch.setattr(audit, "RING", 2)
    data = os.urandom(FANOUT_MIN + 12345)
    (tmp_path / "big.bin").write_bytes(data)
    algorithms = ["sha256", "sha512", "md5"]
    assert hash_file(tmp_path / "big.bin", algorithms) == (
        {a: hashlib.new(a, data).hexdigest() for a in algorithms},
        len(data),
    )

    member = gzip.compress(os.urandom(300_000), compresslevel=1)
    warc = member * (FANOUT_MIN // len(member) + 2)
    for name, content in [("whole.warc.gz", warc), ("cut.warc.gz", warc[:-1000])]:
        (tmp_path / name).write_bytes(content)
        check, sha256 = GzipMembers(), hashlib.sha256()
        assert feed(tmp_path / name, [sha256, check]) == len(content)
        assert sha256.hexdigest() == hashlib.sha256(content).hexdigest()
        if content == warc:
            assert check.result() is None and check.members == len(warc) // len(member)
        else:
            assert check.result() == f"gzip member {len(warc) // len(member)} is cut short"

    class Failing:
        def __init__(self) -> None:
            self.blocks = 0

        def update(self, block: bytes | memoryview) -> None:
            self.blocks += 1
            if self.blocks == 3:
                raise ValueError("third block")

    with pytest.raises(ValueError, match="third block"):
        feed(tmp_path / "big.bin", [hashlib.sha256(), Failing()])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        feed(tmp_path / "fifo", [hashlib.sha256()])


def test_warc_member_check() -> None:
    import gzip

    one = gzip.compress(b"WARC/1.1\r\n\r\n")
    path = ROOT / ".pytest-warc-check.warc.gz"
    try:
        path.write_bytes(one * 3)
        assert warc_members_complete(path) is None
        path.write_bytes(one * 3 + one[:-5])
        assert "cut short" in warc_members_complete(path)
    finally:
        path.unlink(missing_ok=True)


def test_audit_command_logs_fixity_events_and_history(pristine: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(pristine, store / pristine.name)
    bad = store / "bad_20261124T000000Z"
    shutil.copytree(pristine, bad)
    flip(bad / "data/media/k/clip.mp4")
    config = tmp_path / "c.yaml"
    config.write_text(f"output:\n  state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    cli = [sys.executable, "-m", "pipeline.cli", "audit", "--config", str(config)]
    report = tmp_path / "report.json"
    proc = subprocess.run([*cli, str(store), "--report", str(report)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "FAIL  bad_20261124T000000Z  data/media/k/clip.mp4  digest-mismatch" in proc.stdout
    events = json.loads(report.read_text())
    assert [e["outcome"] for e in events] == ["fail", "pass"]
    assert all(e["eventType"] == "fixity check" and e["agent"].startswith("preserve-pipeline/") for e in events)
    for log in (store / "audit" / "fixity.jsonl", tmp_path / "state" / "audit" / "fixity.jsonl"):
        assert len(log.read_text().splitlines()) == 2
    ok = subprocess.run([*cli, str(store / pristine.name)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0
    hist = subprocess.run([*cli, "--history", pristine.name], capture_output=True, text=True, env=env)
    assert hist.returncode == 0 and len(hist.stdout.strip().splitlines()) == 2 and "pass" in hist.stdout
    missing = subprocess.run([*cli, str(tmp_path / "nothing")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no bag found" in missing.stderr
