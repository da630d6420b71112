"""The S3 store against a real S3 HTTP endpoint on loopback (moto in server mode), through a proxy that
counts bytes and injects faults. No in-process mocking of boto3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from pipeline.manifest import encode
from pipeline.package import build_bag, payload_from_bytes
from pipeline.store.base import BagUploadError, bag_files
from pipeline.store.s3 import S3Store
from tests.support.bags import document_provenance
from tests.support.s3 import s3_env

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
BUCKET = "archive"


@pytest.fixture(autouse=True)
def dummy_credentials(dummy_aws: None) -> None:
    """boto3's standard chain finds the dummy credentials (and no real configuration of this machine)."""


def make_bag(tmp_path: Path, big_mib: int = 11) -> Path:
    name = "doc_20261124T000000Z"
    document = payload_from_bytes("data/document/doc.md", b"# evidence\n")
    manifest = document_provenance(name, document)
    files = [
        document,
        payload_from_bytes("data/warc/a.warc.gz", os.urandom(300_000)),
        payload_from_bytes("data/media/k/clip [x] حارم.mp4", os.urandom(big_mib * MIB)),
        payload_from_bytes("data/provenance.json", encode(manifest)),
    ]
    return build_bag(tmp_path / "bags", name, files, [("Source-Organization", "test")]).path


def store(endpoint: str, **kwargs) -> S3Store:
    return S3Store(BUCKET, "bags", endpoint_url=endpoint, multipart_threshold=5 * MIB, part_size=5 * MIB, **kwargs)


def stored_sha256(client, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def assert_bag_stored(client, bag: Path) -> None:
    for file in bag_files(bag):
        key = f"bags/{bag.name}/{file.relpath}"
        expected = hashlib.sha256(file.path.read_bytes()).hexdigest()
        assert stored_sha256(client, key) == expected, key
        assert client.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == expected


def test_bag_uploads_and_every_object_comes_back_as_bagged(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path)
    result = store(fault_proxy.endpoint_url).upload_bag(bag)
    client = moto_s3.client()
    assert_bag_stored(client, bag)
    assert result.bytes_sent == sum(f.size for f in bag_files(bag))
    # payload first, tag files after, bagit.txt the last object written
    puts = [e.path for e in fault_proxy.exchanges if e.method == "PUT" and f"/{bag.name}/" in e.path]
    assert puts[-1].endswith(f"/{bag.name}/bagit.txt")
    assert all("/data/" in p for p in puts[:3])
    # the bag's provenance beside it and under archive_manifests/
    for key in (f"bags/{bag.name}.provenance.json", f"bags/archive_manifests/{bag.name}.json"):
        stored = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert stored == (bag / "data" / "provenance.json").read_bytes()


def test_a_second_upload_sends_zero_bytes(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=6)
    store(fault_proxy.endpoint_url).upload_bag(bag)
    fault_proxy.reset_stats()
    second = store(fault_proxy.endpoint_url).upload_bag(bag)
    assert second.bytes_sent == 0 and second.skipped == len(second.objects)
    assert fault_proxy.requests("PUT") == 0 and fault_proxy.requests("POST") == 0
    assert fault_proxy.body_bytes("PUT") == 0


def test_a_flaky_server_still_ends_with_a_complete_verified_bag(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=6)
    fault_proxy.fail_rate = 0.25
    fault_proxy.drop_rate = 0.1
    result = store(fault_proxy.endpoint_url, max_attempts=10).upload_bag(bag, verify=True)
    fault_proxy.fail_rate = fault_proxy.drop_rate = 0.0
    assert {kind for kind, *_ in fault_proxy.faults} >= {"fail", "drop"}
    assert len(result.objects) == len(bag_files(bag))
    assert_bag_stored(moto_s3.client(), bag)


def test_a_corrupted_transfer_is_caught_and_sent_again(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=1)
    fault_proxy.corrupt_next_put_bodies = 1  # the first object's bytes are changed on the way
    result = store(fault_proxy.endpoint_url).upload_bag(bag)
    assert len(fault_proxy.corrupted) == 1
    corrupted_path = fault_proxy.corrupted[0][1]
    puts = [e.path for e in fault_proxy.exchanges if e.method == "PUT"]
    assert puts.count(corrupted_path) == 2  # sent again after the ETag showed other bytes arrived
    assert len(result.objects) == len(bag_files(bag))
    assert_bag_stored(moto_s3.client(), bag)


def test_a_corrupted_multipart_part_is_caught_by_verify(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    big = payload_from_bytes("data/media/k/video.mp4", os.urandom(11 * MIB))
    bag = build_bag(tmp_path / "bags", "big_20261124T000000Z", [big], [("Source-Organization", "t")]).path
    fault_proxy.corrupt_next_put_bodies = 1  # one byte of the first part is changed on the way
    result = store(fault_proxy.endpoint_url, concurrency=1).upload_bag(bag, verify=True)
    assert len(fault_proxy.corrupted) == 1 and "uploadId" in fault_proxy.corrupted[0][1]
    assert fault_proxy.requests("POST") >= 4  # two multipart uploads: created and completed twice
    assert len(result.objects) == len(bag_files(bag))
    assert_bag_stored(moto_s3.client(), bag)


def test_a_different_object_is_never_overwritten(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=1)
    client = moto_s3.client()
    key = f"bags/{bag.name}/data/document/doc.md"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"# someone else's\n")
    with pytest.raises(BagUploadError, match="never overwritten"):
        store(fault_proxy.endpoint_url).upload_bag(bag)
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"# someone else's\n"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert f"bags/{bag.name}/bagit.txt" not in keys  # the stopped upload never looks complete


def test_object_lock_retention_and_version_ids(moto_s3, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET, versioning=True, object_lock=True)
    bag = make_bag(tmp_path, big_mib=1)
    result = store(moto_s3.endpoint_url, object_lock_mode="GOVERNANCE", object_lock_days=1).upload_bag(bag)
    client = moto_s3.client()
    for stored in result.objects:
        assert stored.version_id
        head = client.head_object(Bucket=BUCKET, Key=f"bags/{bag.name}/{stored.relpath}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"].timestamp() > time.time() + 23 * 3600
        assert head["VersionId"] == stored.version_id


def test_upload_command_resumes_after_sigkill_and_reports_exit_status(moto_s3, fault_proxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    files = [payload_from_bytes(f"data/warc/{i:03d}.warc.gz", os.urandom(200_000)) for i in range(40)]
    bag = build_bag(tmp_path / "bags", "many_20261124T000000Z", files, [("Source-Organization", "t")]).path
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env(fault_proxy.endpoint_url))
    env.update(PYTHONPATH=str(ROOT), AWS_CONFIG_FILE=str(tmp_path / "none"))
    command = [sys.executable, "-m", "pipeline.cli", "upload", str(bag), "--store", f"s3://{BUCKET}/bags"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fault_proxy.requests("PUT") < 10 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    client = moto_s3.client()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert 0 < len(keys) < len(files) and f"bags/{bag.name}/bagit.txt" not in keys
    sent_before = fault_proxy.requests("PUT")
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert fault_proxy.requests("PUT") - sent_before <= len(bag_files(bag)) - len(keys) + 1
    assert_bag_stored(client, bag)

    down = subprocess.run(
        [*command[:-2], "--store", "s3://no-such-bucket/x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 2 and "cannot use the bucket" in down.stderr
    no_credentials = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    refused = subprocess.run(command, env=no_credentials, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "credentials" in refused.stderr
    assert "testing" not in refused.stderr + second.stdout + second.stderr  # no key material in output


def test_s3_audit_fast_and_full_name_each_damage(moto_s3, tmp_path: Path) -> None:
    import json as _json

    from pipeline.audit import audit_s3_bag

    moto_s3.make_bucket(BUCKET, versioning=True)
    bag = make_bag(tmp_path, big_mib=6)
    s3 = store(moto_s3.endpoint_url)
    s3.upload_bag(bag)
    assert audit_s3_bag(s3, bag.name).ok
    assert audit_s3_bag(s3, bag.name, full=True).ok
    client = moto_s3.client()
    prefix = f"bags/{bag.name}/"
    client.put_object(Bucket=BUCKET, Key=prefix + "data/warc/a.warc.gz", Body=os.urandom(300_000))  # replaced
    client.delete_object(Bucket=BUCKET, Key=prefix + "data/document/doc.md")  # deleted
    client.put_object(Bucket=BUCKET, Key=prefix + "data/extra.bin", Body=b"x")  # added
    found = {(f.file, f.kind) for f in audit_s3_bag(s3, bag.name).failures}
    assert found == {
        ("data/warc/a.warc.gz", "digest-mismatch"),
        ("data/document/doc.md", "missing"),
        ("data/extra.bin", "unexpected"),
        ("bag-info.txt", "oxum-mismatch"),
    }
    # the full audit also holds each file to the size provenance.json records for it
    client.put_object(Bucket=BUCKET, Key=prefix + "data/document/doc.md", Body=b"# evid")  # cut short
    full = {(f.file, f.kind) for f in audit_s3_bag(s3, bag.name, full=True).failures}
    assert ("data/document/doc.md", "size-mismatch") in full and ("data/document/doc.md", "digest-mismatch") in full
    assert ("data/document/doc.md", "size-mismatch") not in {
        (f.file, f.kind) for f in audit_s3_bag(s3, bag.name).failures
    }  # the fast audit downloads no payload byte, provenance.json included: the stored checksum names it
    client.delete_object(Bucket=BUCKET, Key=prefix + "bagit.txt")  # as an interrupted upload leaves it
    kinds = {f.kind for f in audit_s3_bag(s3, bag.name).failures}
    assert "incomplete-upload" in kinds
    audit = audit_s3_bag(s3, bag.name)
    assert any("version" in note for note in audit.notes)  # the versioned bucket: which version was checked

    env = dict(os.environ)
    env.update(s3_env(moto_s3.endpoint_url), PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "pipeline.cli", "audit", "--config", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text(f"output:\n  state_dir: {tmp_path / 'state'}\n")
    proc = subprocess.run([*cli, f"s3://{BUCKET}/bags"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "digest-mismatch" in proc.stdout
    events = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="bags/audit/")["Contents"]]
    assert len(events) == 1 and events[0].startswith(f"bags/audit/{bag.name}/")
    event = _json.loads(client.get_object(Bucket=BUCKET, Key=events[0])["Body"].read())
    assert event["eventType"] == "fixity check" and event["outcome"] == "fail"


def test_a_replaced_object_in_a_versioned_bucket_is_named_with_the_version_checked(moto_s3, tmp_path: Path) -> None:
    """Someone puts other bytes over a payload key: both audits name the file and the version they read."""
    from pipeline.audit import audit_s3_bag, fixity_event

    moto_s3.make_bucket(BUCKET, versioning=True)
    bag = make_bag(tmp_path, big_mib=1)
    s3 = store(moto_s3.endpoint_url)
    uploaded = {o.relpath: o.version_id for o in s3.upload_bag(bag).objects}
    first = audit_s3_bag(s3, bag.name, full=True)
    assert first.ok and first.versions["data/document/doc.md"] == uploaded["data/document/doc.md"]

    client = moto_s3.client()
    manifest = dict(line.split("  ", 1)[::-1] for line in (bag / "manifest-sha256.txt").read_text().splitlines())
    # same size, and metadata claiming the manifest's sha256: only the server's checksum of the new bytes differs
    doc = client.put_object(
        Bucket=BUCKET,
        Key=f"bags/{bag.name}/data/document/doc.md",
        Body=b"# tampered\n",
        Metadata={"sha256": manifest["data/document/doc.md"]},
        ChecksumAlgorithm="SHA256",
    )["VersionId"]
    # a forgery with no sha256 checksum at all fools the fast audit; the full audit reads the bytes
    warc = client.put_object(
        Bucket=BUCKET,
        Key=f"bags/{bag.name}/data/warc/a.warc.gz",
        Body=os.urandom(300_000),
        Metadata={"sha256": manifest["data/warc/a.warc.gz"]},
        ChecksumAlgorithm="CRC32",
    )["VersionId"]
    assert doc != uploaded["data/document/doc.md"] and warc != uploaded["data/warc/a.warc.gz"]

    fast = audit_s3_bag(s3, bag.name)
    assert [(f.file, f.kind, f.version) for f in fast.failures] == [("data/document/doc.md", "digest-mismatch", doc)]
    assert f"version {doc}" in fast.failures[0].detail
    full = audit_s3_bag(s3, bag.name, full=True)
    assert {(f.file, f.kind, f.version) for f in full.failures} == {
        ("data/document/doc.md", "digest-mismatch", doc),
        ("data/warc/a.warc.gz", "digest-mismatch", warc),
    }
    assert full.versions["data/warc/a.warc.gz"] == warc
    event = fixity_event(full, True)  # what the fixity log keeps
    assert {f["version"] for f in event["failures"]} == {doc, warc} and event["versions"] == full.versions


def test_an_upload_killed_part_way_audits_as_incomplete_until_it_is_run_again(moto_s3, tmp_path: Path) -> None:
    """SIGKILL after the 5th object (payload goes first, bagit.txt last): not a pass, but incomplete-upload."""
    moto_s3.make_bucket(BUCKET)
    files = [payload_from_bytes(f"data/media/{i:02d}.jpg", os.urandom(20_000)) for i in range(12)]
    bag = build_bag(tmp_path / "bags", "cut_20261124T000000Z", files, [("Source-Organization", "t")]).path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PRESERVE_"))}
    env.update(s3_env(moto_s3.endpoint_url), PYTHONPATH=str(ROOT), AWS_CONFIG_FILE=str(tmp_path / "none"))
    config = tmp_path / "c.yaml"
    config.write_text(f"output:\n  state_dir: {tmp_path / 'state'}\n  manifests_dir: {tmp_path / 'm'}\n")
    cli = [sys.executable, "-m", "pipeline.cli"]
    upload = [*cli, "upload", str(bag), "--store", f"s3://{BUCKET}/bags", "--config", str(config)]
    report = tmp_path / "report.json"
    audit = [*cli, "audit", f"s3://{BUCKET}/bags", "--config", str(config), "--report", str(report)]

    killed = subprocess.run(upload, env={**env, "PRESERVE_CRASH_AT": "upload-object:5"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 5 and all(f"/{bag.name}/data/" in k for k in keys)

    cut = subprocess.run([*audit, "--fast"], env=env, capture_output=True, text=True, timeout=60)
    assert cut.returncode == 1, cut.stderr
    assert f"FAIL  {bag.name}  bagit.txt  incomplete-upload" in cut.stdout
    (event,) = json.loads(report.read_text())
    assert event["outcome"] == "fail" and "incomplete-upload" in {f["kind"] for f in event["failures"]}

    again = subprocess.run(upload, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "5 already there" in again.stdout, again.stderr
    whole = subprocess.run(audit, env=env, capture_output=True, text=True, timeout=60)  # full: every byte read
    assert whole.returncode == 0, whole.stdout
    (event,) = json.loads(report.read_text())
    assert event["outcome"] == "pass" and event["eventDetail"] == "full" and event["files"] == len(bag_files(bag))


def test_the_full_s3_audit_checks_sha512_and_reads_each_object_once(moto_s3, fault_proxy, tmp_path: Path) -> None:
    """A bag whose sha512 line of a (multipart) file is wrong, sha256 right: the fast audit cannot see it
    and downloads no payload; the full audit streams each object once through both digests and names it
    (a tag file read for its text is hashed from those bytes, not downloaded again)."""
    from pipeline.audit import audit_s3_bag
    from tests.test_audit import edit_sha512_line

    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=6)
    big = "data/media/k/clip [x] حارم.mp4"
    edit_sha512_line(bag, big)
    s3 = store(fault_proxy.endpoint_url)
    s3.upload_bag(bag)
    payload = [f.relpath for f in bag_files(bag) if not f.is_tag]

    def gets() -> Counter[str]:
        paths = (unquote(urlsplit(e.path).path) for e in fault_proxy.exchanges if e.method == "GET")
        return Counter(p.removeprefix(f"/{BUCKET}/bags/{bag.name}/") for p in paths)

    fault_proxy.reset_stats()
    assert audit_s3_bag(s3, bag.name).ok
    assert not any(gets()[relpath] for relpath in payload)  # no payload byte downloaded
    fault_proxy.reset_stats()
    full = audit_s3_bag(s3, bag.name, full=True)
    assert [(f.file, f.kind) for f in full.failures] == [(big, "digest-mismatch")]
    assert "sha512" in full.failures[0].detail
    every = [f.relpath for f in bag_files(bag)]
    assert {relpath: gets()[relpath] for relpath in every} == dict.fromkeys(every, 1)  # tag files too: once each


def test_s3_bag_whose_manifest_leaves_the_bag_is_hostile_and_nothing_outside_is_read(
    moto_s3, fault_proxy, tmp_path: Path
) -> None:
    """A bag that comes back from storage naming `../../secret` or `/etc/passwd` in its manifest: both audits
    report the entries as hostile and never ask the store for any key outside the bag."""
    from pipeline.audit import audit_s3_bag

    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=1)
    store(moto_s3.endpoint_url).upload_bag(bag)
    client = moto_s3.client()
    hostile_lines = f"{'0' * 64}  data/../../secret\n{'0' * 64}  /etc/passwd\n".encode()
    manifest = (bag / "manifest-sha256.txt").read_bytes() + hostile_lines  # edited where it is stored
    client.put_object(Bucket=BUCKET, Key=f"bags/{bag.name}/manifest-sha256.txt", Body=manifest)
    client.put_object(Bucket=BUCKET, Key="secret", Body=b"outside the bag")  # what ../../ would reach
    client.put_object(Bucket=BUCKET, Key="bags/secret", Body=b"outside the bag")
    through_proxy = store(fault_proxy.endpoint_url)
    for full in (False, True):
        fault_proxy.reset_stats()
        audit = audit_s3_bag(through_proxy, bag.name, full=full)
        hostile = {f.file for f in audit.failures if f.kind == "hostile"}
        assert {"data/../../secret", "/etc/passwd"} <= hostile
        touched = [e.path for e in fault_proxy.exchanges if e.method in ("GET", "HEAD")]
        outside = [p for p in touched if f"/bags/{bag.name}/" not in p and "list-type" not in p]
        assert outside == [], outside


def test_bytes_that_differ_from_the_stores_own_checksum_are_a_failure_not_a_crash(moto_s3, tmp_path: Path) -> None:
    """A store serving bytes that do not match the checksum it recorded (moto keeps whatever checksum it is
    sent, as a damaged S3-compatible store might): botocore refuses the download, and the audit names the
    file instead of stopping. Here a tag file edited after sealing is uploaded under its sealed checksum."""
    from pipeline.audit import audit_s3_bag

    moto_s3.make_bucket(BUCKET)
    bag = make_bag(tmp_path, big_mib=1)
    with (bag / "manifest-sha256.txt").open("a", encoding="utf-8") as manifest:
        manifest.write("\n")  # the tag manifest (and so the checksum sent) still names the sealed bytes
    s3 = store(moto_s3.endpoint_url)
    s3.upload_bag(bag)
    for full in (False, True):
        audit = audit_s3_bag(s3, bag.name, full=full)
        failures = {(f.file, f.kind) for f in audit.failures}
        assert ("manifest-sha256.txt", "digest-mismatch") in failures, failures
        assert any("store's own checksum" in f.detail for f in audit.failures)
