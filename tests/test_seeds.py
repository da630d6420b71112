"""The two seed documents: every link found, unwrapped exactly, located exactly.

Expected counts are taken from the documents independently of the extractor (plain scans of the text
and a plain YAML load), so a link the extractor misses makes these tests fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.extract import DocumentSettings, extract_file
from pipeline.resolve import resolve

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ROOT / "documents" / "000_57833927fbecfe78.txt"
INVESTIGATION = ROOT / "documents" / "002_a9fc09c2c0e03313.txt"
SEEDS = ROOT.parent / "shared" / "seeds"


def test_sample_corpus_is_a_copy_of_the_seeds() -> None:
    if not SEEDS.is_dir():
        pytest.skip("shared/seeds is not beside this checkout")
    for name in (ARTICLE.name, INVESTIGATION.name):
        assert (ROOT / "documents" / name).read_bytes() == (SEEDS / name).read_bytes()


@pytest.fixture(scope="module")
def investigation():
    return extract_file(INVESTIGATION, DocumentSettings(base_url="https://syrianarchive.org/"))


@pytest.fixture(scope="module")
def article():
    return extract_file(ARTICLE, DocumentSettings())


def test_every_google_wrapped_link_is_found(investigation) -> None:
    text = INVESTIGATION.read_text(encoding="utf-8")
    written = re.findall(r"\]\((https://www\.google\.com/url\?q=[^)\s]+)\)", text)
    assert len(written) == 32
    found = [link.href for link in investigation.links if link.href.startswith("https://www.google.com/url?")]
    assert found == written  # same links, same order, nothing extra


def test_every_relative_image_is_found_and_made_absolute(investigation) -> None:
    text = INVESTIGATION.read_text(encoding="utf-8")
    written = re.findall(r"!\[[^\]]*\]\((/assets/[^)\s]+)\)", text)
    assert len(written) == 35
    images = [link for link in investigation.links if link.syntax == "image"]
    assert [link.href for link in images] == written
    assert all(link.url == "https://syrianarchive.org" + link.href for link in images)
    assert len(investigation.links) == 32 + 35


def test_front_matter_links_are_found(article) -> None:
    text = ARTICLE.read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---\n")[1])
    internal = []

    def walk(obj, path):
        if isinstance(obj, dict):
            if obj.get("type") == "internal":
                internal.append((path, obj["page"]))
            for key, value in obj.items():
                walk(value, f"{path}.{key}" if path else key)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                walk(value, f"{path}[{i}]")

    walk(meta, "")
    assert len(internal) == 14
    wiki = [(link.key_path, link.href) for link in article.links if link.syntax == "wiki-page"]
    assert wiki == internal
    img = [link for link in article.links if link.key_path == "img"]
    assert [link.url for link in img] == [meta["img"]]
    files = {link.key_path: link.url for link in article.links if link.syntax == "wiki-file"}
    assert files == {
        "infoboxes[0].image.text": "https://en.wikipedia.org/wiki/File:FSA_soldiers_in_truck_moving.jpg",
        "infoboxes[0].combatant2.text": "https://en.wikipedia.org/wiki/File:SyrianNationalCoalitionOfficialLogo.svg",
    }
    assert len(article.links) == 1 + 14 + 2


def test_wiki_titles_become_correctly_encoded_urls(article) -> None:
    by_path = {link.key_path: link.url for link in article.links}
    assert by_path["infoboxes[0].partof.links[0]"] == (
        "https://en.wikipedia.org/wiki/Idlib_Governorate_clashes_(June_2012%E2%80%93April_2013)"
    )
    assert by_path["infoboxes[0].place.links[0]"] == "https://en.wikipedia.org/wiki/Harem,_Syria"
    assert by_path["infoboxes[0].units2.links[0]"] == "https://en.wikipedia.org/wiki/Idlib_Martyrs%27_Brigade"


def test_locations_point_at_the_href_in_the_file(investigation) -> None:
    lines = INVESTIGATION.read_text(encoding="utf-8").split("\n")
    for link in investigation.links:
        line = lines[link.line - 1]
        assert line[link.column - 1 :].startswith(link.href), link.location


EXPECTED_TARGETS = {
    # YouTube: `%3D` inside q is the target's own `=`
    "de-escalation Zones": "https://www.youtube.com/watch?v=5cF-gIL8yzk",
    # Facebook: `%253A` is an encoded `%3A`, which stays encoded in the target
    "video": "https://www.facebook.com/1765254933690858/videos/2064178657131816/"
    "?fb_dtsg_ag=AdwdTli_SrLh0UU425oJ0cv5lMKp5rNLV9yEkfYRHMKQoQ%3AAdzKVR0kfB1SJ7CB--TxGzlxF3bmCYCppYEH4Dp0eF573w",
    # archive.today snapshot over plain http
    "post": "http://archive.fo/ootFv",
    # Google Maps: `%25C2%25B0` → `%C2%B0` (degree sign), `%2522` → `%22`, `%2B` → `+`, `%3D` → `=`
    "The first airstrike": "https://www.google.com/maps/place/36%C2%B012'33.5%22N+36%C2%B031'12.0%22E"
    "/@36.2092191,36.519996,179m/data=!3m1!1e3!4m5!3m4!1s0x0:0x0!8m2!3d36.2093028!4d36.5199889",
    # Arabic PDF: Arabic stays percent-encoded (`%D8%AE`), `%2520` → `%20`, never a space
    "map of control and influence": "https://www.omrandirasat.org//assets/investigations/Harem/M.C.A.P/"
    "%D8%AE%D8%B1%D9%8A%D8%B7%D8%A9%20%D8%A7%D9%84%D9%86%D9%81%D9%88%D8%B0%20%D9%88%D8%A7%D9%84%D8%B3%D9%8A"
    "%D8%B7%D8%B1%D8%A9%20%D9%81%D9%8A%20%D8%B3%D9%88%D8%B1%D9%8A%D8%A9%20%D9%88%D8%BA%D8%B1%D8%A8%20%D8%A7"
    "%D9%84%D8%B9%D8%B1%D8%A7%D9%82%20-%2015%20%D9%86%D9%8A%D8%B3%D8%A7%D9%86.pdf",
    # esyria.sy: the target's own query (`%3D`, `%26`) decoded once
    "Source": None,  # several links share this text; checked below by host
    "Kafar Yahmoul": "https://www.facebook.com/k.nn.hos/posts/2141499275865092?__tn__=-R",
    "Syrian Civil Defense": "https://www.facebook.com/SyrianCivilDefenceIdlibWhiteHelmets/photos/"
    "a.479509938814734/1609876025778114/?type=3",
    "late-afternoon prayer call": "https://timesprayer.today/1677-month03-year2018-%D8%AC%D8%AF%D9%88%D9%84-"
    "%D9%85%D9%88%D8%A7%D9%82%D9%8A%D8%AA-%D8%A7%D9%84%D8%B5%D9%84%D8%A7%D8%A9-%D8%B4%D9%87%D8%B1-"
    "%D9%85%D8%A7%D8%B1%D8%B3-%D8%A5%D8%AF%D9%84%D8%A8.html",
}


def test_unwrapped_targets_are_exactly_right(investigation) -> None:
    resolution = resolve(investigation.links)
    by_text: dict[str, set[str]] = {}
    for target in resolution.targets:
        for link in target.links:
            by_text.setdefault(link.text, set()).add(target.url)
    for text, expected in EXPECTED_TARGETS.items():
        if expected is not None:
            assert expected in by_text[text], text
    esyria = [t.url for t in resolution.targets if "esyria.sy" in t.url]
    assert esyria == [
        "http://esyria.sy/sites/code/index.php?site=idleb&p=stories&category=ruins&filename=201011221500123"
    ]


def test_targets_are_deduplicated_and_classified(investigation) -> None:
    resolution = resolve(investigation.links)
    assert not resolution.rejected
    kinds: dict[str, int] = {}
    for target in resolution.targets:
        kinds[target.kind] = kinds.get(target.kind, 0) + 1
        assert target.hops or target.url.startswith("https://syrianarchive.org/")
    # 32 wrapped links name 24 distinct targets (the same video and map cited several times)
    assert len(resolution.targets) == 24 + 35
    assert kinds == {"image": 35, "video": 12, "snapshot": 3, "page": 5, "document": 2, "map": 2}
    g4 = next(t for t in resolution.targets if t.url.endswith("g4SJoYgo7hU"))
    assert [link.location for link in g4.links] == ["36:100", "41:48", "46:49"]
    first_strike = next(t for t in resolution.targets if t.kind == "map" and "33.5" in t.url)
    assert first_strike.details["lat"] == pytest.approx(36.2093028)
    assert first_strike.details["lon"] == pytest.approx(36.5199889)
    assert len(first_strike.links) == 2
