"""Run configuration: YAML validated by pydantic, errors as one line naming the file and the key."""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from pipeline.errors import DEFAULT_STATE_DIR, DEFAULT_STORE_DIR, ConfigError
from pipeline.extract import DEFAULT_WIKI_BASE, DocumentSettings

__all__ = ["ConfigError", "LoadedConfig", "load_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DocumentSource(_Strict):
    """Where documents come from: one file (`path`), a glob of files (`glob`), relative to the config's project,
    or a document on the web (`url`), fetched at each run and archived as well."""

    path: str | None = None
    glob: str | None = None
    url: HttpUrl | None = None
    base_url: HttpUrl | None = None
    wiki_base: HttpUrl | None = None
    format: Literal["auto", "markdown", "html", "text"] = "auto"
    description: str | None = None

    @model_validator(mode="after")
    def _one_of_path_glob_or_url(self) -> DocumentSource:
        if sum(value is not None for value in (self.path, self.glob, self.url)) != 1:
            raise ValueError("give exactly one of 'path', 'glob' or 'url'")
        return self


class BaseUrlRule(_Strict):
    """Base URL for documents whose path matches a glob (first match wins)."""

    match: str
    base_url: HttpUrl


class Output(_Strict):
    state_dir: str = DEFAULT_STATE_DIR
    runs_dir: str = "runs"
    manifests_dir: str = "archive_manifests"
    bags_dir: str = "bags"
    store_dir: str = DEFAULT_STORE_DIR


class SiteHeaders(_Strict):
    """Request headers for one site (a login cookie, a bearer token). Values name environment variables as
    `${NAME}`, so no secret lives in a config file; they are sent only to hosts that match, never across a
    redirect to another host, and redacted from the WARC `request` records."""

    match: str = Field(min_length=1, description="a host name, or a glob such as *.example.org")
    headers: dict[str, str]

    @field_validator("headers")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    def resolved(self) -> dict[str, str]:
        """The headers with `${NAME}` taken from the environment; raises ValueError naming a missing one."""
        out = {}
        for name, value in self.headers.items():

            def expand(match: re.Match[str], header: str = name) -> str:
                env = os.environ.get(match.group(1))
                if env is None:
                    raise ValueError(f"header {header}: environment variable {match.group(1)} is not set")
                return env

            out[name] = _ENV_REF.sub(expand, value)
        return out


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CaptureSettings(_Strict):
    """Limits and politeness for fetching. Defaults suit archiving public web pages from one machine."""

    workers: int = Field(8, ge=1, le=256)
    per_host_concurrency: int = Field(1, ge=1, le=64)
    per_host_rate: float = Field(4.0, gt=0, description="maximum requests per second to one host")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(4 * 1024**3, gt=0)
    max_redirects: int = Field(10, ge=0, le=50)
    retries: int = Field(3, ge=0, le=20)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    max_retry_after: float = Field(120.0, ge=0)
    allow_private_addresses: bool = False
    allowed_networks: list[str] = Field(default_factory=list, description="non-public networks allowed, CIDR")
    requisites: bool = True
    max_requisites: int = Field(60, ge=0)
    max_requisites_bytes: int = Field(50 * 1024**2, ge=0)
    media: bool = True
    media_in_warc: bool = False
    media_format: str = "bv*+ba/b"
    media_max_bytes: int | None = Field(None, gt=0)
    recapture_after: str = Field("never", pattern=r"^(never|\d+(\.\d+)?[smhd])$")
    # a batch run retries a failed link of an unchanged document once its last attempt is this old
    retry_failed_after: str = Field("12h", pattern=r"^(never|\d+(\.\d+)?[smhd])$")
    user_agent: str = "preserve-pipeline/0.1 (archival capture of cited evidence)"
    warc_compresslevel: int = Field(6, ge=0, le=9)
    # small targets of one document share a WARC file, published after this many targets or seconds
    # (1: a WARC file per target); a crash loses at most the open groups, which the next run fetches again
    warc_group_targets: int = Field(16, ge=1, le=10_000)
    warc_group_seconds: float = Field(10.0, gt=0, le=3600)
    site_headers: list[SiteHeaders] = Field(default_factory=list)

    @field_validator("site_headers")
    @classmethod
    def _environment_set(cls, value: list[SiteHeaders]) -> list[SiteHeaders]:
        for site in value:
            site.resolved()  # a missing variable is a config error now, not a failed capture later
        return value

    def headers_for(self, host: str) -> dict[str, str]:
        """Configured headers for a host name (first matching entry wins)."""
        host = host.lower().rstrip(".")
        for site in self.site_headers:
            if fnmatch.fnmatchcase(host, site.match.lower()):
                return site.resolved()
        return {}

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # raises ValueError, reported with the key
        return value

    def recapture_seconds(self) -> float | None:
        """`recapture_after` in seconds, None for never."""
        return _seconds(self.recapture_after)

    def retry_failed_seconds(self) -> float | None:
        """`retry_failed_after` in seconds, None for never."""
        return _seconds(self.retry_failed_after)


def _seconds(value: str) -> float | None:
    if value == "never":
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(value[:-1]) * units[value[-1]]


class BagConfig(_Strict):
    """Who the bags say they come from (bag-info.txt) and operator fields for provenance manifests."""

    source_organization: str = "Unnamed archive"
    contact_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    operator: dict[str, str] = Field(default_factory=dict)


class StoreConfig(_Strict):
    """One named store. Credentials are never configured here: boto3's standard chain provides them."""

    type: Literal["local", "s3"]
    path: str | None = None  # local: directory (default output.store_dir)
    prefix: str = ""
    bucket: str | None = None
    endpoint_url: HttpUrl | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    # `when_required` for stores that reject botocore 1.36+'s default CRC headers (older MinIO, Ceph RGW,
    # Backblaze B2, Wasabi and others): see README
    checksum_mode: Literal["when_supported", "when_required"] = "when_supported"
    multipart_threshold_mib: int = Field(64, ge=5)
    part_size_mib: int = Field(16, ge=5)
    concurrency: int = Field(4, ge=1, le=64)
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    object_lock_days: int | None = Field(None, ge=1)
    # how long an S3 endpoint that cannot be reached is waited for (backoff) before the bag is left queued
    outage_seconds: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> StoreConfig:
        if self.type == "s3" and not self.bucket:
            raise ValueError("an s3 store needs a bucket")
        if (self.object_lock_mode is None) != (self.object_lock_days is None):
            raise ValueError("object_lock_mode and object_lock_days go together")
        return self


class RunSettings(_Strict):
    """The batch run (`preserve run`)."""

    audit_after_upload: bool = True  # a fast audit of every bag the run stored
    max_document_bytes: int = Field(20 * 1024**2, gt=0)  # documents fetched from `url:` sources


class Config(_Strict):
    documents: list[DocumentSource] = Field(default_factory=list)
    base_urls: list[BaseUrlRule] = Field(default_factory=list)
    base_url: HttpUrl | None = None
    wiki_base: HttpUrl = HttpUrl(DEFAULT_WIKI_BASE)
    output: Output = Field(default_factory=Output)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    bag: BagConfig = Field(default_factory=BagConfig)
    stores: dict[str, StoreConfig] = Field(default_factory=dict)
    default_store: str = "local"
    run: RunSettings = Field(default_factory=RunSettings)

    @field_validator("wiki_base")
    @classmethod
    def _wiki_base_ends_with_slash(cls, value: HttpUrl) -> HttpUrl:
        if not str(value).endswith("/"):
            raise ValueError("must end with '/', e.g. https://en.wikipedia.org/wiki/")
        return value


class LoadedConfig:
    """A validated config with the directory its relative paths are taken from."""

    def __init__(self, config: Config, path: Path | None, root: Path, digest: str) -> None:
        self.config = config
        self.path = path
        self.root = root
        self.digest = digest

    def document_paths(self) -> list[tuple[Path, DocumentSource]]:
        """Every document file the config names, in config order, without duplicates (`url:` sources aside)."""
        found: dict[Path, DocumentSource] = {}
        for source in self.config.documents:
            if source.url is not None:
                continue
            if source.path is not None:
                found.setdefault(self.root / source.path, source)
            else:
                pattern = str(self.root / str(source.glob))
                for name in sorted(glob.glob(pattern, recursive=True)):
                    path = Path(name)
                    if path.is_file() and path.name.lower() != "readme.md":
                        found.setdefault(path, source)
        return list(found.items())

    def settings_for(self, path: Path, base_url: str | None = None) -> DocumentSettings:
        """Settings for one document: command line, then its config entry, then glob rules, then defaults."""
        cfg = self.config
        entry = None
        resolved = path.resolve()
        for candidate, source in self.document_paths():
            if candidate.resolve() == resolved:
                entry = source
                break
        chosen: str | None = None
        if entry is not None and entry.base_url is not None:
            chosen = str(entry.base_url)
        if chosen is None:
            rel = _relative(resolved, self.root)
            for rule in cfg.base_urls:
                if fnmatch.fnmatch(rel, rule.match) or fnmatch.fnmatch(path.name, rule.match):
                    chosen = str(rule.base_url)
                    break
        if chosen is None and cfg.base_url is not None:
            chosen = str(cfg.base_url)
        wiki = str(entry.wiki_base) if entry is not None and entry.wiki_base is not None else str(cfg.wiki_base)
        return DocumentSettings(
            base_url=base_url or chosen,
            wiki_base=wiki,
            format=entry.format if entry is not None else "auto",
            base_url_is_override=base_url is not None,
        )

    def output_path(self, name: str) -> Path:
        return self.root / name


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def load_config(path: Path | None) -> LoadedConfig:
    """Load and validate a config file; None gives the built-in defaults (rooted at the working directory)."""
    if path is None:
        return LoadedConfig(Config(), None, Path.cwd(), hashlib.sha256(b"").hexdigest())
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    root = path.resolve().parent
    if root.name == "configs":  # configs/ lives in the project: paths are relative to the project
        root = root.parent
    return LoadedConfig(config, path, root, hashlib.sha256(raw).hexdigest())


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{key or '(top level)'}: {message}{more}"
