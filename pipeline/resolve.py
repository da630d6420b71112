"""Resolve stage: Links → Targets.

Pure functions, no network: unwrap redirect wrappers (a table of rules, one line each), normalise a
`canonical` form for deduplication while keeping the exact unwrapped URL for fetching, classify the
target, and group every Link that points at the same canonical URL into one Target.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote, unquote_to_bytes, urlunsplit

from pipeline.records import Hop, Link, Rejected, Target

MAX_HOPS = 8
# Longer URLs are reported, never unwrapped or fetched: servers refuse far shorter ones (8-16 KiB is usual,
# browsers stop at 2 MB), and a 10 MB wrapper with millions of parameters took seconds to take apart.
MAX_URL_LENGTH = 65_536

# Parameters the wrappers add themselves; anything else after the target suggests that the target's
# own query was not encoded (`/url?q=https://ex.com/p?a=1&b=2`).
_GOOGLE_OWN = frozenset(
    {"sa", "ust", "usg", "ved", "source", "cd", "cad", "rct", "esrc", "uact", "sntz", "opi", "sig", "ei", "bvm"}
    | {"psig", "ptn", "hl", "gl", "oq", "aqs", "client"}
)


@dataclass(frozen=True)
class WrapperRule:
    """A redirect wrapper: on these hosts and paths, this query parameter holds the real target."""

    name: str
    hosts: re.Pattern[str]
    paths: tuple[str, ...]
    params: tuple[str, ...]
    own_params: frozenset[str] = field(default_factory=frozenset)


def _rule(
    name: str, hosts: str, paths: tuple[str, ...], params: tuple[str, ...], own: Iterable[str] = ()
) -> WrapperRule:
    return WrapperRule(name, re.compile(hosts), paths, params, frozenset(own))


# Adding a wrapper is one line here.
WRAPPERS: tuple[WrapperRule, ...] = (
    _rule("google", r"(?:www\.)?google\.(?:com?\.)?[a-z]{2,3}", ("/url", "/interstitial"), ("q", "url"), _GOOGLE_OWN),
    _rule("facebook", r"l[m]?\.facebook\.com|l\.messenger\.com", ("/l.php",), ("u",), ("h", "s", "__tn__", "c")),
    _rule("instagram", r"l\.instagram\.com", ("/", ""), ("u",), ("e",)),
    _rule(
        "youtube", r"(?:www\.|m\.)?youtube\.com", ("/redirect",), ("q",), ("event", "redir_token", "v", "html_redirect")
    ),
    _rule("vk", r"(?:m\.)?vk\.com", ("/away.php", "/away"), ("to",), ("cc_key", "utf", "post", "el")),
    _rule("linkedin", r"(?:www\.)?linkedin\.com", ("/redir/redirect",), ("url",), ("urlhash", "trk")),
    _rule("slack", r"slack-redir\.net", ("/link",), ("url",)),
    _rule("steam", r"steamcommunity\.com", ("/linkfilter/",), ("url", "u")),
)

# Removed from the canonical form only: they identify a visit, not a resource.
_TRACKING = re.compile(
    r"^(?:utm_[a-z_]+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|igshid|igsh|yclid|_ga|_gl|"
    r"__tn__|__xts__(?:\[\d+\])?|__cft__(?:\[\d+\])?|fb_dtsg_ag|ust|usg|ved|ei|sa|si|feature|ref_src|ref_url|"
    r"spm|share_id|mibextid)$",
    re.I,
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

_SNAPSHOT_HOSTS = re.compile(r"(?:www\.)?archive\.(?:today|ph|is|fo|li|vn|md)")
_YOUTUBE_HOSTS = re.compile(r"(?:www\.|m\.|music\.)?youtube(?:-nocookie)?\.com")
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
# Video sites by host (a leading www., m. or web. is ignored): the paths that are videos there.
_VIDEO_PATHS: dict[str, re.Pattern[str]] = {
    host: re.compile(pattern)
    for host, pattern in {
        "facebook.com": r"/(?:[^/]+/)?videos?/|/watch/?$|/reel/|/video\.php",
        "fb.watch": r"/.+",
        "vimeo.com": r"/(?:\d+|channels/[^/]+/\d+|video/\d+)",
        "player.vimeo.com": r"/video/\d+",
        "dailymotion.com": r"/video/",
        "dai.ly": r"/.+",
        "tiktok.com": r"/@[^/]+/video/",
        "instagram.com": r"/(?:reel|reels|tv)/",
        "rumble.com": r"/v[a-z0-9]+",
        "bitchute.com": r"/video/",
        "odysee.com": r"/@",
        "streamable.com": r"/[a-z0-9]+",
        "vk.com": r"/video",
        "ok.ru": r"/video/",
        "twitch.tv": r"/videos/|/clip/",
        "clips.twitch.tv": r"/.+",
    }.items()
}
EXTENSIONS = {
    "image": {"jpg", "jpeg", "png", "gif", "webp", "svg", "tif", "tiff", "bmp", "avif", "heic", "ico"},
    "video": {"mp4", "webm", "mov", "mkv", "m4v", "avi", "flv", "m3u8", "mpd", "ogv", "3gp", "ts"},
    "audio": {"mp3", "wav", "m4a", "flac", "opus", "oga", "aac"},
    "document": {
        "pdf",
        "doc",
        "docx",
        "xls",
        "xlsx",
        "ppt",
        "pptx",
        "odt",
        "ods",
        "odp",
        "rtf",
        "epub",
        "csv",
    },
}
_IMAGE_SYNTAX = {"image", "reference-image", "html-img", "html-source"}
_MAP_HOSTS = re.compile(
    r"(?:www\.)?google\.(?:com?\.)?[a-z]{2,3}|maps\.google\.(?:com?\.)?[a-z]{2,3}|maps\.app\.goo\.gl|"
    r"(?:www\.)?openstreetmap\.org|(?:www\.)?osm\.org|(?:www\.)?wikimapia\.org|(?:www\.)?bing\.com|"
    r"(?:www\.)?yandex\.[a-z]{2,3}|maps\.apple\.com|(?:www\.)?mapillary\.com"
)
_COORD = r"(-?\d{1,3}(?:\.\d+)?)"
_DMS = re.compile(
    r"(\d{1,3})°\s*(\d{1,2})['′]\s*(\d{1,2}(?:\.\d+)?)[\"″]?\s*([NS])[\s+,]*"
    r"(\d{1,3})°\s*(\d{1,2})['′]\s*(\d{1,2}(?:\.\d+)?)[\"″]?\s*([EW])"
)


@dataclass
class Resolution:
    targets: list[Target]
    rejected: list[Rejected]


# -- unwrapping --------------------------------------------------------------------------------------


def decode_once(value: str) -> str:
    """Percent-decode exactly one layer, then re-escape what may not stand in a URI.

    `%3D` becomes `=`, `%25D8` becomes `%D8` (still encoded) and `%2520` becomes `%20`, never a
    space. Bytes that are not printable ASCII (and `"<>\\^`{|}`) are written back as `%XX`, so
    nothing is lost and the result is a URL that can be fetched as it stands.
    """
    raw = unquote_to_bytes(value)
    return _NOT_URI_BYTES.sub(lambda m: b"%%%02X" % m.group()[0], raw).decode("ascii")


_NOT_URI_BYTES = re.compile(rb'[^\x21-\x7e]|["<>\\^`{|}]')


class UrlParts(NamedTuple):
    scheme: str  # lower case
    netloc: str
    path: str
    query: str
    fragment: str
    host: str  # lower case, IPv6 without brackets
    port: int | None


_URI = re.compile(r"^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)


@lru_cache(maxsize=16384)
def split_url(url: str) -> UrlParts | None:
    """Split a URL (RFC 3986 appendix B) once per URL, as several steps ask; None when the port or host is bad.

    Cheaper than urllib's urlsplit, which dominated the time of resolving 100,000 links.
    """
    match = _URI.match(url)
    if match is None:  # pragma: no cover - the expression matches any string
        return None
    scheme, netloc, path, query, fragment = match.groups(default="")
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(":")
    port = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    return UrlParts(scheme.lower(), netloc, path, query, fragment, host.lower(), port)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name) if "%" in name else name, value))
    return pairs


def unwrap_once(url: str) -> tuple[str, str, bool] | None:
    """One unwrapping step: (rule name, target URL, ambiguous), or None when `url` is no wrapper."""
    parts = split_url(url)
    if parts is None:
        return None
    host = parts.host
    if parts.scheme not in ("http", "https"):
        return None
    for rule in WRAPPERS:
        if parts.path not in rule.paths or not rule.hosts.fullmatch(host):
            continue
        pairs = _query_pairs(parts.query)
        for param in rule.params:
            index = next((i for i, (n, v) in enumerate(pairs) if n == param and v), None)
            if index is None:
                continue
            value = pairs[index][1]
            ambiguous = False
            looks_like_url = re.match(r"^https?(?::|%3A|%253A)", value, re.I)
            if not looks_like_url:
                continue
            first = decode_once(value)
            strays = [(n, v) for n, v in pairs[index + 1 :] if n not in rule.own_params and n not in rule.params]
            if strays and "?" in first:
                # The target's own query was not encoded: the stray parameters are most likely its own.
                value += "".join(f"&{n}={v}" for n, v in strays)
                ambiguous = True
            if parts.fragment and "?" in first and not re.search(r"%23", value, re.I):
                value += "%23" + parts.fragment.split("&")[0]
                ambiguous = True
            target = decode_once(value)
            if re.match(r"^https?%3A", target, re.I):
                target = decode_once(target)  # a second layer, only when the scheme is still encoded
            if not target.lower().startswith(("http://", "https://")):
                continue
            return rule.name, target, ambiguous
    return None


def unwrap(url: str) -> tuple[str, tuple[Hop, ...], tuple[str, ...]]:
    """Unwrap repeatedly until no wrapper is left: (final URL, hops, flags)."""
    hops: list[Hop] = []
    flags: list[str] = []
    current = url
    for _ in range(MAX_HOPS):
        step = unwrap_once(current)
        if step is None:
            return current, tuple(hops), tuple(flags)
        rule, current, ambiguous = step
        hops.append(Hop(rule, current))
        if ambiguous and "ambiguous" not in flags:
            flags.append("ambiguous")
    if unwrap_once(current) is not None:
        flags.append("nesting-capped")
    return current, tuple(hops), tuple(flags)


# -- normalisation -----------------------------------------------------------------------------------


def _normalise_escapes(component: str) -> str:
    """Upper-case `%xx` escapes and decode escaped unreserved characters (RFC 3986 6.2.2)."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char.isascii() and (char.isalnum() or char in "-._~"):
            return char
        return "%" + match.group(1).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", fix, component)


def youtube_id(url: str) -> str | None:
    """The video id of any YouTube URL form (watch, shorts, embed, live, youtu.be), if it has one."""
    parts = split_url(url)
    if parts is None:
        return None
    host = parts.host
    candidate = None
    if host == "youtu.be":
        candidate = parts.path.strip("/").split("/")[0]
    elif _YOUTUBE_HOSTS.fullmatch(host):
        if parts.path in ("/watch", "/watch/"):
            candidate = next((v for n, v in _query_pairs(parts.query) if n == "v"), None)
        else:
            match = re.match(r"^/(?:shorts|embed|live|v|e)/([^/?#]+)", parts.path)
            candidate = match.group(1) if match else None
    if candidate and _YOUTUBE_ID.fullmatch(candidate):
        return candidate
    return None


def canonicalize(url: str) -> str:
    """A form for deduplication only: never fetched, so it may drop what does not name the resource."""
    video = youtube_id(url)
    if video:
        return f"https://www.youtube.com/watch?v={video}"
    parts = split_url(url)
    if parts is None:
        return url
    scheme, host, port = parts.scheme, parts.host, parts.port
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path = _normalise_escapes(parts.path) or "/"
    query = "&".join(
        part for part in parts.query.split("&") if part and not _TRACKING.match(unquote(part.partition("=")[0]))
    )
    query = _normalise_escapes(query)
    fragment = parts.fragment if parts.fragment.startswith("!") else ""  # `#!` routes are part of the page
    return urlunsplit((scheme, netloc, path, query, fragment))


# -- classification ----------------------------------------------------------------------------------


def _extension(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[-1].lower() if "." in last else ""


def classify(url: str, syntaxes: Iterable[str] = ()) -> tuple[str, dict[str, object]]:
    """The kind of a target (video, image, document, audio, map, snapshot, page) and details of it."""
    parts = split_url(url)
    if parts is None:
        return "page", {}
    host = parts.host
    path = parts.path
    if _SNAPSHOT_HOSTS.fullmatch(host) or (host == "web.archive.org" and path.startswith("/web/")):
        return "snapshot", {}
    if host in ("ghostarchive.org", "www.ghostarchive.org") and path.startswith(("/archive/", "/varchive/")):
        return "snapshot", {}
    if _MAP_HOSTS.fullmatch(host) and _is_map(host, path):
        return "map", map_details(url)
    video_paths = _VIDEO_PATHS.get(re.sub(r"^(?:www|m|web)\.", "", host))
    if youtube_id(url) or (video_paths is not None and video_paths.search(path)):
        return "video", {}
    ext = _extension(path)
    if re.fullmatch(r"(?:[a-z]+\.)?wikipedia\.org|commons\.wikimedia\.org", host) and "/wiki/" in path:
        return "page", {}
    for kind in ("image", "video", "audio", "document"):
        if ext in EXTENSIONS[kind]:
            return kind, {}
    syntaxes = set(syntaxes)
    if syntaxes and syntaxes <= _IMAGE_SYNTAX:
        return "image", {}
    return "page", {}


def _is_map(host: str, path: str) -> bool:
    if host.startswith("maps.") or host in ("maps.app.goo.gl",):
        return True
    if "openstreetmap" in host or "osm.org" in host or "wikimapia" in host or "mapillary" in host:
        return True
    return path.startswith("/maps")


def map_details(url: str) -> dict[str, object]:
    """Coordinates in a map link: the place marker (`!3d!4d`) first, then the viewport (`/@lat,lon`)."""
    text = unquote(url)
    found: list[dict[str, object]] = []

    def add(source: str, lat: float, lon: float) -> None:
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            found.append({"source": source, "lat": lat, "lon": lon})

    for match in re.finditer(r"!3d" + _COORD + r"!4d" + _COORD, text):
        add("place", float(match.group(1)), float(match.group(2)))
    for match in _DMS.finditer(text.replace("+", " ")):
        d1, m1, s1, ns, d2, m2, s2, ew = match.groups()
        lat = int(d1) + int(m1) / 60 + float(s1) / 3600
        lon = int(d2) + int(m2) / 60 + float(s2) / 3600
        add("dms", round(-lat if ns == "S" else lat, 7), round(-lon if ew == "W" else lon, 7))
    for match in re.finditer(r"/@" + _COORD + "," + _COORD, text):
        add("viewport", float(match.group(1)), float(match.group(2)))
    for match in re.finditer(r"[?&](?:q|ll|query|center|sll|mlat)=" + _COORD + r"(?:,|&mlon=)" + _COORD, text):
        add("query", float(match.group(1)), float(match.group(2)))
    for match in re.finditer(r"#map=\d+(?:\.\d+)?/" + _COORD + "/" + _COORD, text):
        add("viewport", float(match.group(1)), float(match.group(2)))
    if not found:
        return {}
    best = found[0]
    return {"lat": best["lat"], "lon": best["lon"], "coordinates": found}


# -- the stage ---------------------------------------------------------------------------------------


def reject_reason(link: Link) -> str | None:
    """Why a link can never be fetched, or None when it can (or may, once it has a base URL)."""
    href = link.href.strip()
    if not href:
        return "empty link"
    if link.url is None:
        return None
    if href.startswith("#"):
        return "in-document anchor"
    if len(link.url) > MAX_URL_LENGTH:
        return f"URL too long ({len(link.url):,} characters; at most {MAX_URL_LENGTH:,} are fetched)"
    parts = split_url(link.url)
    if parts is None:
        return "not a valid URL (bad host or port)"
    if parts.scheme not in ("http", "https"):
        return f"scheme '{parts.scheme}:' is not fetched (only http and https)"
    if not parts.host:
        return "URL has no host"
    if _BAD_HOST.search(parts.host):
        return "not a valid URL (bad host)"
    return None


_BAD_HOST = re.compile(r"[\x00-\x20<>\"\\^`{|}%]")


@dataclass
class _Group:
    url: str
    canonical: str
    hops: tuple[Hop, ...]
    flags: list[str]
    links: list[Link] = field(default_factory=list)


def resolve(links: Iterable[Link]) -> Resolution:
    """Group links into Targets by canonical URL, in order of first appearance."""
    groups: dict[str, _Group] = {}  # insertion-ordered: first appearance wins
    rejected: list[Rejected] = []
    for link in links:
        reason = reject_reason(link)
        if reason is not None:
            rejected.append(Rejected(link, reason))
            continue
        if link.url is None:
            key = "unresolved:" + link.href
            url, hops, flags, canonical = link.href, (), link.flags, key
        else:
            url, hops, flags = unwrap(link.url)
            canonical = key = canonicalize(url)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(url, canonical, hops, [])
        group.links.append(link)
        group.flags.extend(f for f in flags if f not in group.flags)
    targets = []
    for group in groups.values():
        kind, details = classify(group.url, (link.syntax for link in group.links))
        targets.append(
            Target(
                url=group.url,
                canonical=group.canonical,
                kind=kind,
                hops=group.hops,
                links=tuple(group.links),
                flags=tuple(group.flags),
                details=details,
            )
        )
    return Resolution(targets, rejected)
