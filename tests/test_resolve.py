"""Resolve: unwrapping rules, decoding exactly once, canonical form, classification, deduplication."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records import Link
from pipeline.resolve import canonicalize, classify, decode_once, map_details, resolve, unwrap


def google(target: str, domain: str = "www.google.com", param: str = "q") -> str:
    """Wrap a URL the way Google Docs exports do: the target percent-encoded once more inside `q`."""
    encoded = quote(target, safe="/:?@!,'()*;$~")
    return f"https://{domain}/url?{param}={encoded}&sa=D&ust=1538477135298000"


def link(href: str, source: str = "doc.md", syntax: str = "inline") -> Link:
    return Link(source=source, href=href, url=href, line=1, column=1, syntax=syntax)


@pytest.mark.parametrize(
    ("wrapped", "expected", "rules"),
    [
        (
            "https://www.google.com/url?q=https://www.youtube.com/watch?v%3D5cF-gIL8yzk&sa=D&ust=1538477135299000",
            "https://www.youtube.com/watch?v=5cF-gIL8yzk",
            ["google"],
        ),
        ("https://www.google.co.uk/url?q=https://ex.com/a&sa=D", "https://ex.com/a", ["google"]),
        (
            "http://google.com.sy/url?sa=t&url=https%3A%2F%2Fex.com%2Fp%3Fa%3D1&ved=x",
            "https://ex.com/p?a=1",
            ["google"],
        ),
        (
            "https://l.facebook.com/l.php?u=https%3A%2F%2Fnews.example%2Fstory%3Fid%3D7&h=AT0abc",
            "https://news.example/story?id=7",
            ["facebook"],
        ),
        (
            "https://www.youtube.com/redirect?event=video_description&q=https%3A%2F%2Fex.org%2Fdoc.pdf&v=abc",
            "https://ex.org/doc.pdf",
            ["youtube"],
        ),
        (
            # a Google link to a Facebook outbound link: unwrapped twice, each hop recorded
            google("https://l.facebook.com/l.php?u=https%3A%2F%2Fex.com%2Fdeep&h=x"),
            "https://ex.com/deep",
            ["google", "facebook"],
        ),
    ],
)
def test_wrappers_are_unwrapped_with_every_hop(wrapped: str, expected: str, rules: list[str]) -> None:
    url, hops, flags = unwrap(wrapped)
    assert url == expected
    assert [hop.rule for hop in hops] == rules
    assert hops[-1].url == expected
    assert flags == ()


def test_decoding_happens_exactly_once() -> None:
    assert decode_once("a%3Db") == "a=b"
    assert decode_once("%25D8%25AE") == "%D8%AE"  # stays encoded in the final URL
    assert decode_once("a%2520b") == "a%20b"  # never a space
    assert decode_once("a%20b") == "a%20b"  # a space that was encoded once is written back encoded
    assert decode_once("%D8%AE") == "%D8%AE"  # non-ASCII bytes are kept as escapes, not lost
    assert decode_once("%FF%FE") == "%FF%FE"  # even when they are not UTF-8
    assert decode_once("a+b") == "a+b"  # `+` is not a space in a URL


def test_second_layer_only_when_the_scheme_is_still_encoded() -> None:
    doubly = "https://www.google.com/url?q=https%253A%252F%252Fex.com%252Fa%253Fb%253D1&sa=D"
    assert unwrap(doubly)[0] == "https://ex.com/a?b=1"
    once = "https://www.google.com/url?q=https://ex.com/a%252Fb&sa=D"
    assert unwrap(once)[0] == "https://ex.com/a%2Fb"


def test_wrapper_only_on_known_hosts_and_paths() -> None:
    for url in (
        "https://example.com/url?q=https://ex.com/a",  # not Google
        "https://www.google.com/search?q=https://ex.com/a",  # Google, but not a redirect path
        "https://evil.google.com.attacker.example/url?q=https://ex.com/a",
        "https://www.google.com/url?q=javascript:alert(1)",  # only http(s) targets
        "https://redirect.example/?url=https://ex.com/a",
    ):
        assert unwrap(url) == (url, (), ())


def test_ambiguous_wrapper_keeps_best_reading_and_is_flagged() -> None:
    url, _, flags = unwrap("https://www.google.com/url?q=https://ex.com/p?a=1&b=2&sa=D&ust=1")
    assert url == "https://ex.com/p?a=1&b=2"
    assert flags == ("ambiguous",)
    (target,) = resolve([link("https://www.google.com/url?q=https://ex.com/p?a=1&b=2&sa=D")]).targets
    assert "ambiguous" in target.flags


def test_nesting_is_capped() -> None:
    url = "https://ex.com/end"
    for _ in range(20):
        url = google(url)
    final, hops, flags = unwrap(url)
    assert len(hops) == 8 and "nesting-capped" in flags
    assert final.startswith("https://www.google.com/url?")


def test_canonical_form() -> None:
    assert canonicalize("HTTPS://Ex.COM:443/a%7eb?utm_source=x&id=3&fbclid=y#frag") == "https://ex.com/a~b?id=3"
    assert canonicalize("http://ex.com:80") == "http://ex.com/"
    assert canonicalize("http://ex.com:8080/%d8%ae") == "http://ex.com:8080/%D8%AE"
    assert canonicalize("https://twitter.com/#!/user/status/1") == "https://twitter.com/#!/user/status/1"
    for variant in (
        "https://youtu.be/5cF-gIL8yzk?t=10",
        "https://m.youtube.com/watch?v=5cF-gIL8yzk&feature=share",
        "https://www.youtube.com/shorts/5cF-gIL8yzk",
        "https://www.youtube.com/embed/5cF-gIL8yzk",
    ):
        assert canonicalize(variant) == "https://www.youtube.com/watch?v=5cF-gIL8yzk"


def test_canonical_form_never_changes_what_is_fetched() -> None:
    href = "https://Ex.com/a?utm_source=x&id=3#frag"
    (target,) = resolve([link(href)]).targets
    assert target.url == href
    assert target.canonical == "https://ex.com/a?id=3"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://www.youtube.com/watch?v=5cF-gIL8yzk", "video"),
        ("https://youtu.be/5cF-gIL8yzk", "video"),
        ("https://www.youtube.com/shorts/5cF-gIL8yzk", "video"),
        ("https://www.facebook.com/1765254933690858/videos/2064178657131816/", "video"),
        ("https://fb.watch/abc123/", "video"),
        ("https://vimeo.com/123456", "video"),
        ("https://ex.com/clip.mp4", "video"),
        ("https://ex.com/photo.JPG", "image"),
        ("https://ex.com/report.pdf", "document"),
        ("https://ex.com/sheet.xlsx", "document"),
        ("https://ex.com/audio.mp3", "audio"),
        ("http://archive.fo/ootFv", "snapshot"),
        ("https://archive.ph/abcde", "snapshot"),
        ("https://web.archive.org/web/2018/https://ex.com/", "snapshot"),
        ("https://www.google.com/maps/place/X/@36.2,36.5,17z", "map"),
        ("https://maps.google.com/?q=36.2,36.5", "map"),
        ("https://www.openstreetmap.org/#map=17/36.2/36.5", "map"),
        ("https://www.google.com/search?q=maps", "page"),
        ("https://en.wikipedia.org/wiki/File:Logo.svg", "page"),
        ("https://news.example/article/1", "page"),
    ],
)
def test_classification(url: str, kind: str) -> None:
    assert classify(url)[0] == kind


def test_image_context_makes_an_extensionless_url_an_image() -> None:
    assert classify("https://cdn.example/img?id=1", ["image"])[0] == "image"
    assert classify("https://cdn.example/img?id=1", ["image", "inline"])[0] == "page"


def test_map_coordinates() -> None:
    details = map_details(
        "https://www.google.com/maps/place/36%C2%B012'36.4%22N+36%C2%B031'11.2%22E/@36.210025,36.5197782,261m"
        "/data=!3m1!1e3!4m5!3m4!1s0x0:0x0!8m2!3d36.210121!4d36.519764"
    )
    assert (details["lat"], details["lon"]) == (36.210121, 36.519764)
    sources = [c["source"] for c in details["coordinates"]]
    assert sources == ["place", "dms", "viewport"]
    dms = details["coordinates"][1]
    assert dms["lat"] == pytest.approx(36 + 12 / 60 + 36.4 / 3600)
    assert dms["lon"] == pytest.approx(36 + 31 / 60 + 11.2 / 3600)
    assert map_details("https://www.openstreetmap.org/?mlat=-33.9&mlon=18.4")["lon"] == 18.4


def test_deduplication_lists_every_link_and_document() -> None:
    links = [
        link(google("https://www.youtube.com/watch?v=5cF-gIL8yzk"), source="a.md"),
        link("https://youtu.be/5cF-gIL8yzk", source="b.md"),
        link("https://ex.com/page?utm_campaign=x", source="a.md"),
        link("https://ex.com/page", source="b.md"),
    ]
    targets = resolve(links).targets
    assert len(targets) == 2
    video, page = targets
    assert video.url == "https://www.youtube.com/watch?v=5cF-gIL8yzk"  # first appearance is fetched
    assert video.sources == ("a.md", "b.md") and len(video.links) == 2
    assert page.sources == ("a.md", "b.md")


# -- properties ---------------------------------------------------------------------------------------

_UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;="
_pct = st.sampled_from("0123456789ABCDEF").flatmap(lambda a: st.sampled_from("0123456789ABCDEF").map(lambda b: a + b))
_pchar = st.one_of(st.sampled_from(_UNRESERVED + _SUB_DELIMS + ":@"), _pct.map(lambda h: "%" + h))
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@st.composite
def http_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    labels = draw(st.lists(_label, min_size=1, max_size=3))
    host = ".".join([*labels, draw(st.sampled_from(["org", "net", "sy", "example", "info"]))])
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    segments = draw(st.lists(st.lists(_pchar, max_size=8).map("".join), max_size=4))
    path = "/" + "/".join(segments)
    query = draw(st.one_of(st.just(""), st.lists(st.one_of(_pchar, st.sampled_from("/?")), max_size=16).map("".join)))
    fragment = draw(st.one_of(st.just(""), st.lists(_pchar, max_size=8).map("".join)))
    url = f"{scheme}://{host}{port}{path}"
    if query:
        url += "?" + query
    if fragment:
        url += "#" + fragment
    return url


@settings(max_examples=400, deadline=None)
@given(url=http_urls(), domain=st.sampled_from(["www.google.com", "google.com", "www.google.de", "www.google.com.sy"]))
def test_google_wrapping_round_trips_exactly(url: str, domain: str) -> None:
    (target,) = resolve([link(google(url, domain))]).targets
    assert target.url == url
    assert [hop.rule for hop in target.hops] == ["google"]
    assert target.flags == ()


@settings(max_examples=300, deadline=None)
@given(url=http_urls())
def test_resolving_is_idempotent(url: str) -> None:
    once, _, _ = unwrap(google(url))
    again, hops, _ = unwrap(once)
    assert again == once and hops == ()
    assert canonicalize(canonicalize(once)) == canonicalize(once)


@settings(max_examples=300, deadline=None)
@given(href=st.text(max_size=200))
def test_any_href_resolves_without_raising(href: str) -> None:
    resolution = resolve([link(href)])
    assert len(resolution.targets) + len(resolution.rejected) == 1
