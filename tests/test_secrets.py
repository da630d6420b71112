"""Secrets never leave the process: AWS keys and a site's Authorization and Cookie headers are used, and
then found nowhere in what a full run writes (logs, reports, manifests, ledger, WARCs, bags, the bucket)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

from tests.support.s3 import MotoS3, s3_client
from tests.support.site import LocalSite, SiteHandler

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "evidence"
TOKEN = "tok-7d1c0ffee5ecret9a"
COOKIE = "sess-4b1dd3ad5ecret77"
AWS_KEY_ID = "AKIAPRESERVETEST0001"
AWS_SECRET = "aws-5ecret-b6f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4"
AWS_TOKEN = "aws-session-7oken-0badc0de"
SECRETS = (TOKEN, COOKIE, AWS_SECRET, AWS_TOKEN)


def inflate_all(data: bytes) -> bytes:
    """Every gzip member's content (WARC files are one member per record), or the bytes as they are."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    out = io.BytesIO()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.write(inflater.decompress(data))
        data = inflater.unused_data
    return out.getvalue()


def test_no_secret_reaches_any_output_of_a_full_run(tmp_path: Path, moto_s3: MotoS3) -> None:
    moto_s3.make_bucket(BUCKET)
    seen: dict[str, str | None] = {}

    def protected(h: SiteHandler) -> None:
        seen["protected"] = h.headers.get("Authorization")
        if h.headers.get("Authorization") != f"Bearer {TOKEN}" or COOKIE not in (h.headers.get("Cookie") or ""):
            h.respond(401, b"who are you?\n", "text/plain")
            return
        h.respond(200, b"<title>members only</title><a href='/away'>elsewhere</a>", "text/html")

    with LocalSite() as other, LocalSite() as site:

        def away(h: SiteHandler) -> None:  # a redirect to another host must not carry the site's credentials
            h.respond(302, b"", headers=[("Location", f"http://localhost:{other.port}/landing")])

        def landing(h: SiteHandler) -> None:
            seen["landing-authorization"] = h.headers.get("Authorization")
            seen["landing-cookie"] = h.headers.get("Cookie")
            h.respond(200, b"landed\n", "text/plain")

        site.add_route("/protected", protected)
        site.add_route("/away", away)
        other.add_route("/landing", landing)
        (tmp_path / "documents").mkdir()
        (tmp_path / "documents" / "d.md").write_text(
            f"[members]({site.url('/protected')}) and [moved]({site.url('/away')})\n", encoding="utf-8"
        )
        (tmp_path / "configs").mkdir()
        (tmp_path / "configs" / "run.yaml").write_text(
            "documents:\n  - glob: documents/*.md\n"
            "capture:\n  allow_private_addresses: true\n  per_host_rate: 100\n  retries: 0\n  media: false\n"
            "  site_headers:\n    - match: 127.0.0.1\n      headers:\n"
            "        Authorization: 'Bearer ${SITE_TOKEN}'\n        Cookie: 'session=${SITE_COOKIE}'\n"
            f"stores:\n  s3:\n    type: s3\n    bucket: {BUCKET}\n    endpoint_url: {moto_s3.endpoint_url}\n"
            "default_store: s3\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            SITE_TOKEN=TOKEN,
            SITE_COOKIE=COOKIE,
            AWS_ACCESS_KEY_ID=AWS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET,
            AWS_SESSION_TOKEN=AWS_TOKEN,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            PYTHONPATH=str(ROOT),
        )
        outputs = []
        for log_format in ("json", "text"):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "run",
                    "--config",
                    "configs/run.yaml",
                    "--log-format",
                    log_format,
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=120,
            )
            outputs += [proc.stdout, proc.stderr]
            assert proc.returncode == 0, proc.stderr.decode()
    # the credentials were used where they belong, and only there
    assert seen["protected"] == f"Bearer {TOKEN}"
    assert seen["landing-authorization"] is None and seen["landing-cookie"] is None

    places: dict[str, bytes] = {f"process output {i}": out for i, out in enumerate(outputs)}
    for path in tmp_path.rglob("*"):
        if path.is_file() and "documents" not in path.parts and "configs" not in path.parts:
            places[str(path.relative_to(tmp_path))] = inflate_all(path.read_bytes())
    client = s3_client(moto_s3.endpoint_url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            places[f"s3://{BUCKET}/{item['Key']}"] = inflate_all(body)
    warcs = [name for name in places if name.endswith(".warc.gz")]
    assert warcs and any(b"members only" in places[name] for name in warcs)  # the page itself was archived
    for name, data in places.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:8]}... found in {name}"
    # the WARC says what it left out, and where
    request_records = b"".join(places[name] for name in warcs)
    assert b"Authorization: [redacted]" in request_records and b"Cookie: [redacted]" in request_records
    assert b"redacted request headers: Authorization, Cookie" in request_records
