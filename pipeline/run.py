"""A batch run from a config: extract → resolve → capture → package → store → fast audit, per document.

Unchanged documents (same bytes, same settings) whose links are all held, or failed too recently to try
again, do no network work. A run holds a lock on its state directory, so overlapping runs are refused.
Everything a run does is recorded as it goes (ledger, bags, uploads), so a killed run resumes; the report
(`runs/<run id>/report.html` and `.json`) says per link what happened and where its bytes are.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import DocumentSource, LoadedConfig
from pipeline.extract import DocumentError, ExtractResult, extract_file
from pipeline.ledger import Ledger
from pipeline.records import Capture, Link, Rejected, Target, target_key
from pipeline.resolve import resolve
from pipeline.runlog import RunLog
from pipeline.runstate import RunState, make_private_dir, run_lock


@dataclass
class LinkListing:
    """What `preserve links` and the batch run report: targets, rejected links and problems."""

    targets: list[Target] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    results: list[ExtractResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def list_links(paths: Sequence[Path], loaded: LoadedConfig, base_url: str | None = None) -> LinkListing:
    """Extract and resolve the links of every document; a bad document is an error, the rest go on."""
    listing = LinkListing()
    links = []
    for path in paths:
        try:
            result = extract_file(path, loaded.settings_for(path, base_url), source=display_path(path))
        except DocumentError as exc:
            listing.errors.append(str(exc))
            continue
        listing.results.append(result)
        listing.errors.extend(result.errors)
        listing.warnings.extend(result.warnings)
        links.extend(result.links)
    resolution = resolve(links)
    listing.targets = resolution.targets
    listing.rejected = resolution.rejected
    listing.warnings.extend(_resolution_warnings(resolution.targets, resolution.rejected))
    return listing


def _resolution_warnings(targets: Sequence[Target], rejected: Sequence[Rejected]) -> list[str]:
    warnings = []
    unresolved: dict[str, list[Link]] = {}
    for target in targets:
        if not target.fetchable:
            for link in target.links:
                unresolved.setdefault(link.source, []).append(link)
    for source, found in unresolved.items():
        first = found[0]
        warnings.append(
            f"{source}: {len(found)} relative link{'s' if len(found) > 1 else ''} but no base URL "
            f"(first at {first.location}: {first.href!r}); kept as unresolved-relative: set base_url for it"
        )
    for item in rejected:
        link = item.link
        warnings.append(f"{link.source}:{link.location}: {link.href[:200]!r} is not a target: {item.reason}")
    return warnings


def display_path(path: Path) -> str:
    """A document's name as people refer to it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def new_run_id(now: datetime | None = None) -> str:
    """UTC time to the millisecond, then a random suffix: run ids sort in the order runs started (two runs
    in one second included), which is how the previous run's report is found."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z-" + secrets.token_hex(3)


# -- the batch run ---------------------------------------------------------------------------------------


class RunError(Exception):
    """The run cannot proceed at all (exit status 2); the message is one line."""


@dataclass
class RunOptions:
    only: Sequence[str] = ()
    dry_run: bool = False
    store: str | None = None  # a store name, s3:// URI or directory; None: the config's default store
    audit: bool | None = None  # None: the config's run.audit_after_upload


@dataclass
class DocumentRun:
    """One document in one run."""

    source: str  # how Links name it: a path relative to the working directory, or the URL
    id: str  # the bag's External-Identifier
    path: Path | None = None  # the file read (for a `url:` document, the copy fetched this run)
    url: str | None = None
    description: str | None = None
    sha256: str | None = None
    settings: str = ""
    status: str = "new"  # new | changed | unchanged | error
    error: str | None = None  # the document could not be read or parsed at all
    problems: list[str] = field(default_factory=list)  # parts of it that could not be read
    links: list[Link] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    active: bool = False  # does network work this run
    bag: str | None = None
    manifest: str | None = None


@dataclass
class RunResult:
    run_id: str
    run_dir: Path | None
    documents: list[DocumentRun]
    report: dict[str, Any]
    exit_status: int
    problems: list[str] = field(default_factory=list)


def batch_run(loaded: LoadedConfig, options: RunOptions, log: RunLog) -> RunResult:
    """The whole run; raises RunError (or RunLocked) when it cannot start."""
    state_dir = loaded.output_path(loaded.config.output.state_dir)
    started = datetime.now(UTC)
    run_id = new_run_id(started)
    log.run_id = run_id
    with run_lock(state_dir):
        return _locked_run(loaded, options, log, run_id, started, state_dir)


def _locked_run(
    loaded: LoadedConfig, options: RunOptions, log: RunLog, run_id: str, started: datetime, state_dir: Path
) -> RunResult:
    from pipeline.capture.batch import Capturer
    from pipeline.runreport import build_report, short_reason, write_report

    cfg = loaded.config
    problems: list[str] = []
    documents = _documents(loaded, options.only)
    if not documents:
        raise RunError(f"{loaded.path or 'the built-in config'}: the config names no documents")
    ledger = Ledger(state_dir / "ledger.sqlite")
    state = RunState(state_dir / "runs.sqlite")
    # a killed run's half-written reports and documents (the lock says no other run is writing them)
    for leftover in (loaded.output_path(cfg.output.runs_dir), state_dir / "documents"):
        for part in leftover.glob("*/*.part"):
            part.unlink(missing_ok=True)
    try:
        capture_dir = state_dir / "captures"
        capturer = None if options.dry_run else Capturer(capture_dir, cfg.capture, ledger)
        for doc in documents:
            if doc.url is not None:
                if options.dry_run:
                    doc.status, doc.error = "error", "a document on the web: fetched only by a real run"
                    continue
                assert capturer is not None
                _fetch_document(doc, capturer, state_dir / "documents", cfg.run.max_document_bytes, log)
        _extract(documents, loaded, log)
        _plan(documents, ledger, state, cfg.capture.retry_failed_seconds(), cfg.capture.recapture_seconds())
        todo = _unique([t for d in documents if d.active for t in d.targets if t.fetchable])
        for doc in documents:
            for problem in doc.problems:
                problems.append(problem)
                log.error("document", problem, document=doc.source)
            if doc.error:
                problems.append(f"{doc.source}: {doc.error}")
                log.error("document", f"{doc.source}: {doc.error}", document=doc.source)
            else:
                log.info(
                    "document",
                    f"{doc.source}: {doc.status}, {len(doc.links)} links, {len(doc.targets)} targets"
                    + ("" if doc.active else ": nothing to fetch"),
                    document=doc.source,
                    status=doc.status,
                    links=len(doc.links),
                    targets=len(doc.targets),
                    active=doc.active,
                )
        if options.dry_run:
            log.info("dry-run", f"dry run: {len(todo)} targets would be captured; nothing fetched or written")
            report = build_report(run_id, started, documents, [], ledger, state, store_uri=None, previous=None)
            return RunResult(run_id, None, documents, report, 1 if problems else 0, problems)

        # a store that does not answer now is asked again before uploading (waiting out an outage then):
        # capture does not wait for it, evidence first
        store, store_error = _open_store(options.store, loaded, wait=False)
        if store_error and store is None:
            problems.append(store_error)
            log.error("store", store_error + "; capturing anyway, bags stay queued locally")
        elif store_error:
            log.warning("store", store_error + "; capturing anyway, the store is tried again before uploading")
        assert capturer is not None
        captures: list[Capture] = []
        with log.stage("capture", len(todo)) as advance:

            def progress(target: Target, done: list[Capture]) -> None:
                failed = int(any(c.outcome == "failed" for c in done))
                advance(1, failed=failed, bytes=sum(f.size for c in done if c.outcome == "ok" for f in c.files))
                if not log.interactive:
                    for c in done:
                        log.info(
                            "capture",
                            f"{c.outcome}: {c.fetcher} {c.url}"
                            + (f": {short_reason(c.error, c.url)}" if c.error else ""),
                            url=c.url,
                            fetcher=c.fetcher,
                            outcome=c.outcome,
                            http_status=c.http_status,
                        )

            if todo:
                captures = capturer.run(todo, progress=progress)
        _package(documents, captures, loaded, ledger, state, run_id, capture_dir, log, problems)
        stored_now: list[str] = []
        if store is not None and store_error:
            store, store_error = _open_store(options.store, loaded, wait=True)
            if store_error:
                problems.append(store_error)
                log.error("store", store_error + "; bags stay queued locally for the next run")
        if store is not None and not store_error:
            stored_now = _upload_pending(store, loaded, state, run_id, log, problems)
            audit = cfg.run.audit_after_upload if options.audit is None else options.audit
            if audit and stored_now:
                _audit_stored(store, stored_now, loaded, log, problems)
        run_dir = loaded.output_path(cfg.output.runs_dir) / run_id
        previous = _previous_report(run_dir.parent, run_id)
        report = build_report(
            run_id,
            started,
            documents,
            captures,
            ledger,
            state,
            store_uri=store.uri if store is not None else None,
            previous=previous,
            problems=problems,
            config=str(loaded.path) if loaded.path else None,
        )
        failed_links = report["totals"]["failed"]
        status = 2 if store_error else (1 if problems or failed_links else 0)
        report["exit_status"] = status
        _write_run_record(run_dir, run_id, started, loaded, documents, captures, capture_dir, ledger)
        json_path, html_path = write_report(run_dir, report)
        log.info("report", f"report: {html_path} (and {json_path.name})", report=str(html_path))
        return RunResult(run_id, run_dir, documents, report, status, problems)
    finally:
        state.close()
        ledger.close()


def _documents(loaded: LoadedConfig, only: Sequence[str]) -> list[DocumentRun]:
    documents: list[DocumentRun] = []
    for path, source in loaded.document_paths():
        documents.append(
            DocumentRun(source=display_path(path), id=path.stem, path=path, description=source.description)
        )
    for source in loaded.config.documents:
        if source.url is not None:
            url = str(source.url)
            documents.append(DocumentRun(source=url, id=url, url=url, description=source.description))
    if only:
        wanted = {str(Path(o).resolve()) for o in only} | set(only)
        chosen = [d for d in documents if d.source in wanted or (d.path and str(d.path.resolve()) in wanted)]
        missing = [
            o
            for o in only
            if not any(o == d.source or (d.path and Path(o).resolve() == d.path.resolve()) for d in chosen)
        ]
        if missing:
            raise RunError(f"not a document of {loaded.path or 'the config'}: {', '.join(missing)}")
        return chosen
    return documents


def _source_of(loaded: LoadedConfig, doc: DocumentRun) -> DocumentSource | None:
    for source in loaded.config.documents:
        if source.url is not None and str(source.url) == doc.url:
            return source
    return None


def _fetch_document(doc: DocumentRun, capturer: Any, into: Path, limit: int, log: RunLog) -> None:
    """A document named by URL is fetched (through the guarded session, politely) and kept in the state
    directory; its own URL also becomes one of its targets, so the page is archived as well."""
    assert doc.url is not None
    from pipeline.capture.http import FetchError

    http = capturer.http
    try:
        body, final_url, content_type = _get_document(http, doc.url, limit)
    except FetchError as exc:
        doc.status, doc.error = "error", f"cannot fetch the document: {exc}"
        return
    name = Path(urlsplit(final_url).path).name or "index.html"
    if "html" in content_type and not name.endswith((".html", ".htm")):
        name += ".html"
    from pipeline.package import sanitize_name

    folder = into / target_key(doc.url)
    make_private_dir(into)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / sanitize_name(name)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(body)
    tmp.replace(path)
    doc.path = path
    doc.description = doc.description or f"Evidence cited by {doc.url}"
    log.info("document-fetched", f"{doc.url}: fetched {len(body)} bytes", document=doc.url, final_url=final_url)


def _get_document(http: Any, url: str, limit: int) -> tuple[bytes, str, str]:
    from pipeline.capture.http import FetchError, _Result

    current = url
    for _ in range(http.settings.max_redirects + 1):
        exchange = http.exchange_with_retries(current, _Result(), max_bytes=limit)
        try:
            if exchange.status in (301, 302, 303, 307, 308) and exchange.header("Location"):
                from urllib.parse import urljoin

                current = urljoin(current, exchange.header("Location") or "")
                continue
            if exchange.status != 200:
                raise FetchError(f"{current}: HTTP {exchange.status}", retryable=False)
            exchange.body.seek(0)
            raw = exchange.body.read()
            encoding = (exchange.header("Content-Encoding") or "").strip().lower()
            return _decode(raw, encoding, limit, current), current, exchange.content_type.lower()
        finally:
            exchange.discard()
    raise FetchError(f"{url}: more than {http.settings.max_redirects} redirects", retryable=False)


def _decode(raw: bytes, encoding: str, limit: int, url: str) -> bytes:
    """Undo a gzip or deflate content coding, never inflating past the document size limit."""
    from pipeline.capture.http import INFLATABLE, FetchError, inflate

    if encoding in ("", "identity"):
        return raw
    if encoding not in INFLATABLE:
        raise FetchError(f"{url}: content coding {encoding!r} is not supported for documents", retryable=False)
    out, damage = inflate(io.BytesIO(raw), encoding, limit + 1)
    if damage is not None:
        raise FetchError(f"{url}: damaged {encoding} body: {damage}", retryable=False)
    if len(out) > limit:
        raise FetchError(f"{url}: the document inflates past the limit of {limit} bytes", retryable=False)
    return out


def _extract(documents: list[DocumentRun], loaded: LoadedConfig, log: RunLog) -> None:
    links: list[Link] = []
    for doc in documents:
        if doc.error or doc.path is None:
            continue
        try:
            content = doc.path.read_bytes()
        except OSError as exc:
            doc.status, doc.error = "error", f"cannot read the document: {exc.strerror or exc}"
            continue
        doc.sha256 = hashlib.sha256(content).hexdigest()
        settings = loaded.settings_for(doc.path)
        if doc.url is not None:
            source = _source_of(loaded, doc)
            base = str(source.base_url) if source is not None and source.base_url else doc.url
            fmt = source.format if source is not None else "auto"
            settings = replace(settings, base_url=settings.base_url or base, format=fmt)
        doc.settings = hashlib.sha256(
            json.dumps([settings.base_url, settings.wiki_base, settings.format]).encode()
        ).hexdigest()
        try:
            result = extract_file(doc.path, settings, source=doc.source)
        except DocumentError as exc:
            doc.status, doc.error = "error", str(exc).removeprefix(f"{doc.path}: ")
            continue
        for warning in result.warnings:
            log.warning("extract", warning, document=doc.source)
        doc.problems.extend(result.errors)  # reported; the links that were found are still archived
        doc.links = list(result.links)
        if doc.url is not None:  # the page itself is evidence too
            doc.links.append(Link(source=doc.source, href=doc.url, url=doc.url, syntax="document-url"))
        links.extend(doc.links)
    resolution = resolve(links)
    for warning in _resolution_warnings(resolution.targets, resolution.rejected):
        log.warning("resolve", warning)
    by_source: dict[str, DocumentRun] = {d.source: d for d in documents}
    for target in resolution.targets:
        for source in target.sources:
            if source in by_source:
                by_source[source].targets.append(target)
    for item in resolution.rejected:
        if item.link.source in by_source:
            by_source[item.link.source].rejected.append(item)


def _plan(
    documents: list[DocumentRun],
    ledger: Ledger,
    state: RunState,
    retry_after: float | None,
    recapture_after: float | None,
) -> None:
    """Which documents do network work: new or changed ones, and unchanged ones with a target that is not
    held (a new link, a failure old enough to try again, or a capture older than the recapture policy)."""
    now = datetime.now(UTC)
    for doc in documents:
        if doc.sha256 is None:
            continue
        previous = state.document(doc.source)
        if previous is None:
            doc.status = "new"
        elif previous.sha256 != doc.sha256 or previous.settings != doc.settings:
            doc.status = "changed"
        else:
            doc.status = "unchanged"
        if doc.status != "unchanged":
            doc.active = True
            continue
        doc.active = any(
            _needs_work(ledger.attempts(t.canonical), now, retry_after, recapture_after)
            for t in doc.targets
            if t.fetchable
        )


def _needs_work(
    attempts: list[Capture], now: datetime, retry_after: float | None, recapture_after: float | None
) -> bool:
    if not attempts:
        return True
    latest: dict[str, Capture] = {}
    for attempt in attempts:
        latest[attempt.fetcher] = attempt
    for attempt in latest.values():
        age = now - datetime.fromisoformat(attempt.ended)
        if attempt.outcome == "failed" and retry_after is not None and age >= timedelta(seconds=retry_after):
            return True
        if attempt.outcome == "ok" and recapture_after is not None and age >= timedelta(seconds=recapture_after):
            return True
    return False


def _unique(targets: list[Target]) -> list[Target]:
    return list({t.canonical: t for t in targets}.values())


def _open_store(spec: str | None, loaded: LoadedConfig, wait: bool = True) -> tuple[Any, str | None]:
    """The store and, when it cannot be used, why. A store that exists but does not answer is returned
    with its error, so it can be asked again; `wait` lets an S3 store wait out an outage first."""
    from pipeline.store import StoreError, open_store

    try:
        store = open_store(spec, loaded)
    except StoreError as exc:
        return None, f"store unusable: {exc}"
    check = getattr(store, "check", None)
    if check is not None:
        try:
            check(wait=wait)
        except StoreError as exc:
            return store, f"store unreachable: {exc}"
    return store, None


def _package(
    documents: list[DocumentRun],
    captures: list[Capture],
    loaded: LoadedConfig,
    ledger: Ledger,
    state: RunState,
    run_id: str,
    capture_dir: Path,
    log: RunLog,
    problems: list[str],
) -> None:
    """Bag each active document; a document counts as processed (unchanged next time) once its bag (or its
    no-bag manifest) is written, so a run killed later does not bag it again."""
    from pipeline.package import BagSettings, Document, PackageError, package_document, sweep_building

    cfg = loaded.config
    settings = BagSettings(source_organization=cfg.bag.source_organization, contact_email=cfg.bag.contact_email)
    operator = {**cfg.bag.operator, "user": getpass.getuser()}
    active = [d for d in documents if d.active and not d.error]
    for name in sweep_building(loaded.output_path(cfg.output.bags_dir)):
        log.warning("package", f"removed {name}: a bag left half-built by an interrupted run")
    with log.stage("package", len(active)) as advance:
        for doc in active:
            document = Document(source=doc.source, id=doc.id, path=doc.path, description=doc.description)
            try:
                result = package_document(
                    document,
                    doc.targets,
                    captures,
                    capture_dir=capture_dir,
                    bags_dir=loaded.output_path(cfg.output.bags_dir),
                    manifests_dir=loaded.output_path(cfg.output.manifests_dir),
                    ledger=ledger,
                    run_id=run_id,
                    config_digest=loaded.digest,
                    settings=settings,
                    operator=operator,
                    rejected=doc.rejected,
                    document_changed=doc.status in ("new", "changed"),
                )
            except PackageError as exc:
                doc.error = f"not packaged: {exc}"
                problems.append(f"{doc.source}: {doc.error}")
                log.error("package", f"{doc.source}: {doc.error}", document=doc.source)
                advance(1, failed=1)
                continue
            doc.manifest = str(result.manifest_path)
            if doc.sha256 is not None:
                state.mark_processed(doc.source, doc.sha256, doc.settings, run_id)
            if result.bag is not None:
                doc.bag = result.bag.path.name
                log.info("bag", f"bag {result.bag.path} ({result.bag.payload_oxum})", bag=doc.bag, document=doc.source)
            advance(1, bags=1 if result.bag else 0)


def _upload_pending(
    store: Any, loaded: LoadedConfig, state: RunState, run_id: str, log: RunLog, problems: list[str]
) -> list[str]:
    """Every finished bag not yet in this store is uploaded: this run's and any an earlier run left queued."""
    from pipeline.manifest import record_copies
    from pipeline.manifest import write as write_manifest
    from pipeline.store import StoreError
    from pipeline.store.base import BagUploadError

    cfg = loaded.config
    bags_dir = loaded.output_path(cfg.output.bags_dir)
    done = state.uploaded(store.uri)
    pending = (
        sorted(p for p in bags_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in done)
        if bags_dir.is_dir()
        else []
    )
    stored: list[str] = []
    with log.stage(f"upload to {store.uri}", len(pending)) as advance:
        for bag in pending:
            try:
                result = store.upload_bag(bag)
            except (BagUploadError, StoreError) as exc:
                problems.append(f"{bag.name}: not stored (queued for the next run): {exc}")
                log.error("upload", f"{bag.name}: not stored (queued for the next run): {exc}", bag=bag.name)
                advance(1, failed=1)
                continue
            manifest = loaded.output_path(cfg.output.manifests_dir) / f"{bag.name}.json"
            if not manifest.is_file():  # killed between publishing the bag and writing its manifest's copy
                write_manifest(json.loads((bag / "data" / "provenance.json").read_text(encoding="utf-8")), manifest)
            record_copies(manifest, result)
            state.mark_uploaded(bag.name, store.uri, run_id)
            stored.append(bag.name)
            log.info("stored", f"stored {bag.name} -> {store.uri}{bag.name}/", bag=bag.name, store=store.uri)
            advance(1, bytes=result.bytes_sent)
    return stored


def _audit_stored(store: Any, bags: list[str], loaded: LoadedConfig, log: RunLog, problems: list[str]) -> None:
    """A fast audit of what this run stored: presence, sizes and the store's own checksums."""
    from pipeline.audit import append_events, audit_bag, audit_s3_bag, fixity_event
    from pipeline.store.local import LocalStore

    local_log = loaded.output_path(loaded.config.output.state_dir) / "audit" / "fixity.jsonl"
    events = []
    with log.stage("fast audit", len(bags)) as advance:
        for bag in bags:
            if isinstance(store, LocalStore):
                audited = audit_bag(store.base / bag, full=False)
                append_events(store.base / "audit" / "fixity.jsonl", [fixity_event(audited, False)])
            else:
                audited = audit_s3_bag(store, bag, full=False)
                put_s3_audit_event(store, bag, fixity_event(audited, False))
            events.append(fixity_event(audited, False))
            for failure in audited.failures:
                message = f"{bag}: audit after upload: {failure.file}: {failure.kind} {failure.detail}".rstrip()
                problems.append(message)
                log.error("audit", message, bag=bag)
            advance(1, failed=0 if audited.ok else 1)
    append_events(local_log, events)


def store_capture_run(run_dir: Path, loaded: LoadedConfig, store_spec: str, log: RunLog) -> tuple[int, list[str]]:
    """A one-off capture goes the whole way: its run (the command line as the "document") becomes a bag,
    which is stored and given a fast audit. Returns the exit status and the problems."""
    from pipeline.manifest import record_copies
    from pipeline.package import PackageError
    from pipeline.runrecord import read_run
    from pipeline.store import StoreError
    from pipeline.store.base import BagUploadError

    cfg = loaded.config
    record, targets, captures, rejected = read_run(run_dir)
    store, store_error = _open_store(store_spec, loaded)
    if store_error:
        return 2, [store_error]
    doc = record.documents[0]
    with Ledger(Path(record.ledger)) as ledger:
        try:
            result = package_recorded(
                loaded,
                record,
                doc,
                (targets, captures, rejected),
                ledger,
                bags_dir=loaded.output_path(cfg.output.bags_dir),
                document_changed=True,
                description=f"One-off capture by {record.operator.get('user', 'unknown')}",
            )
        except PackageError as exc:
            return 1, [f"{doc['source']}: not packaged: {exc}"]
    assert result.bag is not None  # document_changed: there is always a bag
    bag = result.bag.path
    log.info("bag", f"bag {bag} ({result.bag.payload_oxum})", bag=bag.name)
    try:
        stored = store.upload_bag(bag)
    except (BagUploadError, StoreError) as exc:
        return 1, [f"{bag.name}: not stored: {exc}"]
    record_copies(result.manifest_path, stored)
    log.info("stored", f"stored {bag.name} -> {store.uri}{bag.name}/", bag=bag.name, store=store.uri)
    problems: list[str] = []
    _audit_stored(store, [bag.name], loaded, log, problems)
    if not problems:
        log.info("audit", f"{bag.name}: fast audit of the stored copy passed", bag=bag.name)
    return (1 if problems else 0), problems


def package_recorded(
    loaded: LoadedConfig,
    record: Any,
    entry: dict[str, Any],
    recorded: tuple[list[Target], list[Capture], list[Rejected]],
    ledger: Ledger,
    *,
    bags_dir: Path,
    document_changed: bool = False,
    description: str | None = None,
) -> Any:
    """Bag one document of a run record (`runs/<id>/run.json`): `preserve package --run` and one-off
    captures with `--store` both come this way."""
    from pipeline.package import BagSettings, Document, package_document

    cfg = loaded.config
    content = entry.get("content")
    document = Document(
        source=entry["source"],
        id=entry["id"],
        path=Path(entry["path"]) if entry.get("path") else None,
        content=content.encode("utf-8") if isinstance(content, str) else None,
        file_name=entry.get("file_name"),
        description=description,
    )
    targets, captures, rejected = recorded
    return package_document(
        document,
        targets,
        captures,
        capture_dir=Path(record.capture_dir),
        bags_dir=bags_dir,
        manifests_dir=loaded.output_path(cfg.output.manifests_dir),
        ledger=ledger,
        run_id=record.run_id,
        config_digest=record.config_digest,
        settings=BagSettings(source_organization=cfg.bag.source_organization, contact_email=cfg.bag.contact_email),
        operator=record.operator,
        rejected=rejected,
        document_changed=document_changed,
    )


def put_s3_audit_event(store: Any, bag: str, event: dict[str, Any]) -> None:
    """A fixity event in the bucket is an object of its own under `<prefix>/audit/<bag>/` (objects cannot
    be appended to)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    store.client.put_object(
        Bucket=store.bucket,
        Key=store.key(f"audit/{bag}/{stamp}.json"),
        Body=json.dumps(event, ensure_ascii=False).encode("utf-8"),
        ContentType="application/json",
    )


def _previous_report(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    if not runs_dir.is_dir():
        return None
    earlier = sorted(p.name for p in runs_dir.iterdir() if p.name < run_id and (p / "report.json").is_file())
    if not earlier:
        return None
    try:
        loaded: dict[str, Any] = json.loads((runs_dir / earlier[-1] / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return loaded


def _write_run_record(
    run_dir: Path,
    run_id: str,
    started: datetime,
    loaded: LoadedConfig,
    documents: list[DocumentRun],
    captures: list[Capture],
    capture_dir: Path,
    ledger: Ledger,
) -> None:
    from pipeline.runrecord import RunRecord, write_run

    record = RunRecord(
        run_id=run_id,
        created=started.isoformat(),
        capture_dir=str(capture_dir.resolve()),
        ledger=str(ledger.path.resolve()),
        config_digest=loaded.digest,
        operator={**loaded.config.bag.operator, "user": getpass.getuser()},
        documents=[
            {"source": d.source, "id": d.id, "path": str(d.path) if d.path else None}
            for d in documents
            if d.active and not d.error
        ],
    )
    targets = _unique([t for d in documents for t in d.targets])
    rejected = [r for d in documents for r in d.rejected]
    write_run(run_dir, record, targets, captures, rejected)


__all__ = ["RunError", "RunOptions", "RunResult", "batch_run"]
