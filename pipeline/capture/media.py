"""Media fetcher: yt-dlp (Python API) downloads a video with its info.json, thumbnail and subtitles.

Everything is written into a private `media/<key>.part/` directory that is renamed to `media/<key>/` only
after yt-dlp succeeded, the file names were made bag-safe, every file was hashed and fsynced and the WARC
records were written: a crash therefore never leaves a directory that looks finished. yt-dlp writes the
files itself, so each one is read back once to hash it (sha256 and sha512 together). With `media_in_warc`
a media file is read a second time: `WarcFile.write_resource` needs the payload sha256 before the body.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mimetypes
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.extractor import gen_extractor_classes
from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError
from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
from yt_dlp.utils import ContentTooShortError, GeoRestrictedError, UnsupportedError, YoutubeDLError

from pipeline.capture.guard import AddressPolicy, connections_checked, refused_in_this_thread
from pipeline.capture.warc import WarcFile, as_warc_record
from pipeline.records import Capture, CapturedFile, WarcRecord, target_key

CHUNK_SIZE = 1 << 20
OUTPUT_TEMPLATE = "%(title).80B [%(id)s].%(ext)s"
"""Title (cut at 80 bytes, so long titles cannot exceed file-name limits) plus id, which keeps names unique."""

_MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".flv": "video/x-flv",
    ".3gp": "video/3gpp",
    ".ts": "video/mp2t",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".aac": "audio/aac",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".vtt": "text/vtt",
    ".srt": "application/x-subrip",
    ".ass": "text/x-ssa",
    ".ssa": "text/x-ssa",
    ".ttml": "application/ttml+xml",
    ".json": "application/json",
}
"""Explicit because `mimetypes` depends on the host's /etc/mime.types and misses several of these."""

_UNSAFE_NAME_CHARS = re.compile(r"[%/\x00-\x1f\x7f]")
"""Bag rules: no `%` (BagIt percent-encoding), no `/`, no CR/LF (manifest lines) nor other controls."""
_UNSAFE_NAME_START = re.compile(r"\A[.\-\s]+")
"""Bag rules: no leading `.` (hidden files) or `-` (read as an option by shell tools)."""
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URI_UNSAFE = re.compile(r"[\x00-\x20\x7f]")

_PERMANENT_MESSAGES = re.compile(
    r"unsupported url|http error 4(?:0[0-7]|1\d|5\d)\b|video unavailable|private video|not available"
    r"|has been removed|geo.?restrict|copyright|max-filesize|min-filesize|no video formats|account.*terminated",
    re.IGNORECASE,
)
_TRANSIENT_MESSAGES = re.compile(
    r"timed? ?out|connection (?:refused|reset|aborted)|temporar|try again|network is unreachable"
    r"|name or service not known|content too short|did not get any data|incomplete ?read|http error (?:408|429|5\d\d)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MediaSettings:
    """yt-dlp choices the pipeline exposes; everything else is fixed by `_ydl_options`."""

    format: str = "bv*+ba/b"  # best video+audio merged (ffmpeg), else best single file
    merge_output_format: str = "mp4"
    max_filesize: int | None = None  # bytes
    socket_timeout: float = 30.0
    retries: int = 3
    media_in_warc: bool = False  # also write each media file into the WARC as a `resource` record
    subtitles: bool = True
    thumbnails: bool = True
    proxy: str | None = None


# -- routing -----------------------------------------------------------------------------------------------


@functools.cache
def _specific_extractors() -> tuple[Any, ...]:
    """Every default-enabled extractor except Generic (which accepts any URL), in yt-dlp's order.

    Each is matched once against a dummy URL so all URL patterns are compiled now, not spread over calls.
    """
    extractors = tuple(ie for ie in gen_extractor_classes() if ie._ENABLED and ie.ie_key() != "Generic")
    for ie in extractors:
        ie.suitable("about:blank")
    return extractors


def yt_dlp_claims(url: str) -> bool:
    """True when a site-specific yt-dlp extractor handles `url`, so it should go to the media fetcher.

    Offline: only the extractors' URL patterns are matched (compiled once, then a few ms per URL).
    """
    return any(ie.suitable(url) for ie in _specific_extractors())


# -- capture -----------------------------------------------------------------------------------------------


class _Collector:
    """yt-dlp logger: keeps warnings/errors for the Capture instead of printing, and download aborts
    (e.g. max-filesize), which yt-dlp only reports as screen messages without raising."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.aborts: list[str] = []

    def debug(self, message: str) -> None:
        text = _one_line(message)
        if text.startswith("[download]") and text.endswith("Aborting."):
            self.aborts.append(text.removeprefix("[download]").strip())

    info = debug

    def warning(self, message: str) -> None:
        self.warnings.append(_one_line(message).removeprefix("WARNING: "))

    def error(self, message: str) -> None:
        self.errors.append(_one_line(message).removeprefix("ERROR: "))


class _CaptureFailed(Exception):
    """A failure to report as a `failed` Capture (not a programming error)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def capture_media(
    url: str,
    *,
    canonical: str,
    kind: str,
    out_dir: Path,
    settings: MediaSettings,
    warc: WarcFile | None = None,
    warc_name: str | None = None,
    page_url: str | None = None,
    policy: AddressPolicy | None = None,
) -> Capture:
    """Download `url` with yt-dlp into `out_dir/media/<target_key(canonical)>/` and describe the result.

    Never raises for download problems (they become `outcome="failed"` with a one-line `error`); only
    programming errors propagate. The `.part` directory is removed on every unsuccessful path. With
    `policy`, every connection yt-dlp opens is held to it (`guard.connections_checked`).
    """
    started = _now()
    key = target_key(canonical)
    media_root = Path(out_dir) / "media"
    final_dir = media_root / key
    part_dir = media_root / f"{key}.part"
    collector = _Collector()

    def failed(message: str, retryable: bool) -> Capture:
        details: dict[str, Any] = {"warnings": collector.warnings}
        if collector.errors:
            details["errors"] = collector.errors
        return Capture(
            url=url,
            canonical=canonical,
            kind=kind,
            fetcher="media",
            outcome="failed",
            started=started,
            ended=_now(),
            tools=_tool_versions(None),
            error=message,
            retryable=retryable,
            details=details,
        )

    if final_dir.exists():
        return failed(f"refusing to overwrite media/{key}: a finished capture of this target already exists", False)
    try:
        _remove(part_dir)  # a stale .part is a crashed run's leftover, never evidence
        part_dir.mkdir(parents=True)
        info, ffmpeg = _download(url, part_dir, settings, collector, policy)
        tools = _tool_versions(info, ffmpeg)
        files, media = _collect_files(info, part_dir, key, collector)
        captured, warc_records = _hash_and_archive(
            files, media, url=url, page_url=page_url, settings=settings, warc=warc, warc_name=warc_name
        )
        _publish(part_dir, final_dir)
    except _CaptureFailed as exc:
        return failed(str(exc), exc.retryable)
    except OSError as exc:  # disk full, permissions, a concurrent writer: not a yt-dlp verdict, may pass later
        return failed(_one_line(f"{type(exc).__name__}: {exc}"), not isinstance(exc, FileExistsError))
    finally:
        _remove(part_dir)

    first = media[0][1]
    details: dict[str, Any] = {
        "title": first.get("title"),
        "duration": first.get("duration"),
        "uploader": first.get("uploader"),
        "webpage_url": first.get("webpage_url"),
        "format": first.get("format"),
        "warnings": collector.warnings,
    }
    if len(media) > 1:
        details["media_files"] = len(media)
    return Capture(
        url=url,
        canonical=canonical,
        kind=kind,
        fetcher="media",
        outcome="ok",
        started=started,
        ended=_now(),
        final_url=first.get("webpage_url"),
        title=first.get("title"),
        files=tuple(captured),
        warc_records=tuple(warc_records),
        tools=tools,
        details=details,
    )


def _ydl_options(settings: MediaSettings, part_dir: Path, logger: _Collector) -> dict[str, Any]:
    """Fixed archival choices around the caller's settings; no cookies, netrc or other credentials."""
    options: dict[str, Any] = {
        "format": settings.format,
        "merge_output_format": settings.merge_output_format,
        "paths": {"home": str(part_dir), "temp": str(part_dir)},
        "outtmpl": {"default": OUTPUT_TEMPLATE},
        "restrictfilenames": False,  # keep non-Latin titles readable; bag rules are applied afterwards
        "writeinfojson": True,
        "writethumbnail": settings.thumbnails,
        "writesubtitles": settings.subtitles,
        "writeautomaticsub": False,
        "subtitleslangs": ["all", "-live_chat"],  # every uploaded subtitle; live chat is a replay, not a subtitle
        "noplaylist": True,
        "concurrent_fragment_downloads": 1,  # fragments in this thread, where the address guard holds
        "socket_timeout": settings.socket_timeout,
        "retries": settings.retries,
        "fragment_retries": settings.retries,
        "extractor_retries": settings.retries,
        "usenetrc": False,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "logger": logger,
    }
    if settings.max_filesize is not None:
        options["max_filesize"] = settings.max_filesize
    if settings.proxy is not None:
        options["proxy"] = settings.proxy
    return options


def _download(
    url: str, part_dir: Path, settings: MediaSettings, collector: _Collector, policy: AddressPolicy | None = None
) -> tuple[dict[str, Any], str]:
    """Run yt-dlp; return its info dict and the ffmpeg version it found (or "absent").

    yt-dlp's failures become `_CaptureFailed` carrying yt-dlp's own message (or the address guard's, when
    it refused one of yt-dlp's connections: never retried).
    """
    checked = connections_checked(policy) if policy is not None else contextlib.nullcontext()
    try:
        with checked, yt_dlp.YoutubeDL(_ydl_options(settings, part_dir, collector)) as ydl:
            info = ydl.extract_info(url, download=True)
            ffmpeg = FFmpegPostProcessor.get_versions(ydl).get("ffmpeg")
    except YoutubeDLError as exc:
        refused = refused_in_this_thread() if policy is not None else None
        if refused is not None:
            raise _CaptureFailed(refused, False) from exc
        raise _CaptureFailed(_error_message(exc), _is_retryable(exc)) from exc
    if not info:
        raise _CaptureFailed(collector.errors[-1] if collector.errors else "yt-dlp returned no information", False)
    return info, ffmpeg or "absent"


def _tool_versions(info: dict[str, Any] | None, ffmpeg: str = "absent") -> dict[str, str]:
    tools = {"yt-dlp": yt_dlp.version.__version__}
    if info is None:
        return tools
    first = next(iter(_videos(info)), info)
    tools["ffmpeg"] = ffmpeg
    tools["extractor"] = str(first.get("extractor_key") or info.get("extractor_key") or "")
    tools["format"] = _format_label(first)
    return tools


def _videos(info: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The video entries of a result: itself, or (for a page with several videos) every nested entry."""
    if info.get("_type") == "playlist" or "entries" in info:
        for entry in info.get("entries") or ():
            if entry:
                yield from _videos(entry)
    else:
        yield info


def _format_label(video: dict[str, Any]) -> str:
    """`format_id (format_note)`, whitespace-collapsed so it is safe in a WARC field."""
    label = str(video.get("format_id") or "")
    if note := video.get("format_note"):
        label = f"{label} ({note})"
    return _one_line(label)


# -- files -------------------------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path  # inside the .part directory
    rel: str  # final path, relative to out_dir
    role: str
    media_type: str


def _collect_files(
    info: dict[str, Any], part_dir: Path, key: str, collector: _Collector
) -> tuple[list[_File], list[tuple[_File, dict[str, Any]]]]:
    """Classify what yt-dlp wrote (using its own record of each file), making every name bag-safe."""
    roles: dict[str, str] = {}
    videos: dict[str, dict[str, Any]] = {}
    for video in _videos(info):
        for download in video.get("requested_downloads") or ():
            if download.get("filepath"):
                name = Path(download["filepath"]).name
                roles[name], videos[name] = "media", video
        for sub in (video.get("requested_subtitles") or {}).values():
            if sub and sub.get("filepath"):
                roles[Path(sub["filepath"]).name] = "subtitle"
        for thumb in video.get("thumbnails") or ():
            if thumb.get("filepath"):
                roles[Path(thumb["filepath"]).name] = "thumbnail"
        for field in ("infojson_filename", "__infojson_filename"):
            if video.get(field):
                roles[Path(video[field]).name] = "info-json"

    files: list[_File] = []
    media: list[tuple[_File, dict[str, Any]]] = []
    renamed: dict[str, str] = {}
    for path in sorted(p for p in part_dir.rglob("*") if p.is_file()):
        role = roles.get(path.name) or _role_from_name(path.name)
        safe = _safe_rename(path)
        if safe.name != path.name:
            renamed[path.name] = safe.name
        rel = (Path("media") / key / safe.relative_to(part_dir)).as_posix()
        item = _File(safe, rel, role, _media_type(safe.name))
        files.append(item)
        if role == "media":
            media.append((item, videos.get(path.name) or next(iter(_videos(info)), info)))
    if not media:
        reason = collector.aborts[-1] if collector.aborts else "yt-dlp finished without producing a media file"
        raise _CaptureFailed(reason, False)
    if renamed:
        for item in files:
            if item.role == "info-json":
                _update_info_json(item.path, renamed, part_dir.with_name(key))
    return files, media


def _role_from_name(name: str) -> str:
    if name.endswith(".info.json"):
        return "info-json"
    major = _media_type(name).split("/")[0]
    if major in ("video", "audio"):
        return "media"
    if major == "image":
        return "thumbnail"
    return "subtitle" if Path(name).suffix.lower() in (".vtt", ".srt", ".ass", ".ssa", ".ttml") else "other"


def _media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def safe_file_name(name: str) -> str:
    """`name` made bag-safe: `%`, `/` and control characters become `_`; leading `.`, `-`, spaces go."""
    cleaned = _UNSAFE_NAME_START.sub("", _UNSAFE_NAME_CHARS.sub("_", name), count=1)
    return cleaned or "media"


def _safe_rename(path: Path) -> Path:
    """Rename a file to its bag-safe name (adding `~N` before the suffix if that name is taken)."""
    name = safe_file_name(path.name)
    if name == path.name:
        return path
    target = path.with_name(name)
    counter = 1
    while target.exists():
        target = path.with_name(f"{Path(name).stem}~{counter}{Path(name).suffix}")
        counter += 1
    path.rename(target)
    return target


def _update_info_json(path: Path, renamed: dict[str, str], final_dir: Path) -> None:
    """Point `filename`/`_filename` at the renamed file, when yt-dlp recorded them at all."""
    data = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for field in ("filename", "_filename"):
        value = data.get(field)
        if isinstance(value, str) and Path(value).name in renamed:
            data[field] = str(final_dir / renamed[Path(value).name])
            changed = True
    if changed:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        temporary.replace(path)


# -- hashing and WARC ------------------------------------------------------------------------------------


class _Digests:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha512 = hashlib.sha512()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.sha512.update(chunk)
        self.size += len(chunk)


def _hash_file(path: Path) -> _Digests:
    """One read of the file for both digests; fsync so the later directory rename publishes durable data."""
    digests = _Digests()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digests.update(chunk)
        os.fsync(fh.fileno())
    return digests


def _hash_and_archive(
    files: list[_File],
    media: list[tuple[_File, dict[str, Any]]],
    *,
    url: str,
    page_url: str | None,
    settings: MediaSettings,
    warc: WarcFile | None,
    warc_name: str | None,
) -> tuple[list[CapturedFile], list[WarcRecord]]:
    """Hash every file, then (with a WARC) tie each media file to its page in a `metadata` record."""
    digests = {item.rel: _hash_file(item.path) for item in files}
    captured = [
        CapturedFile(
            path=item.rel,
            size=digests[item.rel].size,
            sha256=digests[item.rel].sha256.hexdigest(),
            sha512=digests[item.rel].sha512.hexdigest(),
            media_type=item.media_type,
            role=item.role,
        )
        for item in files
    ]
    if warc is None:
        return captured, []
    name = warc_name or warc.path.name
    records: list[WarcRecord] = []
    for item, video in media:
        digest = digests[item.rel]
        sha256, sha512 = digest.sha256.hexdigest(), digest.sha512.hexdigest()
        media_urls = _media_urls(video)
        target = _safe_uri(media_urls[0] if media_urls else str(video.get("webpage_url") or url))
        resource_id: str | None = None
        if settings.media_in_warc:
            with item.path.open("rb") as fh:
                ref = warc.write_resource(
                    target,
                    content_type=item.media_type,
                    body=fh,  # the writer re-checks this sha256 as it streams and rolls back on mismatch
                    body_length=digest.size,
                    sha256=sha256,
                    compresslevel=1,  # media is already compressed; level 1 keeps the gzip framing cheap
                )
            resource_id = ref.record_id
            records.append(
                as_warc_record(
                    name,
                    ref,
                    payload_sha256=sha256,
                    payload_sha512=sha512,
                    payload_size=digest.size,
                    content_type=item.media_type,
                )
            )
        fields: list[tuple[str, str]] = [("page-url", _one_line(page_url or url))]
        fields += [("media-url", _one_line(u)) for u in media_urls]
        fields += [
            ("file", item.rel),
            ("sha256", sha256),
            ("sha512", sha512),
            ("size", str(digest.size)),
            ("extractor", _one_line(str(video.get("extractor_key") or ""))),
            ("format", _format_label(video)),
        ]
        ref = warc.write_metadata(target, fields=fields, refers_to=resource_id)
        records.append(as_warc_record(name, ref, content_type="application/warc-fields"))
    return captured, records


def _media_urls(video: dict[str, Any]) -> list[str]:
    """The URL(s) the media bytes came from: one, or video + audio when yt-dlp merged two formats."""
    if video.get("url"):
        return [str(video["url"])]
    return [str(f["url"]) for f in video.get("requested_formats") or () if f.get("url")]


def _safe_uri(uri: str) -> str:
    """Percent-encode whitespace/controls, which a WARC-Target-URI may not contain."""
    return _URI_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", uri)


# -- errors, file system, time ---------------------------------------------------------------------------


def _error_message(exc: BaseException) -> str:
    return _one_line(str(exc)).removeprefix("ERROR: ") or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps (yt-dlp keeps originals in `exc_info` and `cause`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        todo += [
            current.__cause__,
            current.__context__,
            getattr(current, "cause", None) if isinstance(getattr(current, "cause", None), BaseException) else None,
            exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None,
        ]


def _is_retryable(exc: BaseException) -> bool:
    """Network trouble and server-side errors may pass; a verdict about the video or URL will not."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, (UnsupportedError, GeoRestrictedError, CertificateVerifyError)):
            return False
        if isinstance(cause, HTTPError):
            return cause.status in (408, 425, 429) or cause.status >= 500
    if any(isinstance(c, (TransportError, ContentTooShortError, TimeoutError, ConnectionError)) for c in causes):
        return True
    message = str(exc)
    if _PERMANENT_MESSAGES.search(message):
        return False
    return bool(_TRANSIENT_MESSAGES.search(message))


def _one_line(text: str) -> str:
    return " ".join(_ANSI_ESCAPE.sub("", text).split())


def _publish(part_dir: Path, final_dir: Path) -> None:
    """Make the finished directory durable, then give it its final name in one rename."""
    for path in part_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())  # yt-dlp does not sync what it wrote
    descriptor = os.open(part_dir, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if final_dir.exists():  # os.rename would silently replace an empty directory
        raise FileExistsError(f"{final_dir} appeared during the download; not overwritten")
    os.rename(part_dir, final_dir)
    descriptor = os.open(final_dir.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _now() -> str:
    return datetime.now(UTC).isoformat()
