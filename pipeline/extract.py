"""Extract stage: every link in a document, with where it was found.

Markdown goes through markdown-it-py (CommonMark, tables, linkify for bare URLs), YAML front matter
through python-frontmatter's reader, HTML through the standard library's HTML parser and plain text
through linkify-it. Positions are 1-based `line:column` of the first character of the href as written
(for reference-style links: of the `[` that cites the definition); front-matter links carry their key
path instead. Nothing here fetches anything.
"""

from __future__ import annotations

import bisect
import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import frontmatter
import markdown_it_pyrs
import yaml
from linkify_it import LinkifyIt

from pipeline.records import Link

DEFAULT_WIKI_BASE = "https://en.wikipedia.org/wiki/"

# MediaWiki leaves these unescaped in page URLs (wfUrlencode); everything else is percent-encoded.
_WIKI_SAFE = ";@$!*(),/~:"
_WIKI_FILE_EXT = r"(?:svg|png|jpe?g|gif|tiff?|webp|bmp|ogg|ogv|oga|webm|mp3|mp4|pdf|djvu)"
_WIKI_FILE_VALUE = re.compile(rf"^(?:(?:File|Image):)?[^/\\\n\[\]{{}}|#<>]{{1,240}}\.{_WIKI_FILE_EXT}$", re.I)
_WIKI_FILE_TOKEN = re.compile(rf"(?<![\w/.:-])([\w().,'-]{{1,200}}\.{_WIKI_FILE_EXT})(?![\w/])", re.I)
# Front-matter keys whose relative path values (`/images/x.jpg`) are links to resources of the site.
_RESOURCE_KEYS = {
    "img",
    "image",
    "images",
    "cover",
    "thumbnail",
    "banner",
    "src",
    "href",
    "url",
    "link",
    "file",
    "pdf",
    "video",
    "audio",
    "poster",
    "source",
}
# A URL continues past an apostrophe (`Idlib_Martyrs'_Brigade`) where linkify-it stops.
_APOSTROPHE_TAIL = re.compile(r"'[^\s<>\"'`]*(?:'[^\s<>\"'`]+)*")
_TRAILING_PUNCT = ".,;:!?'\"*_~"
_MD_LINK_SYNTAX = re.compile(
    r"\]\(|\]\[|^ {0,3}\[[^\]\n]+\]:\s*\S|<https?://|<a\s[^>]*href|<img\s[^>]*src|^!\[", re.M | re.I
)
# HTML attributes that name a resource a reader of the page needs or follows.
_URL_ATTRS = {
    "a": ("href",),
    "area": ("href",),
    "link": ("href",),
    "img": ("src", "srcset", "longdesc"),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "script": ("src",),
    "object": ("data",),
    "blockquote": ("cite",),
    "q": ("cite",),
    "ins": ("cite",),
    "del": ("cite",),
}
_META_URL_PROPERTIES = {
    "og:image",
    "og:video",
    "og:audio",
    "og:url",
    "og:image:url",
    "og:video:url",
    "twitter:image",
    "twitter:player",
    "twitter:player:stream",
}


class DocumentError(Exception):
    """A document that cannot be read or parsed; the message is one line naming the document."""


@dataclass(frozen=True)
class DocumentSettings:
    """Per-document settings that decide how relative and wiki links become URLs."""

    base_url: str | None = None
    wiki_base: str | None = DEFAULT_WIKI_BASE
    format: str = "auto"  # auto | markdown | html | text
    base_url_is_override: bool = False  # a --base-url from the command line beats front matter


@dataclass
class ExtractResult:
    """Links of one document; `errors` make the command fail, `warnings` are reported only."""

    source: str
    links: list[Link]
    errors: list[str]
    warnings: list[str]
    format: str = "markdown"
    front_matter: dict[str, Any] | None = None


def read_text(path: Path) -> str:
    """Read a document as UTF-8 text, refusing binary files with a clear one-line error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{path}: not a text document (binary content)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not valid UTF-8 text (byte {exc.start})") from None


def extract_file(path: Path, settings: DocumentSettings | None = None, source: str | None = None) -> ExtractResult:
    """Extract the links of one file. Raises DocumentError only when it cannot be read at all."""
    text = read_text(path)
    return extract_text(text, source or str(path), settings or DocumentSettings(), suffix=path.suffix)


def extract_text(text: str, source: str, settings: DocumentSettings, suffix: str = "") -> ExtractResult:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (only a str built in memory can hold one)
            text = _SURROGATE.sub("\ufffd", text)
    fmt = settings.format if settings.format != "auto" else _guess_format(text, suffix)
    result = ExtractResult(source=source, links=[], errors=[], warnings=[], format=fmt)
    if not text.strip():
        result.warnings.append(f"{source}: empty document, no links")
        return result
    if fmt == "html":
        result.links = _Emitter(source, text, settings).html(text, 0)
        return result
    body_start = 0
    meta: dict[str, Any] | None = None
    handler = frontmatter.YAMLHandler()
    if fmt == "markdown" and handler.detect(text):
        try:
            raw_meta, body = handler.split(text)
        except ValueError:
            raw_meta, body = None, text
        if raw_meta is not None:
            body_start = len(text) - len(body)
            try:
                loaded = yaml.load(raw_meta, Loader=_NoDatesSafeLoader)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 2}, column {mark.column + 1})" if mark else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                result.errors.append(f"{source}: front matter is not valid YAML{where}: {_one_line(problem)}")
                loaded = None
            except RecursionError:  # PyYAML composes nested collections recursively
                result.errors.append(f"{source}: front matter is nested too deeply to read")
                loaded = None
            except ValueError as exc:  # a constructor's own limit, e.g. an integer of more than 4,300 digits
                result.errors.append(f"{source}: front matter is not valid YAML: {_one_line(str(exc))}")
                loaded = None
            if loaded is not None and not isinstance(loaded, dict):
                result.errors.append(f"{source}: front matter is not a mapping of keys to values")
                loaded = None
            meta = loaded
    result.front_matter = meta
    settings = _settings_from_front_matter(settings, meta)
    emitter = _Emitter(source, text, settings)
    links: list[Link] = []
    if meta:
        try:
            links.extend(emitter.front_matter(meta))
        except RecursionError:  # pragma: no cover - PyYAML gives up on nesting before the walk does
            result.errors.append(f"{source}: front matter is nested too deeply to read")
    if fmt == "text":
        links.extend(emitter.bare_urls(text[body_start:], body_start, syntax="bare"))
    else:
        links.extend(emitter.markdown(text[body_start:], body_start))
    result.errors.extend(emitter.errors)
    result.links = links
    return result


def _one_line(message: str) -> str:
    """A message from a library, as one line of at most 200 characters."""
    line = " ".join(message.split())
    return line if len(line) <= 200 else line[:199] + "…"


def _http_url(value: str) -> bool:
    """An absolute http(s) URL that urllib can split (a `[` host that never closes cannot be)."""
    try:
        return urlsplit(value).scheme in ("http", "https")
    except ValueError:
        return False


class _NoDatesSafeLoader(yaml.SafeLoader):
    """SafeLoader that keeps dates as the strings written (they are data to report, not to compute with)."""


_NoDatesSafeLoader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _guess_format(text: str, suffix: str) -> str:
    suffix = suffix.lower()
    if suffix in (".html", ".htm", ".xhtml"):
        return "html"
    if suffix in (".md", ".markdown", ".mdown", ".mkd"):
        return "markdown"
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "html"
    if text.startswith("---") or _MD_LINK_SYNTAX.search(text):
        return "markdown"
    return "text"


def _settings_from_front_matter(settings: DocumentSettings, meta: dict[str, Any] | None) -> DocumentSettings:
    """A document's own `base_url:` (or `url:`) front matter names where it is published."""
    if not meta or settings.base_url_is_override:
        return settings
    for key in ("base_url", "url"):
        value = meta.get(key)
        if isinstance(value, str) and _http_url(value.strip()):
            return replace(settings, base_url=value.strip())
    return settings


def wiki_page_url(title: str, wiki_base: str) -> str:
    """The URL MediaWiki gives a page title: spaces as underscores, first letter capitalised, encoded."""
    title = " ".join(title.replace("_", " ").split())
    page, _, fragment = title.partition("#")
    page = page.strip()
    if page:
        page = page[0].upper() + page[1:]
    url = wiki_base + quote(page.replace(" ", "_"), safe=_WIKI_SAFE)
    if fragment.strip():
        url += "#" + quote(fragment.strip().replace(" ", "_"), safe=_WIKI_SAFE)
    return url


def wiki_file_url(name: str, wiki_base: str) -> str:
    name = re.sub(r"^(?:File|Image):", "", name.strip(), flags=re.I)
    return wiki_page_url("File:" + name, wiki_base)


def _is_wiki_like(meta: dict[str, Any]) -> bool:
    """Wiki file names are only meaningful in wiki exports: infoboxes or internal wiki links."""
    if any(str(k).lower() in ("infobox", "infoboxes") for k in meta):
        return True
    return _has_internal_link(meta, set())


def _has_internal_link(obj: Any, seen: set[int]) -> bool:
    if id(obj) in seen:
        return False
    if isinstance(obj, dict):
        seen.add(id(obj))
        if obj.get("type") == "internal" and isinstance(obj.get("page"), str):
            return True
        return any(_has_internal_link(v, seen) for v in obj.values())
    if isinstance(obj, list):
        seen.add(id(obj))
        return any(_has_internal_link(v, seen) for v in obj)
    return False


class _Emitter:
    """Builds Links for one document: turns hrefs into URLs and offsets into line/column."""

    def __init__(self, source: str, text: str, settings: DocumentSettings) -> None:
        self.source = source
        self.text = text
        self.settings = settings
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.errors: list[str] = []
        self.linkify = LinkifyIt(options={"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})

    # -- positions and URLs -------------------------------------------------------------------------

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return index + 1, offset - self.line_starts[index] + 1

    def absolute(self, href: str) -> tuple[str | None, tuple[str, ...]]:
        """Make an href absolute against the base URL; a relative href with no base stays unresolved."""
        stripped = href.strip()
        if _HAS_SCHEME.match(stripped):
            return stripped, ()
        if stripped.startswith("#") or not stripped:
            return stripped, ()
        base = self.settings.base_url
        if base:
            try:
                return urljoin(base, stripped), ()
            except ValueError:  # `//[::1/x`: a host in brackets that never closes
                if _http_url(base):
                    return stripped, ()  # kept as written; resolve rejects it as not a valid URL
                return None, ("unresolved-relative",)
        if stripped.startswith("//"):
            return "https:" + stripped, ("assumed-https",)
        return None, ("unresolved-relative",)

    def link(
        self,
        href: str,
        *,
        text: str = "",
        offset: int | None = None,
        key_path: str | None = None,
        syntax: str,
        url: str | None = None,
        flags: tuple[str, ...] = (),
    ) -> Link:
        line = column = None
        if offset is not None:
            line, column = self.position(offset)
        if url is None:
            url, more = self.absolute(href)
            flags = flags + more
        return Link(
            source=self.source,
            href=href,
            url=url,
            text=" ".join(text.split()),
            line=line,
            column=column,
            key_path=key_path,
            syntax=syntax,
            flags=flags,
        )

    # -- plain text ---------------------------------------------------------------------------------

    def url_matches(self, text: str) -> Iterator[tuple[int, str]]:
        """Bare URLs in text as (offset, url), without trailing punctuation."""
        if ":" not in text:
            return
        for match in self.linkify.match(text) or []:
            if match.schema in ("mailto:", ""):
                continue
            raw = match.raw
            end = match.last_index
            tail = _APOSTROPHE_TAIL.match(text, end)
            if tail:
                extra = _strip_trailing(tail.group(0))
                raw += extra
            yield match.index, raw

    def bare_urls(self, text: str, base_offset: int, syntax: str, key_path: str | None = None) -> list[Link]:
        links = []
        for index, raw in self.url_matches(text):
            offset = None if key_path is not None else base_offset + index
            links.append(self.link(raw, text=raw, offset=offset, key_path=key_path, syntax=syntax))
        return links

    # -- Markdown -----------------------------------------------------------------------------------

    def markdown(self, body: str, body_start: int) -> list[Link]:
        """Walk markdown-it's syntax tree; its source maps (UTF-8 byte offsets) give each link's place."""
        index = _ByteIndex(body, body_start)
        raw_body = index.data
        parsed, to_body = _split_definition_runs(body, raw_body)
        try:
            tree = _parse_markdown(parsed)
        except _ParserPanic:
            # markdown-it-pyrs panics on a `[` followed by a backtick run that is never closed (`[x`y`):
            # such a run is literal text, so it is escaped and the text parsed again.
            escaped, to_parsed = _escape_unclosed_backticks(parsed)
            try:
                tree = _parse_markdown(escaped)
            except _ParserPanic as exc:
                self.errors.append(f"{self.source}: the Markdown parser failed ({exc}); only bare URLs were read")
                return self.bare_urls(body, body_start, syntax="bare")
            if to_body is None:
                to_body = to_parsed
            elif to_parsed is not None:
                first, then = to_parsed, to_body
                to_body = lambda offset: then(first(offset))  # noqa: E731
        links: list[Link] = []
        nodes = list(tree.walk())  # pre-order, flattened in Rust: far cheaper than visiting children here
        labels = _link_labels(nodes)
        for position, node in enumerate(nodes):
            name = node.name
            if name not in _MD_NODES:
                continue
            start, end = node.srcmap or (0, 0)
            if to_body is not None:
                start, end = to_body(start), to_body(end)
            # Only link-like nodes have exact spans; a text node's may run to the end of the document.
            span = raw_body[start:end].decode("utf-8", errors="replace") if name in _SPAN_NODES_DECODED else ""
            meta = node.meta
            if name in ("link", "image"):
                label = labels.get((name, *node.srcmap), "") if node.srcmap else _node_text(node, {})
                raw, at = _inline_destination(raw_body, start, end)
                is_image = name == "image"
                if raw is None:  # reference-style: the href is in the definition, the citation is here
                    href = str(meta.get("url", ""))
                    syntax = "reference-image" if is_image else "reference"
                    offset = index.offset(start)
                else:
                    href = raw
                    syntax = "image" if is_image else "inline"
                    offset = index.offset(at)
                links.append(self.link(href, text=label, offset=offset, syntax=syntax, url=self.from_markdown(href)))
            elif name == "linkify":
                links.append(self.link(span, text=span, offset=index.offset(start), syntax="bare"))
            elif name == "autolink":
                href = span[1:-1] if span.startswith("<") and span.endswith(">") else str(meta.get("url", ""))
                links.append(self.link(href, text=href, offset=index.offset(start) + 1, syntax="autolink"))
            elif name == "definition":
                raw, at = _destination(span, definition=True)
                href = raw if raw is not None else str(meta.get("destination", ""))
                links.append(
                    self.link(
                        href,
                        text=str(meta.get("label", "")),
                        offset=index.offset(start) + (at or 0),
                        syntax="definition",
                        url=self.from_markdown(href),
                    )
                )
            elif name in ("html_inline", "html_block"):
                content = str(meta.get("content", ""))
                found = self.html(content, index.offset(start))
                if name == "html_inline" and re.match(r"<a\s", content, re.I):
                    label = _text_until_closing_a(nodes[position + 1 : position + 256])
                    found = [replace(link, text=label) if link.syntax == "html-a" else link for link in found]
                links.extend(found)
            elif name in ("fence", "code_block", "code_inline"):
                links.extend(self._bare_in_source(str(meta.get("content", "")), index.offset(start), "code"))
        if "](" in body:
            links.extend(self._unsafe_links(body, body_start))
        links.sort(key=lambda link: (link.line or 0, link.column or 0))
        return links

    def _find(self, needle: str, start: int, end: int) -> int | None:
        index = self.text.find(needle, start, end) if needle else -1
        return index if index >= 0 else None

    def from_markdown(self, href: str) -> str | None:
        """A destination as Markdown means it: entities and backslash escapes undone, spaces encoded."""
        value = _BACKSLASH_ESCAPE.sub(r"\1", href) if "\\" in href else href
        if "&" in value:
            value = html.unescape(value)
        value = value.replace(" ", "%20")
        url, _ = self.absolute(value)
        return url

    def _bare_in_source(self, content: str, start: int, syntax: str) -> list[Link]:
        links = []
        cursor = start
        for _, raw in self.url_matches(content):
            offset = self.text.find(raw, cursor)
            if offset < 0:
                offset = start
            else:
                cursor = offset + len(raw)
            links.append(self.link(raw, text=raw, offset=offset, syntax=syntax))
        return links

    def _unsafe_links(self, body: str, body_start: int) -> list[Link]:
        """Links markdown-it refuses to make (javascript:, file:, data:) stay text; report them anyway."""
        return [
            self.link(match.group(2), text=match.group(1), offset=body_start + match.start(2), syntax="inline")
            for match in _UNSAFE_LINK.finditer(body)
        ]

    # -- HTML ---------------------------------------------------------------------------------------

    def html(self, markup: str, start: int) -> list[Link]:
        scanner = _TagScanner()
        try:
            scanner.feed(markup)
            scanner.close()
        except (AssertionError, ValueError):  # pragma: no cover - html.parser is lenient
            pass
        links: list[Link] = []
        if scanner.base_href and not self.settings.base_url_is_override:
            try:
                base = urljoin(self.settings.base_url or "", scanner.base_href)
            except ValueError:  # a `<base href>` whose bracketed host never closes is ignored
                base = ""
            if _http_url(base):
                self.settings = replace(self.settings, base_url=base)
        markup_lines = [0] + [m.end() for m in re.finditer("\n", markup)]
        offsets = [start + markup_lines[found.position[0] - 1] + found.position[1] for found in scanner.found]
        # A value is looked for between its tag (or text) and the next one that starts further on: the
        # windows do not overlap, so a page of 50,000 URLs whose text differs from the markup (`&amp;`)
        # is searched once, not 50,000 times to its end.
        stops = []
        stop = start + len(markup)
        for i in range(len(offsets) - 1, -1, -1):
            stops.append(stop)
            if i and offsets[i - 1] < offsets[i]:
                stop = offsets[i]
        stops.reverse()
        for found, tag_offset, stop in zip(scanner.found, offsets, stops, strict=True):
            if found.syntax == "html-text":
                cursor = tag_offset
                for index, raw in self.url_matches(found.value):
                    value_at = self._find(raw, cursor, stop)
                    offset = value_at if value_at is not None else tag_offset + index
                    if value_at is not None:
                        cursor = value_at + len(raw)
                    links.append(self.link(raw, text=raw, offset=offset, syntax="bare"))
                continue
            value_at = self._find(found.raw_value, tag_offset, stop) if found.raw_value else None
            links.append(
                self.link(
                    found.value,
                    text=found.text,
                    offset=value_at if value_at is not None else tag_offset,
                    syntax=found.syntax,
                )
            )
        return links

    # -- YAML front matter --------------------------------------------------------------------------

    def front_matter(self, meta: dict[str, Any]) -> list[Link]:
        wiki = self.settings.wiki_base
        wiki_files = bool(wiki) and _is_wiki_like(meta)
        links: list[Link] = []
        seen: set[int] = set()  # aliases share objects: visit each once (and billion-laughs stays cheap)

        def walk(obj: Any, path: str, key: str) -> None:
            if isinstance(obj, (dict, list)):
                if id(obj) in seen:
                    return
                seen.add(id(obj))
            if isinstance(obj, dict):
                page = obj.get("page")
                if obj.get("type") == "internal" and isinstance(page, str) and page.strip():
                    if wiki:
                        links.append(
                            self.link(
                                page,
                                text=str(obj.get("text") or page),
                                key_path=path,
                                syntax="wiki-page",
                                url=wiki_page_url(page, wiki),
                            )
                        )
                    else:
                        links.append(
                            self.link(
                                page, text=page, key_path=path, syntax="wiki-page", url=None, flags=("no-wiki-base",)
                            )
                        )
                for k, v in obj.items():
                    if k == "page" and obj.get("type") == "internal":
                        continue
                    walk(v, f"{path}.{k}" if path else str(k), str(k).lower())
            elif isinstance(obj, list):
                for i, v in enumerate(obj):
                    walk(v, f"{path}[{i}]", key)
            elif isinstance(obj, str):
                self._front_matter_string(obj, path, key, links, wiki_files)

        walk(meta, "", "")
        return links

    def _front_matter_string(self, value: str, path: str, key: str, links: list[Link], wiki_files: bool) -> None:
        found = self.bare_urls(value, 0, syntax="front-matter", key_path=path)
        links.extend(found)
        if found:
            return
        stripped = value.strip()
        parent = path.rsplit(".", 2)[-2] if path.count(".") >= 1 else ""
        resource_key = key in _RESOURCE_KEYS or (key == "text" and parent.lower() in _RESOURCE_KEYS)
        if resource_key and re.match(r"^(?:/|\./|\.\./)[^\s]*$", stripped):
            links.append(self.link(stripped, text=stripped, key_path=path, syntax="front-matter"))
            return
        if not wiki_files or not self.settings.wiki_base:
            return
        wiki = self.settings.wiki_base
        in_image_field = "image" in path.lower().rsplit(".", 2)[-1] or (key == "text" and "image" in parent.lower())
        if (in_image_field or stripped.lower().startswith(("file:", "image:"))) and _WIKI_FILE_VALUE.match(stripped):
            links.append(
                self.link(stripped, text=stripped, key_path=path, syntax="wiki-file", url=wiki_file_url(stripped, wiki))
            )
            return
        for match in _WIKI_FILE_TOKEN.finditer(value):
            name = match.group(1)
            links.append(self.link(name, text=name, key_path=path, syntax="wiki-file", url=wiki_file_url(name, wiki)))


def _strip_trailing(url: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets from the end of a bare URL."""
    while url:
        last = url[-1]
        closing = {")": "(", "]": "["}.get(last)
        unbalanced = closing is not None and url.count(closing) < url.count(last)
        if last in _TRAILING_PUNCT or unbalanced:
            url = url[:-1]
        else:
            break
    return url


_MD: markdown_it_pyrs.MarkdownIt | None = None
_MD_NODES = {
    "link",
    "image",
    "linkify",
    "autolink",
    "definition",
    "html_inline",
    "html_block",
    "fence",
    "code_block",
    "code_inline",
}
_HAS_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_BACKSLASH_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_DESTINATION = re.compile(r"\s*(<[^>\n]*>|\S+)")
# Link and image spans are not decoded whole: nested images make their total length quadratic.
_SPAN_NODES_DECODED = {"linkify", "autolink", "definition"}
# The text of a link or image is cut at this many characters (nested images repeat their inner text).
_LABEL_LIMIT = 10_000
# A run of this many non-blank lines is broken before its next line that starts with `[` (see below).
_DEFINITION_RUN = 64
_BRACKET_LINE = re.compile(r"^[ \t>]*\[", re.M)
_CONTAINER_PREFIX = re.compile(r"[ \t>]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BACKTICKS = re.compile("`+")
_UNSAFE_LINK = re.compile(
    r"\[([^\]\n]*)\]\(\s*<?((?:javascript|vbscript|file|data(?!:image/(?:gif|png|jpeg|webp);)):(?:[^\s()<>]|\([^\s()]*\))*)>?(?:\s+[\"'(][^)]*)?\s*\)",
    re.I,
)


def _markdown_parser() -> markdown_it_pyrs.MarkdownIt:
    """CommonMark with tables, raw HTML and linkify (bare URLs), in Rust: a 10 MB document parses in ~1 s."""
    global _MD
    if _MD is None:
        md = markdown_it_pyrs.MarkdownIt("commonmark")
        md.enable_many(["linkify", "table", "strikethrough"])
        _MD = md
    return _MD


class _ByteIndex:
    """Maps markdown-it's UTF-8 byte offsets in the body to character offsets in the whole document.

    A character offset is the byte offset less the UTF-8 continuation bytes before it, counted per block
    of 4 KiB ahead of time: each lookup costs at most one block, however long the line (a 1 MB line of
    links used to cost a decode of the line so far for every link).
    """

    _BLOCK = 4096
    _NOT_CONTINUATION = bytes(range(0x80)) + bytes(range(0xC0, 0x100))

    def __init__(self, body: str, body_start: int) -> None:
        self.data = body.encode("utf-8")
        self.body_start = body_start
        self.continuations = [0]
        if len(self.data) != len(body):  # any non-ASCII character at all
            data, block, total = self.data, self._BLOCK, 0
            for at in range(0, len(data), block):
                total += len(data[at : at + block].translate(None, self._NOT_CONTINUATION))
                self.continuations.append(total)

    def offset(self, byte_offset: int) -> int:
        byte_offset = max(0, min(byte_offset, len(self.data)))
        if len(self.continuations) == 1:
            return self.body_start + byte_offset
        block = byte_offset // self._BLOCK
        rest = self.data[block * self._BLOCK : byte_offset].translate(None, self._NOT_CONTINUATION)
        return self.body_start + byte_offset - self.continuations[block] - len(rest)


def _split_definition_runs(body: str, data: bytes) -> tuple[str, Callable[[int], int] | None]:
    """The text to parse, and how to map its byte offsets back to the body's (None: it is the body).

    markdown-it-pyrs reads each link reference definition by first joining every following line up to
    a blank one: a run of n definitions costs n² (50,000 of them, about three minutes). A run of more
    than `_DEFINITION_RUN` non-blank lines is therefore given a blank line (inside the same block quotes)
    before its next line that starts with `[`. Documents without such runs are parsed as written.
    """
    if body.count("[") < _DEFINITION_RUN or len(_BRACKET_LINE.findall(body)) < _DEFINITION_RUN:
        return body, None
    pieces: list[str] = []
    inserted_at: list[int] = []  # byte offsets in the parsed text where a blank line was added
    shifts: list[int] = []  # bytes added up to and including each of them
    added = 0
    byte_at = 0
    run = 0
    for line in body.split("\n"):  # markdown-it ends lines at \n only (\r is gone already)
        content = line.strip(" \t>")
        if not content:
            run = 0
        else:
            if run >= _DEFINITION_RUN and content.startswith("["):
                prefix = _CONTAINER_PREFIX.match(line)
                blank = (prefix.group(0).rstrip(" \t") if prefix else "") + "\n"
                inserted_at.append(byte_at + added)
                added += len(blank)
                shifts.append(added)
                pieces.append(blank)
                run = 0
            run += 1
        pieces.append(line + "\n")
        byte_at += (len(line) if line.isascii() else len(line.encode("utf-8"))) + 1
    if not inserted_at:
        return body, None
    pieces[-1] = pieces[-1][:-1]  # split() gave one piece more than there are line ends
    return "".join(pieces), _offset_mapper(inserted_at, shifts, len(data))


def _offset_mapper(inserted_at: list[int], shifts: list[int], size: int) -> Callable[[int], int]:
    """Byte offsets in a text with insertions back to the original: `inserted_at` where each insertion
    starts (in the new text), `shifts` the bytes inserted up to and including each."""

    def to_original(offset: int) -> int:
        index = bisect.bisect_right(inserted_at, offset) - 1
        if index < 0:
            return offset
        before = shifts[index - 1] if index else 0
        if offset < inserted_at[index] + shifts[index] - before:  # inside an insertion: where it was made
            return min(size, inserted_at[index] - before)
        return min(size, offset - shifts[index])

    return to_original


class _ParserPanic(Exception):
    """markdown-it-pyrs panicked (a Rust panic surfaces as a BaseException, not an Exception)."""


def _parse_markdown(text: str) -> markdown_it_pyrs.Node:
    try:
        return _markdown_parser().tree(text)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException
        raise _ParserPanic(_one_line(str(exc)) or type(exc).__name__) from None


def _escape_unclosed_backticks(text: str) -> tuple[str, Callable[[int], int] | None]:
    """Backslash-escape every backtick run that neither opens nor closes a code span in its paragraph.

    Read left to right as CommonMark does, a run with no run of the same length after it can never open
    a code span, so it is literal text either way; escaped, markdown-it-pyrs no longer trips over it.
    Returns the new text and how to map its byte offsets back.
    """
    pieces: list[str] = []
    inserted_at: list[int] = []
    shifts: list[int] = []
    added = 0
    byte_at = 0
    for paragraph in re.split(r"(\n[ \t>]*\n)", text):
        runs = list(_BACKTICKS.finditer(paragraph))
        by_length: dict[int, list[int]] = {}  # run length -> indexes of the runs of that length, in order
        for number, run in enumerate(runs):
            by_length.setdefault(len(run.group(0)), []).append(number)
        cursor = 0
        number = 0
        while number < len(runs):
            run = runs[number]
            length = len(run.group(0))
            same = by_length[length]
            after = bisect.bisect_right(same, number)
            if after < len(same):  # a code span up to the next run of the same length: left as it is
                number = same[after] + 1
                continue
            number += 1
            start = run.start()
            backslashes = len(paragraph[:start]) - len(paragraph[:start].rstrip("\\"))
            first = 1 if backslashes % 2 else 0  # an escaped first backtick is literal already
            if first == length:
                continue
            head = paragraph[cursor : start + first]
            pieces.append(head)
            byte_at += len(head.encode("utf-8"))
            inserted_at.append(byte_at + added)
            added += length - first
            shifts.append(added)
            pieces.append("\\`" * (length - first))
            byte_at += length - first
            cursor = run.end()
        tail = paragraph[cursor:]
        pieces.append(tail)
        byte_at += len(tail.encode("utf-8"))
    if not inserted_at:
        return text, None
    return "".join(pieces), _offset_mapper(inserted_at, shifts, byte_at)


def _inline_destination(data: bytes, start: int, end: int) -> tuple[str | None, int]:
    """The destination of `[text](dest "title")` as written and its byte offset; None for a reference."""
    if end <= start or data[end - 1 : end] != b")":
        return None, start
    at = data.rfind(b"](", start, end)
    if at < 0:
        return None, start
    inner = data[at + 2 : end - 1].decode("utf-8", errors="replace")
    match = _DESTINATION.match(inner)
    if not match:
        return "", at + 2
    raw = match.group(1)
    before = inner[: match.start(1)]
    offset = at + 2 + (len(before) if before.isascii() else len(before.encode("utf-8")))
    if raw.startswith("<") and raw.endswith(">"):
        return raw[1:-1], offset + 1
    return raw, offset


def _destination(span: str, definition: bool = False) -> tuple[str | None, int | None]:
    """The destination of `[text](dest "title")` or `[label]: dest` as written, and where it starts."""
    if definition:
        at = span.find("]:")
        if at < 0:
            return None, None
        inner_start = at + 2
        inner = span[inner_start:]
    else:
        if not span.endswith(")"):
            return None, None
        at = span.rfind("](")
        if at < 0:
            return None, None
        inner_start = at + 2
        inner = span[inner_start:-1]
    match = _DESTINATION.match(inner)
    if not match:
        return "", inner_start
    raw = match.group(1)
    offset = inner_start + match.start(1)
    if raw.startswith("<") and raw.endswith(">"):
        return raw[1:-1], offset + 1
    return raw, offset


def _link_labels(nodes: list[markdown_it_pyrs.Node]) -> dict[tuple[str, int, int], str]:
    """The text of every link and image, keyed by name and source map.

    Innermost first, so that an image nested in another (`![![![x](a)](b)](c)`) is walked once and its
    outer images reuse its text: walking each from scratch made 10,000 nested images cost a minute.
    """
    raw: dict[tuple[str, int, int], str] = {}
    for node in reversed(nodes):  # pre-order reversed: every node after all of its descendants
        if node.name in ("link", "image") and node.srcmap:
            raw[(node.name, *node.srcmap)] = _node_text(node, raw, normalise=False)
    return {key: " ".join(value.split()) for key, value in raw.items()}


def _node_text(node: markdown_it_pyrs.Node, known: dict[tuple[str, int, int], str], normalise: bool = True) -> str:
    """The text inside a node, at most `_LABEL_LIMIT` characters; links and images in `known` are not walked."""
    parts = []
    size = 0
    stack = list(reversed(node.children))
    while stack and size < _LABEL_LIMIT:
        current = stack.pop()
        name = current.name
        if name in ("link", "image") and current.srcmap:
            text = known.get((name, *current.srcmap))
            if text is not None:
                parts.append(text)
                size += len(text)
                continue
        content = current.meta.get("content")
        if isinstance(content, str) and name in ("text", "code_inline", "text_special"):
            parts.append(content)
            size += len(content)
        stack.extend(reversed(current.children))
    joined = "".join(parts)[:_LABEL_LIMIT]
    return " ".join(joined.split()) if normalise else joined


def _text_until_closing_a(following: list[markdown_it_pyrs.Node]) -> str:
    """The text of an inline `<a>` written as raw HTML inside Markdown: what follows it up to `</a>`."""
    parts = []
    for node in following:
        if node.name == "html_inline":
            if re.match(r"</a\s*>", str(node.meta.get("content", "")), re.I):
                break
        elif node.name in ("text", "code_inline", "text_special"):
            parts.append(str(node.meta.get("content", "")))
    return " ".join("".join(parts).split())


@dataclass
class _FoundAttr:
    value: str
    raw_value: str
    text: str
    syntax: str
    position: tuple[int, int]


class _TagScanner(HTMLParser):
    """Collects URL-valued attributes (and bare URLs in text) with their positions."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[_FoundAttr] = []
        self.base_href: str | None = None
        self._skip_text = 0  # inside <a>, <script>, <style>: text is not a separate link
        self._open_a: _FoundAttr | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): v for k, v in attrs if v is not None}
        position = self.getpos()
        raw_tag = self.get_starttag_text() or ""
        if tag == "base" and values.get("href"):
            self.base_href = values["href"].strip()
            return
        if tag in ("a", "script", "style"):
            self._skip_text += 1
        for attr in _URL_ATTRS.get(tag, ()):
            value = values.get(attr)
            if value is None or not value.strip():
                continue
            urls = _srcset_urls(value) if attr == "srcset" else [value.strip()]
            for url in urls:
                syntax = "html-" + tag
                text = values.get("alt") or values.get("title") or ""
                found = _FoundAttr(url, _raw_in_tag(raw_tag, url), text, syntax, position)
                self.found.append(found)
                if tag == "a":
                    self._open_a = found
        if tag == "meta":
            prop = (values.get("property") or values.get("name") or "").lower()
            content = values.get("content", "").strip()
            if prop in _META_URL_PROPERTIES and content:
                self.found.append(_FoundAttr(content, content, prop, "html-meta", position))
            if (values.get("http-equiv") or "").lower() == "refresh":
                match = re.search(r"url\s*=\s*['\"]?([^'\"\s]+)", content, re.I)
                if match:
                    self.found.append(_FoundAttr(match.group(1), match.group(1), "refresh", "html-meta", position))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in ("a", "script", "style"):
            self._skip_text = max(0, self._skip_text - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("a", "script", "style"):
            self._skip_text = max(0, self._skip_text - 1)
        if tag == "a":
            self._open_a = None

    def handle_data(self, data: str) -> None:
        if self._open_a is not None and not self._open_a.text:
            self._open_a.text = data.strip()
        if self._skip_text or ":" not in data:
            return
        self.found.append(_FoundAttr(data, "", "", "html-text", self.getpos()))


def _raw_in_tag(raw_tag: str, value: str) -> str:
    """The attribute value as written in the tag (entities still escaped), for locating it."""
    if value in raw_tag:
        return value
    escaped = value.replace("&", "&amp;")
    return escaped if escaped in raw_tag else value


def _srcset_urls(value: str) -> list[str]:
    urls = []
    for candidate in value.split(","):
        parts = candidate.strip().split()
        if parts:
            urls.append(parts[0])
    return urls
