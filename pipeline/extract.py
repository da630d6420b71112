"""Extract stage: every link in a document, with where it was found.

Markdown goes through markdown-it-py (CommonMark, tables, linkify for bare URLs), YAML front matter
through python-frontmatter's reader, HTML through the standard library's HTML parser and plain text
through linkify-it. Positions are 1-based `line:column` of the first character of the href as written
(for reference-style links: of the `[` that cites the definition); front-matter links carry their key
path instead. Nothing here fetches anything.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import frontmatter
import yaml
from linkify_it import LinkifyIt
from markdown_it import MarkdownIt
from markdown_it.token import Token

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
                result.errors.append(f"{source}: front matter is not valid YAML{where}: {problem}")
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
        links.extend(emitter.front_matter(meta))
    if fmt == "text":
        links.extend(emitter.bare_urls(text[body_start:], body_start, syntax="bare"))
    else:
        links.extend(emitter.markdown(text[body_start:], body_start))
    result.links = links
    return result


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
        if isinstance(value, str) and urlsplit(value.strip()).scheme in ("http", "https"):
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
        self.linkify = LinkifyIt(options={"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})

    # -- positions and URLs -------------------------------------------------------------------------

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return index + 1, offset - self.line_starts[index] + 1

    def absolute(self, href: str) -> tuple[str | None, tuple[str, ...]]:
        """Make an href absolute against the base URL; a relative href with no base stays unresolved."""
        stripped = href.strip()
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", stripped):
            return stripped, ()
        if stripped.startswith("#") or not stripped:
            return stripped, ()
        base = self.settings.base_url
        if base:
            return urljoin(base, stripped), ()
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
        md = _markdown_parser()
        env: dict[str, Any] = {}
        tokens = md.parse(body, env)
        body_lines = [0] + [m.end() for m in re.finditer("\n", body)]
        links: list[Link] = []

        def region(token: Token) -> tuple[int, int]:
            if not token.map:
                return body_start, len(self.text)
            first, last = token.map
            start = body_lines[min(first, len(body_lines) - 1)]
            end = body_lines[last] if last < len(body_lines) else len(body)
            return body_start + start, body_start + end

        for token in tokens:
            if token.type == "inline":
                links.extend(self._inline(token.children or [], *region(token)))
            elif token.type == "html_block":
                start, _ = region(token)
                links.extend(self.html(token.content, start))
            elif token.type in ("fence", "code_block"):
                start, end = region(token)
                links.extend(self._bare_in_region(token.content, start, end, syntax="code"))
        for label, ref in (env.get("references") or {}).items():
            href = ref.get("href", "")
            start, end = body_start, len(self.text)
            if ref.get("map"):
                start = body_start + body_lines[ref["map"][0]]
            offset = self._find(href, start, end)
            links.append(
                self.link(href, text=label, offset=offset if offset is not None else start, syntax="definition")
            )
        return links

    def _find(self, needle: str, start: int, end: int) -> int | None:
        if not needle:
            return None
        index = self.text.find(needle, start, end)
        return index if index >= 0 else None

    def _bare_in_region(self, content: str, start: int, end: int, syntax: str) -> list[Link]:
        links = []
        cursor = start
        for _, raw in self.url_matches(content):
            offset = self._find(raw, cursor, end)
            if offset is not None:
                cursor = offset + len(raw)
            links.append(self.link(raw, text=raw, offset=offset if offset is not None else start, syntax=syntax))
        return links

    def _inline(self, children: list[Token], start: int, end: int) -> list[Link]:
        links: list[Link] = []
        cursor = start
        for i, child in enumerate(children):
            if child.type == "link_open":
                href = str(child.attrs.get("href", ""))
                label_parts = []
                for follower in children[i + 1 :]:
                    if follower.type == "link_close":
                        break
                    label_parts.append(follower.content)
                label = "".join(label_parts)
                offset: int | None
                if child.markup == "linkify":
                    tail_href = self._linkify_tail(children, i, label)
                    syntax = "bare"
                    if tail_href != label:
                        href = href + tail_href[len(label) :]
                        label = tail_href
                    offset = self._find(label, cursor, end)
                    length = len(label)
                elif child.markup == "autolink":
                    syntax = "autolink"
                    offset = self._find(href, cursor, end)
                    length = len(href)
                else:
                    offset, length, syntax = self._locate_link(href, label, cursor, end, image=False)
                if offset is not None:
                    cursor = offset + length
                links.append(self.link(href, text=label, offset=offset if offset is not None else start, syntax=syntax))
            elif child.type == "image":
                src = str(child.attrs.get("src", ""))
                offset, length, syntax = self._locate_link(src, child.content, cursor, end, image=True)
                if offset is not None:
                    cursor = offset + length
                links.append(
                    self.link(src, text=child.content, offset=offset if offset is not None else start, syntax=syntax)
                )
            elif child.type == "html_inline":
                tag_at = self._find(child.content, cursor, end)
                found = self.html(child.content, tag_at if tag_at is not None else cursor)
                if re.match(r"<a\s", child.content, re.I):
                    label = _text_until_closing_a(children[i + 1 :])
                    found = [replace(link, text=label) if link.syntax == "html-a" else link for link in found]
                if tag_at is not None:
                    cursor = tag_at + len(child.content)
                links.extend(found)
            elif child.type == "code_inline":
                links.extend(self._bare_in_region(child.content, cursor, end, syntax="code"))
        return links

    def _locate_link(self, href: str, label: str, cursor: int, end: int, *, image: bool) -> tuple[int | None, int, str]:
        """Find an inline link's href, or a reference-style link's `[label]`, after the cursor."""
        kind = "image" if image else "inline"
        if href:
            pattern = re.compile(r"\]\(\s*<?" + re.escape(href))
            match = pattern.search(self.text, cursor, end)
            if match:
                return match.end() - len(href), len(href), kind
        ref_kind = "reference-image" if image else "reference"
        if label:
            at = self._find(("![" if image else "[") + label, cursor, end)
            if at is not None:
                return at, len(label) + 1, ref_kind
        at = self._find(href, cursor, end) if href else None
        if at is not None:
            return at, len(href), kind
        return None, 0, ref_kind if not href else kind

    @staticmethod
    def _linkify_tail(children: list[Token], index: int, label: str) -> str:
        """linkify-it ends a URL at `'_`; take the rest of `Martyrs'_Brigade` from the next text token."""
        close = index + 1
        while close < len(children) and children[close].type != "link_close":
            close += 1
        if close + 1 >= len(children) or children[close + 1].type != "text":
            return label
        tail = _APOSTROPHE_TAIL.match(children[close + 1].content)
        if not tail:
            return label
        return label + _strip_trailing(tail.group(0))

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
            base = urljoin(self.settings.base_url or "", scanner.base_href)
            if urlsplit(base).scheme in ("http", "https"):
                self.settings = replace(self.settings, base_url=base)
        markup_lines = [0] + [m.end() for m in re.finditer("\n", markup)]
        for found in scanner.found:
            line, col = found.position
            tag_offset = start + markup_lines[line - 1] + col
            if found.syntax == "html-text":
                for index, raw in self.url_matches(found.value):
                    value_at = self._find(raw, tag_offset, start + len(markup))
                    offset = value_at if value_at is not None else tag_offset + index
                    links.append(self.link(raw, text=raw, offset=offset, syntax="bare"))
                continue
            value_at = self._find(found.raw_value, tag_offset, start + len(markup)) if found.raw_value else None
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


def _text_until_closing_a(children: list[Token]) -> str:
    """The text of an inline `<a>` written as raw HTML inside Markdown."""
    parts = []
    for child in children:
        if child.type == "html_inline" and re.match(r"</a\s*>", child.content, re.I):
            break
        parts.append(child.content)
    return " ".join("".join(parts).split())


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


_MD: MarkdownIt | None = None


def _markdown_parser() -> MarkdownIt:
    """CommonMark with tables, raw HTML and linkify; hrefs are kept as written (no normalisation)."""
    global _MD
    if _MD is None:
        md = MarkdownIt("commonmark", {"linkify": True, "html": True}).enable(["linkify", "table", "strikethrough"])
        md.linkify.set({"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})
        md.normalizeLink = lambda url: url  # type: ignore[method-assign]
        md.normalizeLinkText = lambda url: url  # type: ignore[method-assign]
        md.validateLink = lambda url: True  # type: ignore[method-assign]  # javascript: is reported, not dropped
        _MD = md
    return _MD


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
