"""Hostile documents: generated Markdown, YAML front matter and URLs through extract and resolve.

The property, for every generated document: `extract_file` returns links or raises `DocumentError` with
one line naming the file; every error it reports is one line naming the file; every position it gives
points inside the document (at the href as written, for the syntaxes that promise it); `resolve` never
raises and accounts for every link. Then the pathological cases by hand, each under a timeout so that a
hang fails instead of blocking the suite.

The run is short by default (the whole file in about 20 s on two cores). `HYPOTHESIS_PROFILE=long`
(or `FUZZ_EXAMPLES=N`) runs many more examples; `bench/fuzz_long.py` runs the same properties for a
given number of minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.extract import DocumentError, DocumentSettings, ExtractResult, extract_file, extract_text
from pipeline.records import Link
from pipeline.resolve import MAX_HOPS, MAX_URL_LENGTH, Resolution, resolve, unwrap

_LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (3000 if _LONG else 0))


def fuzz_settings(examples: int) -> settings:
    """`examples` in the short run; many more with HYPOTHESIS_PROFILE=long or FUZZ_EXAMPLES."""
    return settings(
        max_examples=_EXAMPLES or examples,
        deadline=None,  # a shared two-core machine: timing belongs to the timeouts below, not to examples
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


# -- URLs ---------------------------------------------------------------------------------------------

_UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
_ODD = "!$&'()*+,;=:@/?#[]%\\^`{|}<>\" "
_CONTROL = "".join(map(chr, range(0x20))) + "\x7f\x85\u2028\u2029\u200b\ufeff"
_hex = st.sampled_from("0123456789abcdefABCDEF")
_escape = st.tuples(_hex, _hex).map(lambda pair: "%" + "".join(pair))
_url_char = st.one_of(
    st.sampled_from(_UNRESERVED),
    st.sampled_from(_ODD),
    _escape,
    st.just("%"),  # a lone percent sign
    st.sampled_from(_CONTROL),
    st.characters(min_codepoint=0xA0, max_codepoint=0x2FFFF, exclude_categories=["Cs"]),
)
_url_text = st.lists(_url_char, max_size=12).map("".join)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
_unicode_label = st.text(
    alphabet=st.characters(min_codepoint=0xA1, max_codepoint=0xFFFF, exclude_categories=["Cs"]),
    min_size=1,
    max_size=6,
)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(lambda labels: ".".join([*labels, "org"])),
    st.lists(_unicode_label, min_size=1, max_size=2).map(lambda labels: ".".join([*labels, "рф"])),
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda parts: ".".join(map(str, parts))),
    st.sampled_from(["[::1]", "[2001:db8::1]", "[fe80::1%25eth0]", "[::ffff:1.2.3.4]", "[::1", "::1]", "[zz]", "[]"]),
    st.sampled_from(["localhost", "", "ex.com.", "EX.COM", "xn--80ak6aa92e.com", "a..b", "-a-.org"]),
    _url_text,
)
_ports = st.one_of(
    st.just(""),
    st.integers(0, 70000).map(lambda port: f":{port}"),
    st.sampled_from([":", ":abc", ":-1", ":²", ":0x50", ":" + "9" * 30]),
)
_schemes = st.sampled_from(["http", "https", "HTTPS", "hTtP", "ftp", "javascript", "mailto", "file", "data", "", "ht"])


@st.composite
def plain_urls(draw: st.DrawFn) -> str:
    """A URL of any shape: odd schemes, unicode and IPv6 hosts, ports, escapes, controls, long queries."""
    scheme = draw(_schemes)
    userinfo = draw(st.one_of(st.just(""), _url_text.map(lambda text: text + "@")))
    host = draw(_hosts)
    path = "/".join(draw(st.lists(_url_text, max_size=4)))
    url = f"{scheme}://{userinfo}{host}{draw(_ports)}/{path}" if scheme else f"//{host}/{path}"
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(_url_text, _url_text), max_size=6))
        query = "&".join(f"{name}={value}" for name, value in pairs)
        if draw(st.integers(0, 19)) == 0:  # now and then a huge query string
            query += "&" + "&".join(f"p{i}=v{i}" for i in range(draw(st.integers(100, 1000))))
        url += "?" + query
    if draw(st.booleans()):
        url += "#" + draw(_url_text)
    return url


def _encode(url: str, times: int, safe: str) -> str:
    for _ in range(times):
        url = quote(url, safe=safe)
    return url


_WRAPPERS: list[Callable[[str], str]] = [
    lambda target: f"https://www.google.com/url?q={target}&sa=D&ust=1538477135299000&usg=AOvVaw",
    lambda target: f"http://google.com.sy/url?sa=t&url={target}&ved=x",
    lambda target: f"https://www.google.co.uk/url?q={target}",
    lambda target: f"https://l.facebook.com/l.php?u={target}&h=AT0abc&__tn__=R",
    lambda target: f"https://lm.facebook.com/l.php?u={target}",
    lambda target: f"https://www.youtube.com/redirect?event=video_description&q={target}&v=abc",
    lambda target: f"https://vk.com/away.php?to={target}&cc_key=",
    lambda target: f"https://l.instagram.com/?u={target}&e=x",
]


@st.composite
def urls(draw: st.DrawFn) -> str:
    """A URL, wrapped 0-10 times in redirect wrappers, each layer percent-encoded 0-2 times."""
    url = draw(plain_urls())
    for _ in range(draw(st.integers(0, 10))):
        wrap = draw(st.sampled_from(_WRAPPERS))
        safe = draw(st.sampled_from(["", "/", "/:", "/:?=&", "/:?@!,'()*;$~"]))
        url = wrap(_encode(url, draw(st.integers(0, 2)), safe))
        if draw(st.integers(0, 4)) == 0:  # wrappers mangled by hand: upper-case escapes, a stray fragment
            url = draw(st.sampled_from([url.upper(), url + "#frag&x=1", url.replace("%", "%25"), url + "&q="]))
    return url


# -- Markdown -----------------------------------------------------------------------------------------

_words = st.text(alphabet="abc xyzé字 \t*_`[]()<>!\\&;#:|~-\n", max_size=20)
_title = st.sampled_from(["", ' "title"', " 'title'", " (title)", ' "unclosed', ' "multi\nline"'])


def _inline(url: str, text: str, kind: int, title: str) -> str:
    return [
        f"[{text}]({url}{title})",
        f"![{text}]({url}{title})",
        f"[{text}](<{url}>{title})",
        f"<{url}>",
        f" {url} ",
        f"[{text}][ref]",
        f"![{text}][ref]",
        "[ref]",
        f"`{url}`",
        f'<a href="{url}">{text}</a>',
        f"<img src='{url}' srcset=\"{url} 1x, {url} 2x\">",
        f"*{text} [{text}]({url})*",
        f"**_{text}_ ![{text}]({url})**",
        f"[![{text}]({url})]({url})",
        f"[{text}](javascript:{url})",
        f"&amp;{url}&#x26;&#0;",
    ][kind]


_inline_piece = st.builds(_inline, urls(), _words, st.integers(0, 15), _title)
_inline_pieces = st.lists(st.one_of(_inline_piece, _words), max_size=6).map("".join)


@st.composite
def blocks(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    line = draw(_inline_pieces)
    if kind == 0:
        return line
    if kind == 1:  # a reference definition, sometimes spread over lines
        sep = draw(st.sampled_from([" ", "\n", "  \n  "]))
        return f"[{draw(st.sampled_from(['ref', 'Ref', 'other', '']))}]:{sep}{draw(urls())}{draw(_title)}"
    if kind == 2:  # a code fence, sometimes never closed
        fence = draw(st.sampled_from(["```", "~~~", "````"]))
        closing = draw(st.sampled_from([fence, "", "```"]))
        return f"{fence}{draw(st.sampled_from(['', 'python', 'md']))}\n{draw(urls())} {line}\n{closing}"
    if kind == 3:  # nested containers: block quotes and list items
        prefix = "".join(draw(st.lists(st.sampled_from(["> ", ">", "- ", "1. ", "  ", "* ", "10) "]), max_size=12)))
        return "\n".join(prefix + part for part in [line, *draw(st.lists(_inline_pieces, max_size=3))])
    if kind == 4:  # deep emphasis and brackets around a link
        depth = draw(st.integers(1, 60))
        opener = draw(st.sampled_from(["*", "_", "**", "[", "![", "(", "<", "`"]))
        return opener * depth + line + draw(st.sampled_from(["*", "_", "]", ")", ">", ""])) * depth
    if kind == 5:  # a table
        row = f"| {line.replace(chr(10), ' ')} | [{draw(_words)}]({draw(urls())}) |"
        return f"| a | b |\n| --- | --- |\n{row}\n{row}"
    if kind == 6:  # raw HTML blocks, closed or not
        return f'<div>\n<a href="{draw(urls())}">{line}</a>\n{draw(st.sampled_from(["</div>", "", "<!--"]))}'
    if kind == 7:  # an indented code block
        return "    " + draw(urls()) + "\n    " + line
    if kind == 8:  # a heading, setext or ATX
        return draw(st.sampled_from([f"# {line}", f"{line}\n===", f"{line}\n---", f"###### {line} ###"]))
    return draw(st.sampled_from(["---", "***", "", "\\", "<!--", "-->", "]]>", "\u2028", "\x0c"]))


markdown_bodies = st.lists(blocks(), max_size=10).flatmap(
    lambda parts: st.sampled_from(["\n\n", "\n", "\r\n", "\r"]).map(lambda end: end.join(parts))
)

# -- YAML front matter --------------------------------------------------------------------------------

_scalars = st.one_of(
    urls(),
    st.sampled_from(
        [
            "~",
            "null",
            "yes",
            "No",
            ".nan",
            "-.inf",
            "0x1F",
            "0o17",
            "1_000",
            "1:20:30",
            "2001-12-14t21:59:43.10-05:00",
            "2024-02-30",
            "!!binary aGVsbG8=",
            "!!str 12",
            "!!int '12'",
            "!!float x",
            "!custom tag",
            "!!python/object:os.system x",
            "!!set {a, b}",
            "!!omap [a: 1]",
            "'quoted ''twice'''",
            '"esc \\u0041 \\x00 \\U0001F600"',
            '"bad \\q escape"',
            "/images/cover.png",
            "../up.jpg",
            "Harem.svg",
            "File:Flag of Syria.svg",
            "9" * 5000,
            "|\n  block https://block.example/\n",
            ">-\n  folded\n  https://folded.example/\n",
            "*undefined_alias",
            "&anchor_without_value",
            "<<: *a0",
            "@reserved",
            "`backtick",
            "%directive",
            "{unclosed",
            "[unclosed",
            "'unclosed",
        ]
    ),
    _words.map(lambda text: text.replace("\n", " ")),
)
_keys = st.one_of(
    st.sampled_from(["img", "image", "cover", "url", "base_url", "links", "type", "page", "text", "infobox", "src"]),
    st.sampled_from(["infoboxes", "? complex", "[a, b]", "{k: v}", "~", "1.5", "<<", "'quoted key'", "", "null"]),
    _label,
)


@st.composite
def flow_values(draw: st.DrawFn, depth: int = 0) -> str:
    """A YAML flow value: scalars, `[...]`, `{...}`, anchors on collections and aliases to earlier anchors."""
    kind = draw(st.integers(0, 5 if depth < 4 else 1))
    if kind == 0:
        return draw(_scalars).replace("\n", " ")
    if kind == 1:
        return f"*a{draw(st.integers(0, 6))}"
    items = draw(st.lists(flow_values(depth + 1), max_size=4))
    anchor = f"&a{draw(st.integers(0, 6))} " if draw(st.booleans()) else ""
    if kind in (2, 3):
        return anchor + "[" + ", ".join(items) + "]"
    keys = draw(st.lists(_keys, min_size=len(items), max_size=len(items)))
    return anchor + "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True)) + "}"


@st.composite
def front_matters(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(_keys)
        style = draw(st.integers(0, 3))
        if style == 0:
            lines.append(f"{key}: {draw(flow_values())}")
        elif style == 1:  # a block list of wiki links, the shape wiki exports use
            page = draw(_words).replace("\n", " ")
            lines.append(f"{key}:\n  - type: internal\n    page: {page!r}\n  - {draw(_scalars)}")
        elif style == 2:
            lines.append(f"{key}: {draw(_scalars)}")
        else:  # an alias chain: each level holds the previous one twice
            lines.append(f"l0: &l0 [{draw(urls())}, x]")
            depth = draw(st.integers(1, 25))
            lines.extend(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, depth))
    opening = draw(st.sampled_from(["---", "---  ", "----", "--- "]))
    closing = draw(st.sampled_from(["---", "...", "", "--- x", "-----"]))  # "": never closed
    return f"{opening}\n" + "\n".join(lines) + f"\n{closing}\n"


documents = st.tuples(st.one_of(st.just(""), front_matters()), markdown_bodies).map("".join)

# -- the properties -----------------------------------------------------------------------------------

# Syntaxes whose position is where the href starts, exactly as written.
_AT_HREF = {"inline", "image", "autolink", "definition", "bare"}


def check_extracted(result: ExtractResult, text: str, source: str) -> None:
    """What a user relies on: errors are one line naming the document; positions point into it."""
    for message in [*result.errors, *result.warnings]:
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(source + ":"), message
    lines = text.split("\n")
    for link in result.links:
        assert link.source == source
        if link.key_path is not None:
            assert link.line is None and link.column is None
            continue
        assert link.line is not None and link.column is not None, link
        assert 1 <= link.line <= len(lines), (link, len(lines))
        assert 1 <= link.column <= len(lines[link.line - 1]) + 1, link
        # Not checked where the href is text with its HTML entities decoded (`&amp;` in an HTML document or
        # block): it is not in the document as written, and its place is approximate.
        decoded = result.format == "html" or (link.syntax == "bare" and ("&" in link.href or "\ufffd" in link.href))
        if link.syntax in _AT_HREF and link.href and "\n" not in link.href and not decoded:
            written = lines[link.line - 1][link.column - 1 :]
            assert written.startswith(link.href), (link, written[:80])


def check_resolved(links: list[Link]) -> Resolution:
    """Resolve never raises and accounts for every link: each is a target's or rejected with a reason."""
    resolution = resolve(links)
    assert sum(len(target.links) for target in resolution.targets) + len(resolution.rejected) == len(links)
    for target in resolution.targets:
        assert len(target.hops) <= MAX_HOPS
        assert target.kind in ("video", "image", "document", "audio", "map", "snapshot", "page")
        assert isinstance(target.canonical, str) and target.canonical
    for rejected in resolution.rejected:
        assert rejected.reason and "\n" not in rejected.reason
    return resolution


def normalised(data: bytes) -> str:
    """The document as extract reads it: UTF-8 without BOM, CR LF and CR as LF, NUL as U+FFFD."""
    text = data.decode("utf-8-sig")
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


def extract_and_check(path: Path, data: bytes, settings_: DocumentSettings | None = None) -> ExtractResult | None:
    """The whole property for one file: a result checked as above, or a one-line DocumentError naming it."""
    path.write_bytes(data)
    try:
        result = extract_file(path, settings_)
    except DocumentError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:") and "\n" not in message, message
        return None
    check_extracted(result, normalised(data), str(path))
    check_resolved(result.links)
    return result


_SETTINGS = st.sampled_from(
    [
        None,
        DocumentSettings(base_url="https://site.example/dir/"),
        DocumentSettings(base_url="https://[::1]:8080/", wiki_base=None),
        DocumentSettings(base_url="http://[::1/broken", base_url_is_override=True),
        DocumentSettings(format="text"),
        DocumentSettings(format="html", base_url="https://site.example/"),
    ]
)


@fuzz_settings(25)
@given(text=documents, suffix=st.sampled_from([".md", ".txt", ".markdown", ""]), doc_settings=_SETTINGS)
def test_generated_markdown_documents(tmp_path: Path, text: str, suffix: str, doc_settings: DocumentSettings) -> None:
    extract_and_check(tmp_path / f"doc{suffix}", text.encode("utf-8"), doc_settings)


@fuzz_settings(25)
@given(front=front_matters(), body=_inline_pieces)
def test_generated_front_matter(tmp_path: Path, front: str, body: str) -> None:
    data = (front + body).encode("utf-8")
    result = extract_and_check(tmp_path / "front.md", data)
    assert (result is None) == (b"\x00" in data[:8192])  # UTF-8 text is read unless it looks binary
    if result is None:
        return
    for link in result.links:
        if link.key_path is not None:
            assert link.syntax in ("front-matter", "wiki-page", "wiki-file"), link


@fuzz_settings(40)
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"---\n", b"<!doctype html>"]))
def test_arbitrary_bytes(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    extract_and_check(tmp_path / "bytes.md", prefix + data)


@fuzz_settings(40)
@given(
    text=st.text(
        alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from("[]()<>`*_!:/\n"))
    ),
    suffix=st.sampled_from([".md", ".txt", ".html"]),
)
def test_in_memory_text_of_any_characters(text: str, suffix: str) -> None:
    """extract_text takes a str that may hold what no file can (lone surrogates): links or an error, no crash."""
    result = extract_text(text, "memory", DocumentSettings(), suffix=suffix)
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    check_extracted(result, body, "memory")
    check_resolved(result.links)


@fuzz_settings(25)
@given(html_body=st.lists(st.one_of(_inline_piece, _words), max_size=8).map("".join), base=urls())
def test_generated_html_documents(tmp_path: Path, html_body: str, base: str) -> None:
    text = f'<!doctype html><html><head><base href="{base}"></head><body>{html_body}</body></html>'
    extract_and_check(tmp_path / "page.html", text.encode("utf-8"))


@fuzz_settings(100)
@given(url=urls(), syntax=st.sampled_from(["inline", "image", "bare", "front-matter"]))
def test_any_url_resolves_without_raising(url: str, syntax: str) -> None:
    link = Link(source="doc.md", href=url, url=url, line=1, column=1, syntax=syntax)
    resolution = check_resolved([link])
    assert len(resolution.targets) + len(resolution.rejected) == 1
    final, hops, _ = unwrap(url)
    assert len(hops) <= MAX_HOPS
    assert not hops or hops[-1].url == final


# -- pathological documents, by hand ------------------------------------------------------------------

MB = 1_000_000


def timed_extract(path: Path, data: bytes, limit: float) -> tuple[ExtractResult | None, float]:
    start = time.perf_counter()
    result = extract_and_check(path, data)
    elapsed = time.perf_counter() - start
    assert elapsed < limit, f"{path.name}: {elapsed:.1f} s"
    return result, elapsed


def hrefs(result: ExtractResult | None) -> list[str]:
    assert result is not None
    return [link.href for link in result.links]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("blockquotes", ">" * 10_000 + " https://deep.example/q\n", ["https://deep.example/q"]),
        ("spaced-blockquotes", "> " * 10_000 + "[a](https://deep.example/s)\n", ["https://deep.example/s"]),
        ("list-items", "- " * 10_000 + "[a](https://deep.example/l)\n", ["https://deep.example/l"]),
        ("indented-lists", "".join("  " * i + "- x\n" for i in range(1000)) + "https://deep.example/i\n", None),
        ("brackets", "[" * 10_000 + "x](https://deep.example/b)\n", ["https://deep.example/b"]),
        ("closed-brackets", "[" * 10_000 + "x" + "]" * 10_000 + "(https://deep.example/c)\n", None),
        ("links-in-brackets", "[" * 10_000 + "](https://deep.example/k)" * 10_000 + "\n", None),
        ("nested-images", "![" * 10_000 + "x" + "](https://deep.example/i.png)" * 10_000 + "\n", None),
        ("emphasis", "*" * 10_000 + "[x](https://deep.example/e)" + "*" * 10_000 + "\n", ["https://deep.example/e"]),
        ("mixed-emphasis", "*a _b " * 10_000 + "https://deep.example/m\n", ["https://deep.example/m"]),
        ("parentheses", "[a](" + "(" * 10_000 + "https://deep.example/p" + ")" * 10_000 + ")\n", None),
        ("html-divs", "<div>" * 10_000 + "<a href='https://deep.example/h'>x</a>" + "</div>" * 10_000, None),
    ],
)
def test_deeply_nested_markdown(tmp_path: Path, name: str, text: str, expected: list[str] | None) -> None:
    result, _ = timed_extract(tmp_path / f"{name}.md", text.encode(), limit=20)
    found = hrefs(result)
    assert found, name
    if expected is not None:
        assert found == expected
    assert all("deep.example" in href for href in found)


def test_nested_images_each_keep_their_text(tmp_path: Path) -> None:
    """The text of nested images is walked once (it was quadratic), and stays what it was."""
    (tmp_path / "n.md").write_text(
        "![a ![b ![c](https://x.example/3.png)](https://x.example/2.png)](https://x.example/1.png)"
    )
    result = extract_file(tmp_path / "n.md")
    assert [(link.href, link.text, link.column) for link in result.links] == [
        ("https://x.example/3.png", "c", 14),
        ("https://x.example/2.png", "b c", 40),
        ("https://x.example/1.png", "a b c", 66),
    ]


@pytest.mark.timeout(60)
def test_one_megabyte_line_without_links(tmp_path: Path) -> None:
    for name, line in {"letters": "x" * MB, "colons": ":" * MB, "brackets": "](" * (MB // 2), "lt": "<" * MB}.items():
        result, _ = timed_extract(tmp_path / f"{name}.md", line.encode(), limit=20)
        assert hrefs(result) == [], name


@pytest.mark.timeout(90)
def test_one_megabyte_line_of_links(tmp_path: Path) -> None:
    count = MB // 40
    line = " ".join(f"[é{i}](https://line.example/{i})" for i in range(count)) + "\n"
    result, _ = timed_extract(tmp_path / "links.md", line.encode(), limit=30)
    assert result is not None and len(result.links) == count
    # the last link on the line is still placed exactly, non-ASCII text before it and all
    last = result.links[-1]
    assert (last.href, last.line) == (f"https://line.example/{count - 1}", 1)
    assert line[last.column - 1 :].startswith(last.href)
    # bare URLs in one HTML text: each was looked for from the start of the text (quadratic)
    bare = "<p>" + " ".join(f"https://bare.example/{i}" for i in range(MB // 50)) + "</p>\n"
    result, _ = timed_extract(tmp_path / "bare.html", bare.encode(), limit=30)
    assert result is not None and len(result.links) == MB // 50
    assert all(bare[link.column - 1 :].startswith(link.href) for link in result.links[-100:])


@pytest.mark.timeout(60)
def test_many_reference_definitions_in_a_row(tmp_path: Path) -> None:
    """markdown-it-pyrs reads a run of n definitions in n² time; long runs are broken up before parsing."""
    count = 20_000
    text = "Intro [r7] and [r19999].\n\n" + "".join(f"[r{i}]: https://ref.example/{i}\n" for i in range(count))
    result, _ = timed_extract(tmp_path / "refs.md", text.encode(), limit=20)
    assert result is not None
    definitions = [link for link in result.links if link.syntax == "definition"]
    assert len(definitions) == count
    assert all((link.line, link.column) == (i + 3, len(f"[r{i}]: ") + 1) for i, link in enumerate(definitions))
    cited = [(link.href, link.line, link.column) for link in result.links if link.syntax == "reference"]
    assert cited == [("https://ref.example/7", 1, 7), ("https://ref.example/19999", 1, 16)]
    quoted = "> x\n>\n" + "".join(f"> [q{i}]: https://ref.example/q{i}\n" for i in range(count // 2)) + "\n[q1]\n"
    result, _ = timed_extract(tmp_path / "quoted.md", quoted.encode(), limit=20)
    assert result is not None and sum(link.syntax == "definition" for link in result.links) == count // 2


def test_a_few_definitions_in_a_row_are_parsed_as_written(tmp_path: Path) -> None:
    text = "".join(f"[r{i}]: https://ref.example/{i}\n" for i in range(70)) + "[r69] [r1]\n"
    result = extract_and_check(tmp_path / "few.md", text.encode())
    assert result is not None
    assert [(link.href, link.line, link.syntax) for link in result.links if link.syntax == "reference"] == [
        ("https://ref.example/69", 71, "reference"),
        ("https://ref.example/1", 71, "reference"),
    ]


@pytest.mark.timeout(60)
def test_billion_laughs_front_matter_is_walked_once(tmp_path: Path) -> None:
    """30 levels of aliases, each holding the previous level nine times: 9^30 strings if expanded."""
    lines = ["a: &a [https://lol.example/x, lol]"]
    previous = "a"
    for i in range(1, 31):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*{previous}'] * 9)}]")
        previous = f"l{i}"
    lines.append("m: &m {k: *l30, type: internal, page: Lol}")
    lines.append("n: [*m, *m, *m]")
    text = "---\n" + "\n".join(lines) + "\ninfobox: x\n---\nbody\n"
    result, _ = timed_extract(tmp_path / "lol.md", text.encode(), limit=5)
    assert result is not None and result.errors == []
    assert [(link.url, link.key_path) for link in result.links] == [
        ("https://lol.example/x", "a[0]"),
        ("https://en.wikipedia.org/wiki/Lol", "m"),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "front", "message"),
    [
        ("deep-flow", "a: " + "[" * 3000 + "]" * 3000, "front matter is nested too deeply to read"),
        ("deep-map", "a: " + "{a: " * 10_000 + "1" + "}" * 10_000, "front matter is nested too deeply to read"),
        ("deep-block", "".join(" " * i + "a:\n" for i in range(2000)), "front matter is nested too deeply to read"),
        ("huge-int", "a: " + "9" * 5000, "front matter is not valid YAML: Exceeds the limit"),
        ("python-tag", "a: !!python/object:os.system x", "could not determine a constructor"),
        ("scalar", "just a string", "front matter is not a mapping of keys to values"),
    ],
)
def test_hostile_front_matter_is_one_line_error_and_body_still_read(
    tmp_path: Path, name: str, front: str, message: str
) -> None:
    text = f"---\n{front}\n---\nBody https://body.example/\n"
    result, _ = timed_extract(tmp_path / f"{name}.md", text.encode(), limit=10)
    assert result is not None
    (error,) = result.errors
    assert error.startswith(f"{tmp_path / name}.md: ") and message in error and len(error) < 400
    assert hrefs(result) == ["https://body.example/"]


def test_front_matter_with_a_broken_base_url_is_ignored(tmp_path: Path) -> None:
    """`base_url: https://[::1` used to raise ValueError (Invalid IPv6 URL) out of extract."""
    text = "---\nbase_url: 'https://[::1'\n---\n[a](page.html) <a href='//[::1/x'>b</a>\n"
    result = extract_and_check(tmp_path / "base.md", text.encode())
    assert result is not None and result.errors == []
    assert [(link.href, link.url, link.flags) for link in result.links] == [
        ("page.html", None, ("unresolved-relative",)),
        ("//[::1/x", "https://[::1/x", ("assumed-https",)),
    ]
    resolution = resolve(result.links)
    assert [rejected.reason for rejected in resolution.rejected] == ["not a valid URL (bad host or port)"]
    with_base = extract_file(
        tmp_path / "base.md", DocumentSettings(base_url="https://site.example/", base_url_is_override=True)
    )
    assert [link.url for link in with_base.links] == ["https://site.example/page.html", "//[::1/x"]
    html = extract_and_check(tmp_path / "base.html", b"<base href='http://[::1'><a href='x.html'>x</a>")
    assert html is not None and [(link.url, link.flags) for link in html.links] == [(None, ("unresolved-relative",))]


@pytest.mark.timeout(60)
def test_ten_megabyte_urls(tmp_path: Path) -> None:
    long_url = "https://long.example/" + "a" * (10 * MB)
    google = "https://www.google.com/url?q=https://ex.com/?" + "&a=b" * (10 * MB // 4) + "&sa=D"
    encoded = "https://www.google.com/url?q=https%3A%2F%2Fex.com%2F" + "%2541" * (MB // 5) + "&sa=D"
    for name, text in {
        "inline": f"[a]({long_url})\n",
        "bare": f"{long_url}\n",
        "google-inline": f"[a]({google})\n",
        "google-encoded": f"<{encoded}>\n",
    }.items():
        result, _ = timed_extract(tmp_path / f"{name}.md", text.encode(), limit=30)
        assert result is not None and len(result.links) == 1, name
        (rejected,) = resolve(result.links).rejected
        assert rejected.reason.startswith("URL too long (") and f"{MAX_URL_LENGTH:,}" in rejected.reason


def test_long_but_fetchable_url_is_still_unwrapped() -> None:
    target = "https://ex.com/" + "a" * 60_000
    (resolved,) = resolve([Link("d.md", google_wrap := "https://www.google.com/url?q=" + target, google_wrap)]).targets
    assert resolved.url == target and [hop.rule for hop in resolved.hops] == ["google"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("nul", b"text\x00 https://nul.example/\n", "not a text document (binary content)"),
        ("latin1", "café https://ex.com/".encode("latin-1"), "not valid UTF-8 text (byte 3)"),
        ("truncated", "[a](https://ex.com/é".encode()[:-1], "not valid UTF-8 text (byte 19)"),
        ("utf16", "\ufeff[a](https://ex.com/)".encode("utf-16"), "not a text document (binary content)"),
    ],
)
def test_unreadable_bytes_are_a_one_line_error_naming_the_file(
    tmp_path: Path, name: str, data: bytes, error: str
) -> None:
    path = tmp_path / f"{name}.md"
    path.write_bytes(data)
    with pytest.raises(DocumentError) as caught:
        extract_file(path)
    assert str(caught.value) == f"{path}: {error}"


def test_nul_after_the_first_8_kib_is_read_as_replacement_character(tmp_path: Path) -> None:
    data = b"x" * 9000 + b"\x00 [a](https://late.example/)\n"
    result = extract_and_check(tmp_path / "late-nul.md", data)
    assert result is not None and hrefs(result) == ["https://late.example/"]
    assert (result.links[0].line, result.links[0].column) == (1, 9007)


@pytest.mark.parametrize(
    ("name", "data", "position"),
    [
        ("bom", b"\xef\xbb\xbf[a](https://bom.example/)\n", (1, 5)),
        ("bom-front-matter", b"\xef\xbb\xbf---\nimg: https://bom.example/\n---\n", None),
        ("crlf", b"line\r\n\r\n[a](https://bom.example/)\r\n", (3, 5)),
        ("cr", b"line\r\r[a](https://bom.example/)\r", (3, 5)),
        ("mixed", b"a\r\nb\rc\n[a](https://bom.example/)", (4, 5)),
        ("crlf-front-matter", b"---\r\nimg: https://bom.example/\r\n---\r\n", None),
    ],
)
def test_byte_order_marks_and_line_ends(
    tmp_path: Path, name: str, data: bytes, position: tuple[int, int] | None
) -> None:
    result = extract_and_check(tmp_path / f"{name}.md", data)
    assert result is not None and result.errors == []
    (link,) = result.links
    assert link.url == "https://bom.example/"
    assert (link.line, link.column) == position if position else link.key_path == "img"


@pytest.mark.timeout(30)
def test_front_matter_that_never_closes(tmp_path: Path) -> None:
    text = "---\ntitle: x\n" + "k: https://open.example/\n" * 1000 + "Body https://body.example/\n"
    result, _ = timed_extract(tmp_path / "open.md", text.encode(), limit=10)
    assert result is not None and result.errors == [] and result.front_matter is None
    assert len(result.links) == 1001 and all(link.line for link in result.links)  # all read as body text
    big = "---\n" + "x\n" * 200_000
    result, _ = timed_extract(tmp_path / "open-big.md", big.encode(), limit=20)
    assert result is not None and result.links == []
