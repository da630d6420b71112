"""Extract: each kind of link syntax, its location, and malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.extract import DocumentError, DocumentSettings, extract_file, extract_text, wiki_page_url
from pipeline.records import Link
from pipeline.resolve import resolve


def links_of(text: str, base_url: str | None = None, suffix: str = ".md", **kw) -> list[Link]:
    result = extract_text(text, "doc" + suffix, DocumentSettings(base_url=base_url, **kw), suffix=suffix)
    assert not result.errors, result.errors
    return result.links


def at(text: str, link: Link) -> str:
    """The document text at a link's reported position."""
    line = text.split("\n")[link.line - 1]
    return line[link.column - 1 :]


MARKDOWN = """# Title

An [inline link](https://ex.com/a "title") and ![an image](https://ex.com/i.png).
A [reference link][ref] and a [collapsed one][] and an autolink <https://auto.example/x?y=1>.
Bare: https://bare.example/path, then (https://paren.example/p) and https://wiki.example/Foo_(bar).
Apostrophe: https://en.wikipedia.org/wiki/Idlib_Martyrs'_Brigade is cited.
Raw HTML: <a href="https://html.example/a">anchor</a> and <img src="/rel/img.png" alt="pic">.

| col | link |
| --- | ---- |
| 1   | [in table](https://table.example/) |

    indented code https://code.example/block

<div>
<a href="https://block.example/">html block</a>
</div>

[ref]: https://ref.example/target
[collapsed one]: <https://ref.example/collapsed>
[unused]: https://unused.example/
"""


def test_every_markdown_link_syntax_is_found_with_its_position() -> None:
    links = links_of(MARKDOWN, base_url="https://site.example/")
    by_href = {link.href: link for link in links}
    expected = {
        "https://ex.com/a": "inline",
        "https://ex.com/i.png": "image",
        "https://auto.example/x?y=1": "autolink",
        "https://bare.example/path": "bare",
        "https://paren.example/p": "bare",
        "https://wiki.example/Foo_(bar)": "bare",
        "https://en.wikipedia.org/wiki/Idlib_Martyrs'_Brigade": "bare",
        "https://html.example/a": "html-a",
        "/rel/img.png": "html-img",
        "https://table.example/": "inline",
        "https://code.example/block": "code",
        "https://block.example/": "html-a",
        "https://unused.example/": "definition",
    }
    for href, syntax in expected.items():
        assert href in by_href, href
        assert by_href[href].syntax == syntax, href
        assert at(MARKDOWN, by_href[href]).startswith(href), href
    assert by_href["/rel/img.png"].url == "https://site.example/rel/img.png"
    assert by_href["https://ex.com/a"].text == "inline link"
    assert by_href["https://html.example/a"].text == "anchor"
    # reference-style links: the citation (at its `[`) and the definition are both reported
    refs = [link for link in links if link.href == "https://ref.example/target"]
    assert sorted(link.syntax for link in refs) == ["definition", "reference"]
    citation = next(link for link in refs if link.syntax == "reference")
    assert at(MARKDOWN, citation).startswith("[reference link]")
    definition = next(link for link in refs if link.syntax == "definition")
    assert at(MARKDOWN, definition).startswith("https://ref.example/target")
    collapsed = [link for link in links if link.href == "https://ref.example/collapsed"]
    assert {link.syntax for link in collapsed} == {"reference", "definition"}


def test_bare_urls_lose_trailing_punctuation_only() -> None:
    text = "See https://ex.com/a. And https://ex.com/b, or https://ex.com/c? Also 'https://ex.com/d'!\n"
    hrefs = [link.href for link in links_of(text, suffix=".txt")]
    assert hrefs == ["https://ex.com/a", "https://ex.com/b", "https://ex.com/c", "https://ex.com/d"]


def test_front_matter_urls_and_key_paths() -> None:
    text = """---
title: T
img: https://img.example/a.jpg
sources:
  - name: x
    url: https://src.example/1
  - note: "see https://inline.example/p in the text"
cover: /images/cover.png
layout: post
---
Body https://body.example/
"""
    links = links_of(text, base_url="https://site.example/")
    by_path = {link.key_path: link for link in links if link.key_path}
    assert by_path["img"].url == "https://img.example/a.jpg"
    assert by_path["sources[0].url"].url == "https://src.example/1"
    assert by_path["sources[1].note"].url == "https://inline.example/p"
    assert by_path["cover"].url == "https://site.example/images/cover.png"
    body = [link for link in links if link.key_path is None]
    assert [(link.href, link.line, link.column) for link in body] == [("https://body.example/", 11, 6)]
    assert "layout" not in by_path


def test_front_matter_base_url_wins_over_config_but_not_command_line() -> None:
    text = "---\nbase_url: https://own.example/site/\n---\n![x](img/a.png)\n"
    assert links_of(text, base_url="https://config.example/")[-1].url == "https://own.example/site/img/a.png"
    overridden = extract_text(
        text, "d.md", DocumentSettings(base_url="https://cli.example/", base_url_is_override=True), ".md"
    )
    assert overridden.links[-1].url == "https://cli.example/img/a.png"


def test_wiki_page_urls_are_encoded_as_mediawiki_does() -> None:
    base = "https://en.wikipedia.org/wiki/"
    assert wiki_page_url("Idlib Governorate clashes (June 2012–April 2013)", base) == (
        base + "Idlib_Governorate_clashes_(June_2012%E2%80%93April_2013)"
    )
    assert wiki_page_url("syrian civil war", base) == base + "Syrian_civil_war"
    assert wiki_page_url("AT&T", base) == base + "AT%26T"
    assert wiki_page_url("C++ / Why?", base) == base + "C%2B%2B_/_Why%3F"
    assert wiki_page_url("Harem, Syria#History", base) == base + "Harem,_Syria#History"


def test_wiki_links_use_the_configured_wiki() -> None:
    text = "---\ninfoboxes:\n  - place:\n      links:\n        - type: internal\n          page: Harem\n---\n"
    links = links_of(text, wiki_base="https://ar.wikipedia.org/wiki/")
    assert [link.url for link in links] == ["https://ar.wikipedia.org/wiki/Harem"]
    assert links[0].key_path == "infoboxes[0].place.links[0]"


def test_file_names_outside_wiki_exports_are_not_wiki_files() -> None:
    text = "---\ntitle: Post\ncover: cover.jpg\n---\nText\n"
    assert links_of(text) == []


def test_relative_link_without_base_is_kept_and_flagged() -> None:
    links = links_of("![](/assets/a.png) and [p](../page.html)\n")
    assert [link.flags for link in links] == [("unresolved-relative",), ("unresolved-relative",)]
    assert all(link.url is None for link in links)
    resolution = resolve(links)
    assert [t.url for t in resolution.targets] == ["/assets/a.png", "../page.html"]
    assert all(not t.fetchable and "unresolved-relative" in t.flags for t in resolution.targets)


def test_html_document() -> None:
    html = """<!doctype html>
<html><head><base href="https://pub.example/dir/">
<meta property="og:image" content="https://pub.example/og.jpg">
<link rel="stylesheet" href="style.css"></head>
<body><p>Text with a bare https://bare.example/x and <a href="a.html?x=1&amp;y=2">a link</a>.</p>
<img src="img/one.png" srcset="img/one@2x.png 2x, img/one@3x.png 3x" alt="one">
<a href="javascript:alert(1)">js</a>
<video src="https://media.example/v.mp4" poster="poster.jpg"></video>
</body></html>
"""
    links = links_of(html, suffix=".html")
    urls = {link.url for link in links}
    assert {
        "https://pub.example/og.jpg",
        "https://pub.example/dir/style.css",
        "https://bare.example/x",
        "https://pub.example/dir/a.html?x=1&y=2",
        "https://pub.example/dir/img/one.png",
        "https://pub.example/dir/img/one@2x.png",
        "https://pub.example/dir/img/one@3x.png",
        "javascript:alert(1)",
        "https://media.example/v.mp4",
        "https://pub.example/dir/poster.jpg",
    } == urls
    link = next(link for link in links if link.href == "a.html?x=1&y=2")
    assert (link.line, link.text) == (5, "a link")
    assert at(html, link).startswith("a.html?x=1&amp;y=2")


def test_plain_text_document() -> None:
    text = "Notes\n\n  indented https://one.example/a and *not markdown* https://two.example/b_(c).\n"
    links = links_of(text, suffix=".txt")
    assert [(link.href, link.line, link.column) for link in links] == [
        ("https://one.example/a", 3, 12),
        ("https://two.example/b_(c)", 3, 53),
    ]


def test_non_http_schemes_are_reported_not_targets() -> None:
    text = "[js](javascript:alert(1)) [f](file:///etc/passwd) [m](mailto:a@b.example) [ok](https://ok.example/)\n"
    resolution = resolve(links_of(text))
    assert [t.url for t in resolution.targets] == ["https://ok.example/"]
    reasons = {r.link.href: r.reason for r in resolution.rejected}
    assert set(reasons) == {"javascript:alert(1)", "file:///etc/passwd", "mailto:a@b.example"}
    assert "javascript" in reasons["javascript:alert(1)"] and "only http and https" in reasons["file:///etc/passwd"]


def test_broken_front_matter_is_one_line_error_and_body_still_read(tmp_path: Path) -> None:
    doc = tmp_path / "broken.md"
    doc.write_text("---\ntitle: [unclosed\nimg: x\n---\nBody https://body.example/\n", encoding="utf-8")
    result = extract_file(doc)
    assert len(result.errors) == 1
    message = result.errors[0]
    assert str(doc) in message and "front matter" in message and "\n" not in message
    assert [link.href for link in result.links] == ["https://body.example/"]


def test_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    doc = tmp_path / "image.txt"
    doc.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DocumentError, match=r"image\.txt: not a text document"):
        extract_file(doc)


def test_invalid_utf8_is_a_clear_error(tmp_path: Path) -> None:
    doc = tmp_path / "latin1.md"
    doc.write_bytes("caf\xe9 https://ex.com/".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin1\.md: not valid UTF-8 text \(byte 3\)"):
        extract_file(doc)


def test_empty_file_has_no_links_and_a_warning(tmp_path: Path) -> None:
    doc = tmp_path / "empty.md"
    doc.write_bytes(b"")
    result = extract_file(doc)
    assert result.links == [] and result.errors == []
    assert result.warnings == [f"{doc}: empty document, no links"]


def test_billion_laughs_front_matter_is_cheap() -> None:
    lol = "---\na: &a [https://lol.example/, https://lol.example/]\n"
    for i in range(1, 12):
        lol += f"l{i}: &l{i} [*{'a' if i == 1 else f'l{i - 1}'}, *{'a' if i == 1 else f'l{i - 1}'}]\n"
    lol += "---\n"
    links = links_of(lol)
    assert {link.url for link in links} == {"https://lol.example/"}
    assert len(links) == 2  # each aliased object is walked once


def test_crlf_document_positions() -> None:
    text = "first line\r\nsecond [x](https://crlf.example/) line\r\n"
    (link,) = links_of(text)
    assert (link.line, link.column) == (2, 12)


def test_unclosed_backtick_after_a_bracket_is_text_not_a_crash() -> None:
    """markdown-it-pyrs panics on `[` followed by a backtick run that never closes; it is literal text."""
    text = "See [note `x and [a](https://ex.com/a) here.\n\n[`b](https://ex.com/b) and ``https://ex.com/c``\n"
    links = links_of(text)
    assert [(link.href, link.syntax, link.text, link.line) for link in links] == [
        ("https://ex.com/a", "inline", "a", 1),
        ("https://ex.com/b", "inline", "`b", 3),
    ]  # the ``code span`` stays one: only runs that close nothing are escaped (no bare ex.com/c)
    assert all(at(text, link).startswith(link.href) for link in links)
