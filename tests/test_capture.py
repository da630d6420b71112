"""Capture against a real local web site: WARC records, digests, retries, limits, the address guard."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from pipeline.capture.batch import Capturer
from pipeline.config import CaptureSettings
from pipeline.ledger import Ledger
from pipeline.records import Link, Target
from pipeline.resolve import resolve
from tests.support import site as fixture_site

WARCIO = [sys.executable, "-m", "warcio.cli"]


def settings(**overrides) -> CaptureSettings:
    base = {
        "allow_private_addresses": True,
        "per_host_rate": 1000.0,
        "read_timeout": 1.0,
        "connect_timeout": 2.0,
        "retries": 2,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "media": False,
    }
    return CaptureSettings(**{**base, **overrides})


def targets_for(*urls: str) -> list[Target]:
    return resolve([Link(source="test", href=u, url=u, syntax="argument") for u in urls]).targets


def capture(out: Path, urls: list[str], **overrides) -> list:
    with Ledger(out / "ledger.sqlite") as ledger:
        return Capturer(out, settings(**overrides), ledger).run(targets_for(*urls))


def responses(warc: Path) -> dict[str, tuple[object, bytes]]:
    """Response records of a WARC by target URI: (record, payload as stored)."""
    found = {}
    with warc.open("rb") as handle:
        for record in ArchiveIterator(handle):
            if record.rec_type == "response":
                uri = record.rec_headers.get_header("WARC-Target-URI")
                found[uri] = (record, record.raw_stream.read())  # the payload as stored, not decoded
    return found


def assert_cited(out: Path, captures: list) -> None:
    """Every record a capture cites is found at its offset and length, with its id, type and URI."""
    for capture in captures:
        for cited in capture.warc_records:
            with (out / cited.file).open("rb") as handle:
                handle.seek(cited.offset)
                raw = handle.read(cited.length)
            (record,) = list(ArchiveIterator(io.BytesIO(raw)))  # exactly one whole record
            assert record.rec_headers.get_header("WARC-Record-ID") == cited.record_id
            assert record.rec_type == cited.record_type
            assert (record.rec_headers.get_header("WARC-Target-URI") or "") == cited.target_uri


def validate(warc: Path) -> str:
    check = subprocess.run([*WARCIO, "check", "-v", str(warc)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    index = subprocess.run([*WARCIO, "index", str(warc)], capture_output=True, text=True)
    assert index.returncode == 0, index.stderr
    return index.stdout


def test_local_site_is_captured_byte_exact(site, tmp_path: Path) -> None:
    urls = {
        "page": site.url("/page.html"),
        "pdf": site.url("/doc.pdf"),
        "redirect": site.url("/redirect/3"),
        "missing": site.url("/missing"),
        "flaky": site.url("/flaky?key=a"),
        "drop": site.url("/drop"),
        "stall": site.url("/stall?seconds=3"),
        "ratelimit": site.url("/ratelimit?key=b"),
    }
    captures = capture(tmp_path, list(urls.values()))
    by_url = {c.url: c for c in captures}
    assert set(by_url) == set(urls.values())

    page = by_url[urls["page"]]
    assert (page.outcome, page.http_status, page.title) == ("ok", 200, fixture_site.PAGE_TITLE)
    assert page.details["requisites"]["captured"] == 4  # image, stylesheet, script, and the stylesheet's image
    assert by_url[urls["pdf"]].outcome == "ok"
    redirect = by_url[urls["redirect"]]
    assert (redirect.outcome, redirect.final_url) == ("ok", site.url("/page.html"))
    missing = by_url[urls["missing"]]
    assert (missing.outcome, missing.http_status, missing.retryable) == ("failed", 404, False)
    assert site.hits("/missing") == 1  # a 404 is never retried
    flaky = by_url[urls["flaky"]]
    assert (flaky.outcome, flaky.http_status, flaky.attempts) == ("ok", 200, 2)
    drop = by_url[urls["drop"]]
    assert drop.outcome == "failed" and drop.retryable and "connection broken after 1000 bytes" in drop.error
    assert site.hits("/drop") == 3  # retried twice
    stall = by_url[urls["stall"]]
    assert stall.outcome == "failed" and "timed out" in stall.error.lower()
    ratelimit = by_url[urls["ratelimit"]]
    assert (ratelimit.outcome, ratelimit.attempts) == ("ok", 2)
    times = [r.time for r in site.requests if r.path == "/ratelimit?key=b"]
    assert times[1] - times[0] >= 0.95  # Retry-After: 1 honoured

    served = {
        urls["page"]: fixture_site.PAGE_HTML,
        urls["pdf"]: fixture_site.PDF_BYTES,
        site.url("/img/a.png"): fixture_site.PNG_A,
        site.url("/css/site.css"): fixture_site.CSS_BYTES,
        site.url("/js/app.js"): fixture_site.JS_BYTES,
        site.url("/img/bg.png"): fixture_site.PNG_BG,
        urls["flaky"]: fixture_site.FLAKY_BODY,
        urls["missing"]: fixture_site.NOT_FOUND_HTML,
    }
    checked = set()
    for capture_ in captures:
        for file in capture_.files:
            warc = tmp_path / file.path
            assert hashlib.sha256(warc.read_bytes()).hexdigest() == file.sha256
            validate(warc)
            for uri, (record, payload) in responses(warc).items():
                digest = record.rec_headers.get_header("WARC-Payload-Digest")
                assert digest == "sha256:" + hashlib.sha256(payload).hexdigest()
                assert record.rec_headers.get_header("WARC-Type") == "response"
                if uri in served:
                    assert payload == served[uri], uri
                    checked.add(uri)
    assert checked == set(served)


def test_redirect_chain_is_one_pair_per_hop(site, tmp_path: Path) -> None:
    (result,) = capture(tmp_path, [site.url("/redirect/3")], requisites=False)
    warc = tmp_path / result.files[0].path
    index = validate(warc)
    pairs = [(r.record_type, r.target_uri) for r in result.warc_records]
    hops = ["/redirect/3", "/redirect/2", "/redirect/1", "/page.html"]
    assert pairs == [(kind, site.url(p)) for p in hops for kind in ("request", "response")]
    assert [r.http_status for r in result.warc_records if r.record_type == "response"] == [302, 301, 307, 200]
    assert index.count('"warc-type": "response"') == 4 and index.count('"warc-type": "request"') == 4
    with warc.open("rb") as handle:
        records = list(ArchiveIterator(handle))
    assert records[0].rec_type == "warcinfo"
    assert all(r.rec_headers.protocol == "WARC/1.1" for r in records)
    by_id = {r.rec_headers.get_header("WARC-Record-ID"): r for r in records}
    for record in records:
        if record.rec_type == "response":
            partner = by_id[record.rec_headers.get_header("WARC-Concurrent-To")]
            assert partner.rec_type == "request"
            assert partner.rec_headers.get_header("WARC-Target-URI") == record.rec_headers.get_header("WARC-Target-URI")
            assert record.rec_headers.get_header("WARC-IP-Address") == "127.0.0.1"


def test_cookie_set_on_a_redirect_hop_is_sent_on_the_next(site, tmp_path: Path) -> None:
    """The session's cookie jar works as with `Session.get`: a hop's Set-Cookie goes out on the next hop."""

    def set_cookie(h: fixture_site.SiteHandler) -> None:
        h.respond(302, b"", headers=[("Set-Cookie", "consent=yes; Path=/"), ("Location", "/needs-cookie")])

    def needs_cookie(h: fixture_site.SiteHandler) -> None:
        cookie = h.headers.get("Cookie") or ""
        h.respond(200 if "consent=yes" in cookie else 403, f"<title>{cookie}</title>".encode())

    site.add_route("/set-cookie", set_cookie)
    site.add_route("/needs-cookie", needs_cookie)
    (result,) = capture(tmp_path, [site.url("/set-cookie")], requisites=False)
    assert result.outcome == "ok" and result.http_status == 200 and result.title == "consent=yes"
    requests = responses(tmp_path / result.files[0].path)
    assert set(requests) == {site.url("/set-cookie"), site.url("/needs-cookie")}


@pytest.mark.parametrize(
    ("path", "wire_body", "decoded"),
    [
        ("/chunked", fixture_site.CHUNKED_BODY, fixture_site.CHUNKED_BODY),
        ("/gzip", fixture_site.GZIP_BODY, fixture_site.GZIP_PLAIN),
        ("/chunked-gzip", fixture_site.GZIP_BODY, fixture_site.GZIP_PLAIN),
    ],
)
def test_payload_digest_covers_the_dechunked_entity_body(site, tmp_path: Path, path, wire_body, decoded) -> None:
    (result,) = capture(tmp_path, [site.url(path)])
    warc = tmp_path / result.files[0].path
    validate(warc)
    ((record, payload),) = responses(warc).values()
    # the payload is the entity body: chunk framing removed, content encoding kept
    assert payload == wire_body
    assert record.rec_headers.get_header("WARC-Payload-Digest") == "sha256:" + hashlib.sha256(wire_body).hexdigest()
    assert (gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload) == decoded
    http_headers = dict(record.http_headers.headers)
    assert "Transfer-Encoding" not in http_headers  # it would make readers de-chunk the body again
    if "chunked" in path:
        assert http_headers["X-Archive-Orig-Transfer-Encoding"] == "chunked"
    response = next(r for r in result.warc_records if r.record_type == "response")
    assert response.payload_sha256 == hashlib.sha256(wire_body).hexdigest()
    assert response.payload_sha512 == hashlib.sha512(wire_body).hexdigest()


def test_public_looking_name_resolving_to_loopback_is_refused(site, tmp_path: Path) -> None:
    url = f"http://evidence.example.org:{site.port}/page.html"

    def resolver(host: str, port: int) -> list[str]:
        assert host == "evidence.example.org"
        return ["127.0.0.1"]

    for allow, outcome in ((False, "failed"), (True, "ok")):
        out = tmp_path / str(allow)
        with Ledger(out / "ledger.sqlite") as ledger:
            capturer = Capturer(
                out, settings(allow_private_addresses=allow, requisites=False), ledger, resolver=resolver
            )
            (result,) = capturer.run(targets_for(url))
        assert result.outcome == outcome
        if not allow:
            assert "127.0.0.1 (loopback)" in result.error and not result.retryable
    assert site.hits("/page.html") == 1  # only the allowed run reached the server


def test_redirect_to_metadata_address_is_refused(site, tmp_path: Path) -> None:
    site.add_route(
        "/to-metadata",
        lambda h: h.respond(302, b"", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/"}),
    )
    # the local site is allowed by name; everything else non-public stays refused
    (result,) = capture(
        tmp_path, [site.url("/to-metadata")], allow_private_addresses=False, allowed_networks=["127.0.0.0/8"]
    )
    assert result.outcome == "failed"
    assert "169.254.169.254 (link-local)" in result.error
    assert [r.http_status for r in result.warc_records if r.record_type == "response"] == [302]


def test_redirect_to_file_scheme_is_refused(site, tmp_path: Path) -> None:
    site.add_route("/to-file", lambda h: h.respond(302, b"", "text/plain", {"Location": "file:///etc/passwd"}))
    (result,) = capture(tmp_path, [site.url("/to-file")])
    assert result.outcome == "failed" and "non-http(s)" in result.error


def test_body_over_the_limit_is_refused_and_nothing_is_left(site, tmp_path: Path) -> None:
    (result,) = capture(tmp_path, [site.url("/bytes/200000")], max_body_bytes=100_000)
    assert result.outcome == "failed" and "over the limit" in result.error and not result.retryable
    assert not list((tmp_path / ".tmp").iterdir())


def test_a_rerun_skips_what_is_held_and_retries_what_failed(site, tmp_path: Path) -> None:
    urls = [site.url("/page.html"), site.url("/missing")]
    first = capture(tmp_path, urls, requisites=False)
    assert [c.outcome for c in first] == ["ok", "failed"]
    second = capture(tmp_path, urls, requisites=False)
    assert [c.outcome for c in second] == ["skipped", "failed"]
    assert site.hits("/page.html") == 1 and site.hits("/missing") == 2
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        attempts = ledger.attempts()
    assert sorted((a.url, a.outcome) for a in attempts) == sorted(
        [(urls[0], "ok"), (urls[1], "failed"), (urls[1], "failed")]
    )
    # one group file per run: the first holds both targets, the second the retried 404
    files = sorted((tmp_path / "warc").iterdir())
    assert len(files) == 2
    assert {f.path for c in first for f in c.files} == {f"warc/{files[0].name}"}
    assert set(responses(files[0])) == set(urls) and set(responses(files[1])) == {urls[1]}
    assert_cited(tmp_path, first + second)


def test_small_targets_share_group_files_and_a_large_one_has_its_own(site, tmp_path: Path) -> None:
    pages = [site.url(f"/latency/g{i}") for i in range(5)]
    noise = os.urandom(3 * 1024 * 1024)  # incompressible: over the 1 MiB a target's records may keep in memory
    site.add_route("/noise", lambda h: h.respond(200, noise, "application/octet-stream"))
    large = site.url("/noise")
    captures = capture(tmp_path, [*pages, large], requisites=False, warc_group_targets=3)
    assert [c.outcome for c in captures] == ["ok"] * 6
    by_url = {c.url: c.files[0].path for c in captures}
    groups = [by_url[u] for u in pages]
    assert groups[0] == groups[1] == groups[2] != groups[3] == groups[4]  # three, then the rest at the end
    assert by_url[large] not in groups and not by_url[large].startswith("warc/group-")
    assert sorted(p.name for p in (tmp_path / "warc").iterdir()) == sorted({Path(n).name for n in by_url.values()})
    for name in set(groups):
        warc = tmp_path / name
        validate(warc)
        with warc.open("rb") as handle:
            records = [(r, r.content_stream().read()) for r in ArchiveIterator(handle)]
        infos = {
            r.rec_headers.get_header("WARC-Record-ID"): (r, body) for r, body in records if r.rec_type == "warcinfo"
        }
        assert records[0][0].rec_type == "warcinfo" and len(infos) == groups.count(name)  # one per target
        assert all(r.rec_headers.get_header("WARC-Filename") == warc.name for r, _ in infos.values())
        part_of = {
            r.rec_headers.get_header("WARC-Warcinfo-ID"): r.rec_headers.get_header("WARC-Target-URI")
            for r, _ in records
            if r.rec_type == "response"
        }
        assert set(part_of) == set(infos)  # each target's records name its own warcinfo, in the same file
        for info_id, uri in part_of.items():
            assert f"isPartOf: {uri}".encode() in infos[info_id][1]
    assert_cited(tmp_path, captures)
    # and a WARC file per target, when asked
    one_each = capture(tmp_path / "single", pages, requisites=False, warc_group_targets=1)
    assert len({c.files[0].path for c in one_each}) == 5 and len(list((tmp_path / "single" / "warc").iterdir())) == 5
    assert_cited(tmp_path / "single", one_each)


def test_per_host_politeness_holds(site, tmp_path: Path) -> None:
    site.latency = 0.05
    urls = [site.url(f"/latency/{i}") for i in range(12)]
    captures = capture(tmp_path, urls, workers=6, per_host_concurrency=1, requisites=False)
    assert all(c.outcome == "ok" for c in captures)
    assert site.max_concurrency == 1
    site_two = capture(
        tmp_path / "two",
        [site.url(f"/latency/x{i}") for i in range(12)],
        workers=6,
        per_host_concurrency=3,
        requisites=False,
    )
    assert all(c.outcome == "ok" for c in site_two)
    assert 1 < site.max_concurrency <= 3


def test_video_page_gets_page_and_media_and_the_file_matches(site, mp4_file, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        captures = Capturer(tmp_path, settings(media=True), ledger).run(
            targets_for(site.url("/video_page.html"), site.url("/media/clip.mp4"))
        )
    page, page_media, direct = captures
    assert (page.fetcher, page.outcome, page.title) == ("http", "ok", fixture_site.VIDEO_PAGE_TITLE)
    assert page.details["embeds_media"] is True
    for media in (page_media, direct):
        assert (media.fetcher, media.outcome) == ("media", "ok"), media.error
        (video,) = [f for f in media.files if f.role == "media"]
        assert video.sha256 == site.mp4_sha256 == hashlib.sha256((tmp_path / video.path).read_bytes()).hexdigest()
        assert any(f.role == "info-json" for f in media.files)
        assert media.tools["yt-dlp"] and media.tools["extractor"]
    # the direct file is stored once, by yt-dlp, not also as a WARC response
    assert direct.files[0].role == "warc"
    warc = tmp_path / direct.files[0].path
    validate(warc)
    assert site.url("/media/clip.mp4") not in responses(warc)
    assert [r.record_type for r in direct.warc_records] == ["metadata"]
    with warc.open("rb") as handle:
        metadata = [r for r in ArchiveIterator(handle) if r.rec_type == "metadata"]
    assert len(metadata) == 2  # the two targets share a group file: one record per media file
    assert_cited(tmp_path, captures)


def test_yt_dlp_connections_are_held_to_the_address_policy(site, mp4_file, tmp_path: Path) -> None:
    """yt-dlp opens its own connections: a page on an allowed address whose video sits on another loopback
    address. Allowed by name, the video is downloaded; otherwise yt-dlp's connect is refused, the page is
    still captured, and the other address never sees a request."""
    clip = mp4_file.read_bytes()
    hits: list[str] = []

    class Clip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(clip)))
            self.end_headers()
            self.wfile.write(clip)

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.2", 0), Clip)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        video = f"http://127.0.0.2:{elsewhere.server_port}/clip.mp4"
        page = (
            f'<html><head><title>Elsewhere</title><meta property="og:video" content="{video}">'
            '<meta property="og:video:type" content="video/mp4"></head>'
            f'<body><video src="{video}"></video></body></html>'
        )
        site.add_route("/video-elsewhere.html", lambda h: h.respond(200, page.encode(), "text/html; charset=utf-8"))
        for networks, outcome in ((["127.0.0.1/32"], "failed"), (["127.0.0.0/8"], "ok")):
            out = tmp_path / outcome
            policy = {"allow_private_addresses": False, "allowed_networks": networks}
            captured = capture(out, [site.url("/video-elsewhere.html")], media=True, requisites=False, **policy)
            by_fetcher = {c.fetcher: c for c in captured}
            assert by_fetcher["http"].outcome == "ok"
            media = by_fetcher["media"]
            assert media.outcome == outcome, media.error
            if outcome == "failed":
                assert media.error.startswith("refused to connect to 127.0.0.2 (loopback address)")
                assert not media.retryable and hits == []
        assert hits and all(h == "/clip.mp4" for h in hits)  # reached only when allowed
        (video_file,) = [f for f in media.files if f.role == "media"]
        assert hashlib.sha256((out / video_file.path).read_bytes()).hexdigest() == hashlib.sha256(clip).hexdigest()
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()


def test_media_is_not_fetched_from_a_refused_address(site, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        (result,) = Capturer(tmp_path, settings(media=True, allow_private_addresses=False), ledger).run(
            targets_for(site.url("/media/clip.mp4"))
        )
    assert (result.fetcher, result.outcome) == ("media", "failed")
    assert "loopback" in result.error
    assert site.hits("/media/clip.mp4") == 0


def test_capture_command_prints_digests_and_exit_status(site, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("capture:\n  media: false\n  requisites: false\n  per_host_rate: 1000\n", encoding="utf-8")
    wrapped = f"https://www.google.com/url?q={site.url('/doc.pdf')}&sa=D&ust=1"
    base = [sys.executable, "-m", "pipeline.cli", "capture", "--config", str(config), "--out", str(tmp_path / "o")]
    ok = subprocess.run([*base, "--allow-private", wrapped], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    pdf_sha = hashlib.sha256(fixture_site.PDF_BYTES).hexdigest()
    assert f"payload sha256 {pdf_sha}" in ok.stdout and site.url("/doc.pdf") in ok.stdout
    failed = subprocess.run(
        [*base, "--allow-private", "--format", "jsonl", site.url("/missing"), "ftp://files.example/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "only http and https" in errors[0] and "HTTP 404" in errors[1]
    (record,) = [json.loads(line) for line in failed.stdout.splitlines()]
    assert (record["outcome"], record["http_status"]) == ("failed", 404)
    fresh = [*base[:-1], str(tmp_path / "fresh")]
    refused = subprocess.run([*fresh, site.url("/doc.pdf")], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "loopback" in refused.stderr
    usage = subprocess.run([*base], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
