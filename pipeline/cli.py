"""The `preserve` command: one subcommand per stage, plus `run` for a batch over a config."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pipeline import __version__
from pipeline.errors import DEFAULT_STATE_DIR, DEFAULT_STORE_DIR, ConfigError

if TYPE_CHECKING:  # the rest is imported where it is used: `preserve audit BAG` needs none of it
    from rich.console import Console

    from pipeline.config import LoadedConfig
    from pipeline.records import Capture, Target
    from pipeline.resolve import Resolution
    from pipeline.run import LinkListing

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preserve", description="Preserve the evidence that documents cite.")
    parser.add_argument("--version", action="version", version=f"preserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    links = sub.add_parser("links", help="list every link of documents, unwrapped, classified and deduplicated")
    links.add_argument("documents", nargs="*", type=Path, metavar="DOC", help="documents (default: the config's)")
    links.add_argument("--config", type=Path, help="run config (YAML)")
    links.add_argument("--base-url", help="base URL for relative links (overrides config and front matter)")
    links.add_argument("--format", choices=("table", "jsonl"), default="table")

    capture = sub.add_parser("capture", help="capture URLs into WARC (and media files) now")
    capture.add_argument("urls", nargs="+", metavar="URL", help="URLs (Google redirect links are unwrapped)")
    capture.add_argument("--config", type=Path, help="run config (YAML): capture limits and politeness")
    capture.add_argument("--out", type=Path, default=Path("captures"), help="output directory (default: captures)")
    capture.add_argument(
        "--allow-private", action="store_true", help="allow private, loopback and link-local addresses"
    )
    capture.add_argument("--format", choices=("table", "jsonl"), default="table")
    capture.add_argument(
        "--store", help="also bag what was captured and store it (store name, s3://bucket/prefix or directory)"
    )

    package = sub.add_parser("package", help="build BagIt bags from a capture run")
    package.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a run directory (run.json)")
    package.add_argument("--config", type=Path, help="run config (YAML): bag-info fields, output locations")
    package.add_argument("--out", type=Path, help="where bags go (default: output.bags_dir of the config)")

    upload = sub.add_parser("upload", help="store bags (local directory or S3), verified end to end")
    upload.add_argument("bags", nargs="+", type=Path, metavar="BAG", help="bag directories")
    upload.add_argument("--store", help="store name from the config, s3://bucket/prefix, or a directory")
    upload.add_argument("--config", type=Path, help="run config (YAML): stores, manifests directory")
    upload.add_argument("--verify", action="store_true", help="read every object back and hash it")

    audit = sub.add_parser("audit", help="fixity check of stored bags (local bags and directories of bags)")
    audit.add_argument("targets", nargs="*", metavar="TARGET", help="a bag, a directory of bags, or a store name")
    mode = audit.add_mutually_exclusive_group()
    mode.add_argument("--full", dest="full", action="store_true", default=True, help="recompute every digest")
    mode.add_argument("--fast", dest="full", action="store_false", help="presence, completeness and Oxum only")
    audit.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="files hashed at once")
    audit.add_argument("--report", type=Path, help="write the results as JSON")
    audit.add_argument("--history", metavar="BAG", help="print a bag's fixity history instead")
    audit.add_argument("--config", type=Path, help="run config (YAML): stores and state directory")

    run = sub.add_parser("run", help="a batch run: extract, resolve, capture, package, store and audit")
    run.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    run.add_argument("--only", action="append", default=[], metavar="DOC", help="only this document (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="say what would be done; fetch and write nothing")
    run.add_argument("--store", help="store name from the config, s3://bucket/prefix, or a directory")
    run.add_argument("--no-audit", dest="audit", action="store_false", default=None, help="no audit after upload")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one JSON object a line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    # whatever umask we inherit, nothing we write is group- or world-writable (files 0644, dirs 0755 at most)
    os.umask(os.umask(0o022) | 0o022)
    try:
        if args.command == "links":
            return _links(args)
        if args.command == "run":
            return _run(args)
        if args.command == "capture":
            return _capture(args)
        if args.command == "package":
            return _package(args)
        if args.command == "upload":
            return _upload(args)
        if args.command == "audit":
            return _audit(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as exc:  # a full disk or a broken state directory: say what, not a traceback
        where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"error: {where}{reason}; stopped (what was committed is kept: run again to resume)", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return EXIT_USAGE  # pragma: no cover


def _documents(args: argparse.Namespace, loaded: LoadedConfig) -> list[Path] | None:
    if args.documents:
        return list(args.documents)
    paths = [path for path, _ in loaded.document_paths()]
    if not paths:
        print("error: no documents given and the config names none", file=sys.stderr)
        return None
    return paths


def _links(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.records import to_json
    from pipeline.run import list_links

    loaded = load_config(args.config)
    paths = _documents(args, loaded)
    if paths is None:
        return EXIT_USAGE
    listing = list_links(paths, loaded, args.base_url)
    if args.format == "jsonl":
        out = sys.stdout
        for target in listing.targets:
            out.write(json.dumps(to_json(target), ensure_ascii=False) + "\n")
    else:
        _print_table(listing.targets, Console())
    return _report_problems(listing)


def _report_problems(listing: LinkListing, stream: TextIO | None = None) -> int:
    stream = stream or sys.stderr
    for warning in listing.warnings:
        print(f"warning: {warning}", file=stream)
    for error in listing.errors:
        print(f"error: {error}", file=stream)
    return EXIT_FAILED if listing.errors else EXIT_OK


def _print_table(targets: Sequence[Target], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"{len(targets)} targets", show_lines=False, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("url (to fetch)", overflow="fold", ratio=3)
    table.add_column("found at", overflow="fold", ratio=2)
    table.add_column("via / flags", overflow="fold", ratio=1)
    for number, target in enumerate(targets, 1):
        found = "\n".join(f"{link.source}:{link.location}" for link in target.links[:5])
        if len(target.links) > 5:
            found += f"\n(+{len(target.links) - 5} more)"
        notes = [hop.rule for hop in target.hops] + list(target.flags)
        if "lat" in target.details:
            notes.append(f"{target.details['lat']},{target.details['lon']}")
        table.add_row(str(number), target.kind, target.url, found, " ".join(notes))
    console.print(table)


def _run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.run import RunError, RunOptions, batch_run
    from pipeline.runlog import RunLog
    from pipeline.runstate import RunLocked

    loaded = load_config(args.config)
    log = RunLog(args.log_format)
    options = RunOptions(only=args.only, dry_run=args.dry_run, store=args.store, audit=args.audit)
    try:
        result = batch_run(loaded, options, log)
    except (RunError, RunLocked) as exc:
        log.error("run", str(exc))
        return EXIT_USAGE
    totals = result.report["totals"]
    summary = ", ".join(f"{totals[k]} {k}" for k in ("ok", "held", "failed", "unresolved", "rejected") if totals[k])
    log.info(
        "run-end",
        f"run {result.run_id}: {totals['documents']} documents, {totals['links']} links ({summary or 'none'}); "
        f"exit status {result.exit_status}",
        exit_status=result.exit_status,
        totals=totals,
    )
    return result.exit_status


def _capture(args: argparse.Namespace) -> int:
    from pipeline.capture.batch import Capturer
    from pipeline.config import load_config
    from pipeline.ledger import Ledger
    from pipeline.records import Link, to_json
    from pipeline.resolve import resolve

    loaded = load_config(args.config)
    links = [Link(source="command line", href=url, url=url, syntax="argument") for url in args.urls]
    resolution = resolve(links)
    failures = [f"{item.link.href[:200]}: not captured: {item.reason}" for item in resolution.rejected]
    out_dir: Path = args.out
    started = datetime.now(UTC)
    with Ledger(out_dir / "ledger.sqlite") as ledger:
        capturer = Capturer(out_dir, loaded.config.capture, ledger, allow_private=True if args.allow_private else None)
        with _progress(len(resolution.targets)) as advance:
            captures = capturer.run(resolution.targets, progress=advance)
    run_dir = _record_capture_run(args, loaded, out_dir, started, resolution, captures)
    for capture in captures:
        if capture.outcome == "failed":
            failures.append(f"{capture.url}: {capture.fetcher} capture failed: {capture.error}")
    if args.format == "jsonl":
        for capture in captures:
            sys.stdout.write(json.dumps(to_json(capture), ensure_ascii=False) + "\n")
    else:
        _print_captures(captures, out_dir)
    status = EXIT_OK
    if args.store:
        from pipeline.run import store_capture_run
        from pipeline.runlog import RunLog

        status, problems = store_capture_run(run_dir, loaded, args.store, RunLog("text", sys.stdout))
        failures.extend(problems)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return status if status == EXIT_USAGE else (EXIT_FAILED if failures else EXIT_OK)


def _record_capture_run(
    args: argparse.Namespace,
    loaded: LoadedConfig,
    out_dir: Path,
    started: datetime,
    resolution: Resolution,
    captures: Sequence[Capture],
) -> Path:
    """A one-off capture's "document" is the command itself: what was asked, by whom, when."""
    from pipeline.run import new_run_id
    from pipeline.runrecord import RunRecord, write_run

    run_id = new_run_id(started)
    command = shlex.join(["preserve", "capture", *args.urls])
    operator = {**loaded.config.bag.operator, "user": getpass.getuser()}
    description = f"command: {command}\noperator: {operator['user']}\ntime: {started.isoformat()}\n"
    record = RunRecord(
        run_id=run_id,
        created=started.isoformat(),
        capture_dir=str(out_dir.resolve()),
        ledger=str((out_dir / "ledger.sqlite").resolve()),
        config_digest=loaded.digest,
        operator=operator,
        documents=[
            {"source": "command line", "id": f"capture-{run_id}", "file_name": "command.txt", "content": description}
        ],
    )
    run_dir = out_dir / "runs" / run_id
    write_run(run_dir, record, resolution.targets, captures, resolution.rejected)
    return run_dir


def _package(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.ledger import Ledger
    from pipeline.package import PackageError
    from pipeline.run import package_recorded
    from pipeline.runrecord import read_run

    loaded = load_config(args.config)
    try:
        record, targets, captures, rejected = read_run(args.run)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bags_dir = args.out or loaded.output_path(loaded.config.output.bags_dir)
    failed = 0
    with Ledger(Path(record.ledger)) as ledger:
        for doc in record.documents:
            try:
                result = package_recorded(loaded, record, doc, (targets, captures, rejected), ledger, bags_dir=bags_dir)
            except PackageError as exc:
                failed += 1
                print(f"error: {doc['source']}: not packaged: {exc}", file=sys.stderr)
                continue
            if result.bag is None:
                print(f"no bag  {doc['source']}: {result.reason} (manifest {result.manifest_path})")
            else:
                built = result.bag
                print(f"bag     {built.path}  {built.payload_oxum} ({built.bag_size})  manifest {result.manifest_path}")
    return EXIT_FAILED if failed else EXIT_OK


def _upload(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.manifest import record_copies
    from pipeline.store import StoreError, open_store
    from pipeline.store.base import BagUploadError

    loaded = load_config(args.config)
    try:
        store = open_store(args.store, loaded)
        check = getattr(store, "check", None)
        if check is not None:
            check()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    manifests = loaded.output_path(loaded.config.output.manifests_dir)
    failed = 0
    for bag in args.bags:
        manifest = manifests / f"{bag.name}.json"
        try:
            result = store.upload_bag(bag, verify=args.verify)
        except (BagUploadError, StoreError) as exc:
            failed += 1
            print(f"error: {bag}: not stored: {exc}", file=sys.stderr)
            continue
        if manifest.is_file():
            record_copies(manifest, result)
        sent = len(result.objects) - result.skipped
        print(
            f"stored  {bag.name} -> {result.store}{bag.name}/  {len(result.objects)} objects "
            f"({sent} sent, {result.skipped} already there), {result.bytes_sent} bytes sent"
            + (", every object read back and verified" if args.verify else "")
        )
    return EXIT_FAILED if failed else EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    import threading

    from pipeline.audit import append_events, audit_bags, find_bags, fixity_event, history
    from pipeline.store import StoreError
    from pipeline.store.base import BagUploadError

    loaded = None
    stores: dict[str, Any] = {}
    default_store = "local"
    if args.config is None and not any(spec.startswith("s3://") for spec in args.targets):
        # local bags and the default store need no config: the defaults, without importing pydantic
        state_dir, store_root = Path.cwd() / DEFAULT_STATE_DIR, Path.cwd() / DEFAULT_STORE_DIR
    else:
        from pipeline.config import load_config

        loaded = load_config(args.config)
        cfg = loaded.config
        state_dir, store_root = loaded.output_path(cfg.output.state_dir), loaded.output_path(cfg.output.store_dir)
        stores, default_store = dict(cfg.stores), cfg.default_store
    local_log = state_dir / "audit" / "fixity.jsonl"
    if args.history:
        events = history(local_log, Path(args.history).name)
        for event in events:
            kinds = sorted({f["kind"] for f in event["failures"]})
            print(f"{event['eventDateTime']}  {event['outcome']:4}  {event['eventDetail']:4}  {', '.join(kinds)}")
        if not events:
            print(f"no fixity events for {Path(args.history).name} in {local_log}")
        return EXIT_OK
    targets: list[tuple[Path, Path]] = []  # (bag, the store root whose audit/ log it goes into)
    s3_audits: list[Any] = []
    for spec in args.targets or [default_store]:
        if spec.startswith("s3://") or (spec in stores and stores[spec].type == "s3"):
            assert loaded is not None
            try:
                s3_audits.extend(_audit_s3(spec, loaded, args.full))
            except (StoreError, BagUploadError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            continue
        if spec in stores or spec == "local":
            chosen = stores.get(spec)
            root = loaded.output_path(chosen.path) if loaded is not None and chosen and chosen.path else store_root
            root = root / chosen.prefix if chosen and chosen.prefix else root
        else:
            root = Path(spec)
        bags = find_bags(root)
        if not bags:
            print(f"error: {spec}: no bag found there", file=sys.stderr)
            return EXIT_USAGE
        targets.extend((bag, root if bag != root else bag.parent) for bag in bags)
    audits = []
    # the summary table's import (about 50 ms) overlaps the hashing instead of adding to it
    table_import = threading.Thread(target=_import_table, daemon=True)
    table_import.start()
    # one pool for every bag: the next bag's files are read while this one's last large file hashes
    for audited, (_, root) in zip(audit_bags([b for b, _ in targets], args.jobs, args.full), targets, strict=True):
        event = fixity_event(audited, args.full)
        append_events(root / "audit" / "fixity.jsonl", [event])
        append_events(local_log, [event])
        audits.append((audited, root))
    append_events(local_log, [fixity_event(a, args.full) for a in s3_audits])
    everything = [a for a, _ in audits] + s3_audits
    table_import.join()
    from rich.console import Console

    _print_audit(everything, Console())
    if args.report:
        report = [fixity_event(a, args.full) for a in everything]
        args.report.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return EXIT_FAILED if any(not a.ok for a in everything) else EXIT_OK


def _import_table() -> None:
    import rich.console
    import rich.table  # noqa: F401


def _audit_s3(spec: str, loaded: LoadedConfig, full: bool) -> list[Any]:
    """Audit every bag under an S3 prefix (or the one bag it names); each event is also stored in the bucket
    as its own object under `<prefix>/audit/<bag>/` (objects cannot be appended to)."""
    from pipeline.audit import audit_s3_bag, fixity_event
    from pipeline.run import put_s3_audit_event
    from pipeline.store import StoreError, open_store
    from pipeline.store.s3 import S3Store

    store = open_store(spec, loaded)
    assert isinstance(store, S3Store)
    store.check()
    if store.list_keys("bagit.txt") and store.prefix:  # the URI names one bag: audit it from its parent
        parent, _, name = store.prefix.rpartition("/")
        store.prefix, bags = parent, [name]
    else:
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=store.key(""), Delimiter="/"
        )
        names = [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for page in pages for p in page.get("CommonPrefixes", [])]
        bags = [n for n in names if n not in ("audit", "archive_manifests")]
    if not bags:
        raise StoreError(f"{spec}: no bag found there")
    audits = []
    for bag in bags:
        audited = audit_s3_bag(store, bag, full=full)
        put_s3_audit_event(store, bag, fixity_event(audited, full))
        audits.append(audited)
    return audits


def _print_audit(audits: Sequence[Any], console: Console) -> None:
    from rich.table import Table

    kinds: dict[str, int] = {}
    for audited in audits:
        for failure in audited.failures:
            kinds[failure.kind] = kinds.get(failure.kind, 0) + 1
            console.print(f"FAIL  {failure.bag}  {failure.file}  {failure.kind}  {failure.detail}", markup=False)
    table = Table(title="fixity audit")
    for column in ("bags", "passed", "failed", "files", "bytes", "failures by kind"):
        table.add_column(column)
    failed = sum(1 for a in audits if not a.ok)
    table.add_row(
        str(len(audits)),
        str(len(audits) - failed),
        str(failed),
        str(sum(a.files for a in audits)),
        str(sum(a.bytes for a in audits)),
        ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none",
    )
    console.print(table)


def _print_captures(captures: Sequence[Capture], out_dir: Path) -> None:
    for capture in captures:
        status = f" HTTP {capture.http_status}" if capture.http_status else ""
        title = f"  {capture.title!r}" if capture.title else ""
        print(f"{capture.outcome:7} {capture.fetcher:5} {capture.url}{status}{title}")
        for record in capture.warc_records:
            if record.record_type == "response" and record.payload_sha256 and record.target_uri == capture.final_url:
                print(f"        payload sha256 {record.payload_sha256}  {record.payload_size} bytes")
        for file in capture.files:
            print(f"        {out_dir / file.path}  sha256 {file.sha256}  {file.size} bytes")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[Target, list[Capture]], None]]:
    """A rich progress bar on a terminal; one plain log line per target otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not sys.stderr.isatty():
        from pipeline.capture.batch import log_line

        yield log_line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("capturing", total=total)
        failed = 0

        def advance(target: Target, captures: list[Capture]) -> None:
            nonlocal failed
            failed += sum(1 for c in captures if c.outcome == "failed")
            progress.update(task, advance=1, description=f"capturing ({failed} failed)")

        yield advance


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
