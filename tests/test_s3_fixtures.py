"""The S3 test fixtures against real boto3: moto over HTTP on loopback, and the fault proxy in front of it.

Besides proving the fixtures, these tests pin what moto's server mode does and does not check
(signatures, checksums, ETags, Object Lock), since the store's own tests rely on those facts.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import importlib.util
import os
import time
import zlib
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.support.s3 import REGION, FaultProxy, MotoS3, s3_client, s3_env

BUCKET = "bags"
MIB = 1 << 20
DATA = bytes(range(256)) * 64  # 16 KiB, every byte value present


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def retrying(max_attempts: int) -> Config:
    """botocore's `max_attempts` counts retries (total attempts = 1 + max_attempts), unlike `total_max_attempts`."""
    return Config(retries={"max_attempts": max_attempts, "mode": "standard"})


def raw_get(moto_s3: MotoS3, key: str) -> bytes:
    """Read an object without botocore's response checksum validation, to see the bytes as stored."""
    client = moto_s3.client(config=Config(response_checksum_validation="when_required"))
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


# -- moto directly ---------------------------------------------------------------------------------------


def test_put_and_get_directly(moto_s3: MotoS3) -> None:
    assert moto_s3.endpoint_url.startswith("http://127.0.0.1:")
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client()
    put = client.put_object(Bucket=BUCKET, Key="bag/data/a.bin", Body=DATA)
    assert put["ETag"] == md5_etag(DATA)
    assert client.get_object(Bucket=BUCKET, Key="bag/data/a.bin")["Body"].read() == DATA


def test_reset_forgets_buckets(moto_s3: MotoS3) -> None:
    moto_s3.make_bucket("scratch", versioning=True)
    assert moto_s3.client().get_bucket_versioning(Bucket="scratch")["Status"] == "Enabled"
    moto_s3.reset()
    assert moto_s3.client().list_buckets()["Buckets"] == []


def test_s3_env_is_exactly_the_endpoint_and_dummy_credentials() -> None:
    env = s3_env("http://127.0.0.1:9")
    assert env == {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }


# -- through the proxy -----------------------------------------------------------------------------------


def test_proxy_relays_and_counts_put_bytes(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url)
    assert client.put_object(Bucket=BUCKET, Key="k", Body=DATA)["ETag"] == md5_etag(DATA)
    assert client.head_object(Bucket=BUCKET, Key="k")["ContentLength"] == len(DATA)
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == DATA
    assert fault_proxy.stats["PUT"] == {"requests": 1, "body_bytes": len(DATA)}
    assert fault_proxy.requests("GET") == 1 and fault_proxy.requests("HEAD") == 1
    assert ("PUT", f"/{BUCKET}/k", 200) in fault_proxy.exchanges
    assert fault_proxy.errors == []


def test_moto_checks_sigv4_only_on_request_and_the_proxy_keeps_host(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    via_proxy = fault_proxy.endpoint_url
    # By default moto verifies nothing: a wrong secret is accepted.
    s3_client(via_proxy, secret_key="wrong").put_object(Bucket=BUCKET, Key="unchecked", Body=b"x")

    with moto_s3.require_signatures() as (access_key, secret_key):
        good = s3_client(via_proxy, access_key=access_key, secret_key=secret_key)
        good.put_object(Bucket=BUCKET, Key="signed", Body=DATA)
        assert good.get_object(Bucket=BUCKET, Key="signed")["Body"].read() == DATA
        with pytest.raises(botocore.exceptions.ClientError) as wrong_secret:
            s3_client(via_proxy, access_key=access_key, secret_key="wrong").put_object(
                Bucket=BUCKET, Key="s", Body=b"x"
            )
        assert error_code(wrong_secret.value) == "SignatureDoesNotMatch"
        with pytest.raises(botocore.exceptions.ClientError) as dummy:
            moto_s3.client().list_objects_v2(Bucket=BUCKET)
        assert error_code(dummy.value) == "InvalidAccessKeyId"

        # A request signed for the proxy's Host verifies at moto only while Host is left as signed.
        request = AWSRequest(method="PUT", url=f"{via_proxy}/{BUCKET}/host-check", data=b"abc")
        S3SigV4Auth(Credentials(access_key, secret_key), "s3", REGION).add_auth(request)
        statuses = {}
        for host in (f"127.0.0.1:{fault_proxy.port}", f"127.0.0.1:{moto_s3.port}"):
            conn = http.client.HTTPConnection("127.0.0.1", moto_s3.port, timeout=10)
            conn.request("PUT", f"/{BUCKET}/host-check", body=b"abc", headers={**dict(request.headers), "Host": host})
            response = conn.getresponse()
            statuses[host] = (response.status, response.read())
            conn.close()
        assert statuses[f"127.0.0.1:{fault_proxy.port}"][0] == 200
        assert statuses[f"127.0.0.1:{moto_s3.port}"][0] == 403
        assert b"SignatureDoesNotMatch" in statuses[f"127.0.0.1:{moto_s3.port}"][1]
    # Signature checks end with the block.
    assert moto_s3.client().head_object(Bucket=BUCKET, Key="signed")["ContentLength"] == len(DATA)


def test_fail_rate_is_retried_then_raised(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url, config=retrying(2))
    fault_proxy.fail_rate = 1.0
    with pytest.raises(botocore.exceptions.ClientError) as failed:
        client.put_object(Bucket=BUCKET, Key="k", Body=DATA)
    assert error_code(failed.value) in ("InternalError", "SlowDown")
    assert fault_proxy.requests("PUT") == 3  # 1 attempt + max_attempts=2 retries
    assert all(status in (500, 503) for _, _, status in fault_proxy.exchanges)
    assert [kind for kind, _, _ in fault_proxy.faults] == ["fail"] * 3

    fault_proxy.fail_statuses = (503,)
    with pytest.raises(botocore.exceptions.ClientError) as slow:
        moto_s3.client(endpoint_url=fault_proxy.endpoint_url, config=retrying(0)).put_object(
            Bucket=BUCKET, Key="k", Body=DATA
        )
    assert error_code(slow.value) == "SlowDown"
    assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    fault_proxy.fail_rate = 0.0
    client.put_object(Bucket=BUCKET, Key="k", Body=DATA)
    assert raw_get(moto_s3, "k") == DATA


def test_drop_rate_is_retried_then_raised(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url, config=retrying(2))
    fault_proxy.drop_rate = 1.0
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.put_object(Bucket=BUCKET, Key="k", Body=DATA)
    assert fault_proxy.exchanges == [("PUT", f"/{BUCKET}/k", 0)] * 3
    assert fault_proxy.body_bytes("PUT") == 3 * len(DATA)  # the request was read in full each time
    fault_proxy.drop_rate = 0.0
    client.put_object(Bucket=BUCKET, Key="k", Body=DATA)
    assert raw_get(moto_s3, "k") == DATA


def test_down_until_answers_503_until_the_deadline(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url, config=retrying(0))
    fault_proxy.down_until = time.monotonic() + 0.3
    with pytest.raises(botocore.exceptions.ClientError) as down:
        client.list_objects_v2(Bucket=BUCKET)
    assert error_code(down.value) == "SlowDown"
    time.sleep(max(0.0, fault_proxy.down_until - time.monotonic()) + 0.01)
    assert client.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_stop_listening_refuses_then_start_listening_restores_the_port(
    moto_s3: MotoS3, fault_proxy: FaultProxy
) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url, config=retrying(0))
    client.put_object(Bucket=BUCKET, Key="k", Body=b"before")  # leaves a pooled keep-alive connection
    port = fault_proxy.port
    fault_proxy.stop_listening()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.get_object(Bucket=BUCKET, Key="k")
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).connect()
    fault_proxy.start_listening()
    assert fault_proxy.port == port
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"before"


def test_corrupted_put_reaches_moto_which_verifies_no_checksum(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url)
    fault_proxy.corrupt_next_put_bodies = 1
    put = client.put_object(Bucket=BUCKET, Key="k", Body=DATA, ChecksumSHA256=sha256_b64(DATA))
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200  # moto took the wrong bytes
    stored = raw_get(moto_s3, "k")
    assert len(stored) == len(DATA) and stored != DATA
    assert [i for i in range(len(DATA)) if stored[i] != DATA[i]] == [len(DATA) // 2]
    assert put["ETag"] == md5_etag(stored) != md5_etag(DATA)  # the ETag is the MD5 of what arrived
    assert fault_proxy.corrupted == [("PUT", f"/{BUCKET}/k", len(DATA) // 2)]
    assert fault_proxy.corrupt_next_put_bodies == 0
    # With only the value header (no x-amz-sdk-checksum-algorithm) moto stores no checksum at all.
    assert "ChecksumSHA256" not in moto_s3.client().head_object(Bucket=BUCKET, Key="k", ChecksumMode="ENABLED")

    client.put_object(Bucket=BUCKET, Key="k2", Body=DATA)  # the counter is spent
    assert raw_get(moto_s3, "k2") == DATA


def test_corrupted_put_with_sdk_checksum_stores_the_claimed_checksum(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url)
    fault_proxy.corrupt_next_put_bodies = 1
    put = client.put_object(Bucket=BUCKET, Key="k", Body=DATA, ChecksumAlgorithm="SHA256")
    # moto echoes and stores the client's claimed checksum without checking it against the bytes.
    assert put["ChecksumSHA256"] == sha256_b64(DATA)
    assert raw_get(moto_s3, "k") != DATA
    # Only botocore's own response validation on the way back notices.
    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        moto_s3.client().get_object(Bucket=BUCKET, Key="k")["Body"].read()


def test_chunked_and_aws_chunked_bodies_pass_byte_exact(moto_s3: MotoS3, fault_proxy: FaultProxy) -> None:
    """botocore only sends aws-chunked over HTTPS, so the framing is exercised with hand-made requests."""
    moto_s3.make_bucket(BUCKET)
    inner = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    aws_headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": "11",
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("chunked", {}, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        ("aws", aws_headers, b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)),
        ("aws-corrupt", aws_headers, b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    for key, headers, wire in cases:
        fault_proxy.corrupt_next_put_bodies = int(key.endswith("corrupt"))
        conn.putrequest("PUT", f"/{BUCKET}/{key}", skip_accept_encoding=True)
        for name, value in {"Transfer-Encoding": "chunked", **headers}.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(wire)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, key
    conn.close()
    assert raw_get(moto_s3, "chunked") == b"hello world"
    assert raw_get(moto_s3, "aws") == b"hello world"
    assert raw_get(moto_s3, "aws-corrupt") == b"hello\xdfworld"  # inside the first data chunk, framing intact
    assert fault_proxy.corrupted == [("PUT", f"/{BUCKET}/aws-corrupt", len(b"b\r\nhello"))]
    assert fault_proxy.body_bytes("PUT") == 11 + 2 * len(inner)


def test_multipart_upload_file_through_proxy(moto_s3: MotoS3, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    moto_s3.make_bucket(BUCKET)
    payload = os.urandom(11 * MIB)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    client = moto_s3.client(endpoint_url=fault_proxy.endpoint_url)
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    client.upload_file(str(source), BUCKET, "big.bin", Config=transfer, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    assert fault_proxy.stats["PUT"] == {"requests": 3, "body_bytes": 11 * MIB}  # parts of 5, 5 and 1 MiB
    assert fault_proxy.requests("POST") == 2  # create and complete
    assert raw_get(moto_s3, "big.bin") == payload

    # ETag: MD5 of the parts' MD5 digests, "-<parts>"; checksum: SHA-256 of the parts' SHA-256 digests.
    parts = [payload[i : i + 5 * MIB] for i in range(0, len(payload), 5 * MIB)]
    etag = hashlib.md5(b"".join(hashlib.md5(part).digest() for part in parts)).hexdigest() + "-3"
    composite = sha256_b64(b"".join(hashlib.sha256(part).digest() for part in parts))
    head = client.head_object(Bucket=BUCKET, Key="big.bin", ChecksumMode="ENABLED")
    assert head["ETag"] == f'"{etag}"'
    assert head["ChecksumSHA256"] == composite  # moto omits the "-3" suffix AWS appends here
    attributes = client.get_object_attributes(
        Bucket=BUCKET, Key="big.bin", ObjectAttributes=["Checksum", "ObjectSize", "ETag"]
    )
    assert attributes["ETag"] == etag
    assert attributes["ObjectSize"] == 11 * MIB
    assert attributes["Checksum"] == {"ChecksumSHA256": composite, "ChecksumType": "COMPOSITE"}


# -- what moto's server mode does (pinned, so a moto upgrade that changes it is noticed) ------------------


def test_moto_checksums_etags_and_attributes(moto_s3: MotoS3) -> None:
    moto_s3.make_bucket(BUCKET)
    client = moto_s3.client()
    put = client.put_object(Bucket=BUCKET, Key="sha", Body=DATA, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == sha256_b64(DATA)
    assert put["ETag"] == md5_etag(DATA)
    head = client.head_object(Bucket=BUCKET, Key="sha", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256_b64(DATA)
    attributes = client.get_object_attributes(
        Bucket=BUCKET, Key="sha", ObjectAttributes=["Checksum", "ObjectSize", "ETag"]
    )
    assert attributes["ETag"] == md5_etag(DATA).strip('"')  # unquoted here
    assert attributes["ObjectSize"] == len(DATA)
    assert attributes["Checksum"] == {"ChecksumSHA256": sha256_b64(DATA)}

    # Without awscrt botocore cannot compute CRC64NVME; asked to compute it, moto (also without awscrt)
    # silently stores a CRC32 under the CRC64NVME name.
    if importlib.util.find_spec("awscrt") is None:
        with pytest.raises(botocore.exceptions.MissingDependencyException):
            client.put_object(Bucket=BUCKET, Key="crc", Body=DATA, ChecksumAlgorithm="CRC64NVME")

    def ask_for_crc64nvme(request: Any, **_: Any) -> None:
        request.headers["x-amz-sdk-checksum-algorithm"] = "CRC64NVME"

    crc_client = moto_s3.client(config=Config(request_checksum_calculation="when_required"))
    crc_client.meta.events.register("before-sign.s3.PutObject", ask_for_crc64nvme)
    put = crc_client.put_object(Bucket=BUCKET, Key="crc", Body=DATA)
    crc32 = b64(zlib.crc32(DATA).to_bytes(4, "big"))
    assert put["ChecksumCRC64NVME"] == crc32
    head = client.head_object(Bucket=BUCKET, Key="crc", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == crc32


def test_moto_object_lock(moto_s3: MotoS3) -> None:
    moto_s3.make_bucket(BUCKET, object_lock=True)
    client = moto_s3.client()
    assert client.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    until = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=1)
    put = client.put_object(
        Bucket=BUCKET, Key="k", Body=DATA, ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until
    )
    head = client.head_object(Bucket=BUCKET, Key="k")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] == until
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        client.delete_object(Bucket=BUCKET, Key="k", VersionId=put["VersionId"])
    assert error_code(denied.value) == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as missing:  # not implemented by moto: HTTP 500
        moto_s3.client(config=retrying(0)).get_object_retention(Bucket=BUCKET, Key="k")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    moto_s3.make_bucket("unlocked")
    with pytest.raises(botocore.exceptions.ClientError) as unlocked:
        client.put_object(
            Bucket="unlocked", Key="k", Body=DATA, ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until
        )
    assert error_code(unlocked.value) == "InvalidRequest"
