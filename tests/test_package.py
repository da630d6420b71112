"""Package: bags from a real capture of a local site, judged by bagit-python and the BagIt profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bagit
import bagit_profile
import pytest

from pipeline.capture.batch import Capturer
from pipeline.config import CaptureSettings
from pipeline.extract import DocumentSettings, extract_file
from pipeline.ledger import Ledger
from pipeline.manifest import schema, validate
from pipeline.package import (
    BagSettings,
    Document,
    PackageError,
    build_bag,
    package_document,
    payload_from_bytes,
    sanitize_name,
)
from pipeline.resolve import resolve

ROOT = Path(__file__).resolve().parent.parent
PROFILE = json.loads((ROOT / "configs" / "bagit-profile.json").read_text(encoding="utf-8"))


def bagit_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """bagit-python's own command line, full validation (every digest recomputed)."""
    return subprocess.run([sys.executable, "-m", "bagit", "--validate", str(path)], capture_output=True, text=True)


def run_capture_and_package(site, tmp_path: Path, doc: Path, run_id: str, media: bool = False):
    result = extract_file(doc, DocumentSettings(base_url=site.base_url + "/"), source=doc.name)
    resolution = resolve(result.links)
    settings = CaptureSettings(allow_private_addresses=True, per_host_rate=1000, media=media, retries=0, read_timeout=5)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        captures = Capturer(tmp_path / "capture", settings, ledger).run(resolution.targets)
        packaged = package_document(
            Document(source=doc.name, id=doc.stem, path=doc),
            resolution.targets,
            captures,
            capture_dir=tmp_path / "capture",
            bags_dir=tmp_path / "bags",
            manifests_dir=tmp_path / "archive_manifests",
            ledger=ledger,
            run_id=run_id,
            config_digest="0" * 64,
            settings=BagSettings("Test Archive", "archive@example.org"),
            operator={"operator": "tests"},
            rejected=resolution.rejected,
        )
    return result, resolution, captures, packaged


@pytest.fixture
def document(site, tmp_path: Path) -> Path:
    doc = tmp_path / "تقرير 50% Harem.md"
    wrapped = f"https://www.google.com/url?q={site.url('/doc.pdf')}&sa=D&ust=1"
    doc.write_text(
        f"# Report\n\nThe [page]({site.url('/page.html')}) and the [report]({wrapped}).\n\n"
        f"![](/img/a.png)\n\nA [dead link]({site.url('/missing')}) and [js](javascript:void(0)).\n"
        f"The [video]({site.url('/video_page.html')}).\n",
        encoding="utf-8",
    )
    return doc


def test_bag_of_a_captured_document_passes_bagit_and_the_profile(site, mp4_file, document, tmp_path: Path) -> None:
    result, _, captures, packaged = run_capture_and_package(site, tmp_path, document, "run-1", media=True)
    bag_path = packaged.bag.path
    assert bag_path.parent == tmp_path / "bags" and not bag_path.name.startswith(".")
    check = bagit_validate(bag_path)
    assert check.returncode == 0, check.stderr
    profile = bagit_profile.Profile(PROFILE["BagIt-Profile-Info"]["BagIt-Profile-Identifier"], profile=PROFILE)
    assert profile.validate(bagit.Bag(str(bag_path))), profile.report

    # bag-info.txt keeps the order written, with every required field
    labels = [line.split(":", 1)[0] for line in (bag_path / "bag-info.txt").read_text().splitlines()]
    assert labels == [
        "Source-Organization",
        "Contact-Email",
        "External-Identifier",
        "External-Description",
        "Bag-Group-Identifier",
        "BagIt-Profile-Identifier",
        "Bagging-Date",
        "Bagging-Time",
        "Bag-Software-Agent",
        "Payload-Oxum",
        "Bag-Size",
    ]
    info = bagit.Bag(str(bag_path)).info
    assert info["External-Identifier"] == document.stem and info["Bag-Group-Identifier"] == "run-1"

    # the document itself, under a sanitised but readable name
    stored = bag_path / "data" / "document" / "تقرير 50_ Harem.md"
    assert stored.read_bytes() == document.read_bytes()

    # payload files are the captured files themselves (hardlinks: nothing was copied or re-read)
    for capture in captures:
        for file in capture.files:
            in_bag = bag_path / "data" / file.path
            assert os.stat(in_bag).st_ino == os.stat(tmp_path / "capture" / file.path).st_ino
    media = [f for c in captures if c.fetcher == "media" for f in c.files if f.role == "media"]
    assert media and (bag_path / "data" / media[0].path).stat().st_size == media[0].size

    # the provenance manifest: schema-valid, every link of the document, the copy in archive_manifests
    data = (bag_path / "data" / "provenance.json").read_bytes()
    assert packaged.manifest_path.read_bytes() == data
    manifest = json.loads(data)
    validate(manifest)
    fetchable = [link for link in result.links if link.href != "javascript:void(0)"]
    assert sorted(entry["location"] for entry in manifest["links"]) == sorted(link.location for link in fetchable)
    assert [r["href"] for r in manifest["rejected"]] == ["javascript:void(0)"]
    dead = next(entry for entry in manifest["links"] if entry["text"] == "dead link")
    assert dead["captures"][0]["outcome"] == "failed" and dead["captures"][0]["http_status"] == 404
    report = next(entry for entry in manifest["links"] if entry["text"] == "report")
    assert [hop["rule"] for hop in report["target"]["hops"]] == ["google"]
    response = next(r for r in report["captures"][0]["warc_records"] if r["type"] == "response")
    assert response["file"].startswith("data/warc/") and response["payload_sha256"]
    assert set(manifest["tools"]) >= {"preserve", "python", "requests", "warcio", "yt-dlp", "ffmpeg"}


def test_a_rerun_with_nothing_new_makes_no_bag_and_says_why(site, document, tmp_path: Path) -> None:
    *_, first = run_capture_and_package(site, tmp_path, document, "run-1")
    assert first.bag is not None
    *_, second = run_capture_and_package(site, tmp_path, document, "run-2")
    # the dead link is tried again (a new failed capture with a new WARC), so that is new evidence...
    assert second.bag is not None
    site.add_route("/missing", lambda h: h.respond(404, b"gone", "text/plain"))
    shutil.rmtree(tmp_path / "bags")
    # ...but when every file is already held by a bag, nothing is packaged
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        result = extract_file(document, DocumentSettings(base_url=site.base_url + "/"), source=document.name)
        resolution = resolve(result.links)
        kept = [t for t in resolution.targets if "missing" not in t.url]
        captures = Capturer(
            tmp_path / "capture", CaptureSettings(allow_private_addresses=True, media=False), ledger
        ).run(kept)
        assert {c.outcome for c in captures} == {"skipped"}
        third = package_document(
            Document(source=document.name, id=document.stem, path=document),
            kept,
            captures,
            capture_dir=tmp_path / "capture",
            bags_dir=tmp_path / "bags",
            manifests_dir=tmp_path / "archive_manifests",
            ledger=ledger,
            run_id="run-3",
            config_digest="0" * 64,
            settings=BagSettings(),
        )
    assert third.bag is None and not (tmp_path / "bags").exists()
    assert "already held in a bag" in third.reason
    manifest = json.loads(third.manifest_path.read_text())
    validate(manifest)
    assert manifest["bag"] is None and manifest["reason"] == third.reason
    held = {f["held_in_bag"] for entry in manifest["links"] for c in entry["captures"] for f in c["files"]}
    assert held <= {first.bag.name, second.bag.name} and held


def test_tampering_is_reported_by_bagit(site, document, tmp_path: Path) -> None:
    *_, packaged = run_capture_and_package(site, tmp_path, document, "run-1")
    for damage in ("payload", "manifest"):
        copy = tmp_path / f"copy-{damage}"
        shutil.copytree(packaged.bag.path, copy)  # a real copy: the original's hardlinks stay intact
        if damage == "payload":
            target = copy / "data" / "provenance.json"
            data = bytearray(target.read_bytes())
            data[10] ^= 0x01
            target.write_bytes(bytes(data))
        else:
            manifest = copy / "manifest-sha256.txt"
            lines = manifest.read_text().splitlines()
            lines[0] = ("0" if lines[0][0] != "0" else "1") + lines[0][1:]
            manifest.write_text("\n".join(lines) + "\n")
        check = bagit_validate(copy)
        assert check.returncode != 0, damage
        assert "invalid" in (check.stderr + check.stdout).lower()


def test_a_crash_between_build_and_rename_leaves_no_finished_looking_bag(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from pipeline.package import build_bag, payload_from_bytes;"
        "build_bag(Path(sys.argv[1]), 'doc_20261124T000000Z', [payload_from_bytes('data/a.txt', b'evidence')],"
        " [('Source-Organization', 'x')])"
    )
    env = {**os.environ, "PRESERVE_CRASH_AT": "bag-publish", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True)
    assert proc.returncode == -9
    assert [p.name for p in tmp_path.iterdir()] == [".doc_20261124T000000Z.building"]
    env.pop("PRESERVE_CRASH_AT")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["doc_20261124T000000Z"]
    assert bagit_validate(tmp_path / "doc_20261124T000000Z").returncode == 0


def test_bags_are_never_overwritten(tmp_path: Path) -> None:
    files = [payload_from_bytes("data/a.txt", b"one")]
    build_bag(tmp_path, "b_1", files, [("Source-Organization", "x")])
    with pytest.raises(PackageError, match="never overwritten"):
        build_bag(tmp_path, "b_1", files, [("Source-Organization", "x")])
    with pytest.raises(PackageError, match="unsafe payload path"):
        build_bag(tmp_path, "b_2", [payload_from_bytes("data/../x", b"x")], [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("50%.txt", "50_.txt"),
        ("../../etc/passwd\x00.txt", "_.._etc_passwd_.txt"),
        ("line\nbreak\r.txt", "line_break_.txt"),
        ("/absolute/path.mp4", "_absolute_path.mp4"),
        ("..", "file"),
        ("تقرير حارم ٢٠١٨.pdf", "تقرير حارم ٢٠١٨.pdf"),
        ("Cafe\u0301.jpg", "Caf\u00e9.jpg"),  # NFC
        ("-rf .txt", "rf.txt"),  # no leading dash (option-like), no space before the extension
    ],
)
def test_file_names_are_sanitised(name: str, expected: str) -> None:
    assert sanitize_name(name) == expected


def test_long_and_duplicate_names_stay_bounded_and_unique() -> None:
    taken: set[str] = set()
    long = "ا" * 300 + ".pdf"
    first = sanitize_name(long, taken)
    second = sanitize_name(long, taken)
    assert first != second and first.endswith(".pdf") and second.endswith(" (2).pdf")
    assert len(first.encode()) <= 200 and len(second.encode()) <= 200
    assert sanitize_name("A.txt", taken) != sanitize_name("a.txt", taken)  # unique on case-insensitive disks


def test_schema_is_published_and_rejects_a_bad_manifest() -> None:
    assert schema()["$id"].endswith("provenance-v1.json")
    with pytest.raises(Exception, match="provenance manifest invalid"):
        validate({"$schema": schema()["$id"], "bag": 3})


def test_capture_then_package_commands(site, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "capture:\n  media: false\n  per_host_rate: 1000\n"
        "bag:\n  source_organization: Test Archive\n  contact_email: archive@example.org\n"
        f"output:\n  manifests_dir: {tmp_path / 'manifests'}\n  bags_dir: {tmp_path / 'bags'}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "pipeline.cli"]
    captured = subprocess.run(
        [
            *cli,
            "capture",
            site.url("/page.html"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "cap"),
            "--allow-private",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert captured.returncode == 0, captured.stderr
    (run_dir,) = (tmp_path / "cap" / "runs").iterdir()
    packaged = subprocess.run(
        [*cli, "package", "--run", str(run_dir), "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert packaged.returncode == 0, packaged.stderr
    (bag_path,) = (tmp_path / "bags").iterdir()
    assert f"bag     {bag_path}" in packaged.stdout
    assert bagit_validate(bag_path).returncode == 0
    command = (bag_path / "data" / "document" / "command.txt").read_text()
    assert f"preserve capture {site.url('/page.html')}" in command and "operator:" in command
    info = bagit.Bag(str(bag_path)).info
    assert info["Source-Organization"] == "Test Archive" and info["Contact-Email"] == "archive@example.org"
    assert (tmp_path / "manifests" / f"{bag_path.name}.json").exists()
    again = subprocess.run(
        [*cli, "package", "--run", str(run_dir), "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert again.returncode == 0 and again.stdout.startswith("no bag")
    assert len(list((tmp_path / "bags").iterdir())) == 1
    bad = subprocess.run([*cli, "package", "--run", str(tmp_path)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


def test_captured_names_that_sanitise_alike_stay_distinct(tmp_path: Path) -> None:
    from pipeline.package import payload_from_capture
    from pipeline.records import CapturedFile

    taken: dict[str, set[str]] = {}
    files = [CapturedFile(f"media/k/{name}", 1, "0" * 64, "0" * 128) for name in ("a%b.mp4", "a_b.mp4", "A_B.mp4")]
    paths = [payload_from_capture(f, tmp_path, taken).path for f in files]
    assert paths == ["data/media/k/a_b.mp4", "data/media/k/a_b (2).mp4", "data/media/k/A_B (3).mp4"]
