"""The run report: per document, each link with where it was found, what it resolved to, what happened
and where its bytes are now. `report.json` for machines; `report.html` for people: one static,
self-contained page (no external assets) whose table sorts by any column and filters by outcome.

Outcomes: `ok` (captured in this run), `held` (captured by an earlier run; nothing fetched), `failed`,
`unresolved` (a relative link without a base URL), `rejected` (never a target: javascript:, mailto:, ...).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.ledger import Ledger
from pipeline.records import Capture, Target
from pipeline.runstate import RunState

OUTCOMES = ("ok", "held", "failed", "unresolved", "rejected")


def build_report(
    run_id: str,
    started: datetime,
    documents: Sequence[Any],
    captures: Sequence[Capture],
    ledger: Ledger,
    state: RunState,
    *,
    store_uri: str | None,
    previous: dict[str, Any] | None,
    problems: Sequence[str] = (),
    config: str | None = None,
) -> dict[str, Any]:
    """Rows come from the ledger (the latest attempt of each fetcher), so an unchanged document that did
    no network work still shows where each of its links stands."""
    this_run = {(c.canonical, c.fetcher) for c in captures if c.outcome != "skipped"}
    status_cache: dict[str, dict[str, Any]] = {}
    docs = []
    totals = dict.fromkeys(("documents", "links", "targets", *OUTCOMES, "bytes"), 0)
    failing_now: dict[str, dict[str, Any]] = {}
    for doc in documents:
        rows = []
        target_of = {link: t for t in doc.targets for link in t.links}
        for link in doc.links:
            target = target_of.get(link)
            if target is None:
                reason = next((r.reason for r in doc.rejected if r.link == link), "not a target")
                rows.append(_row(link, None, {"outcome": "rejected", "reason": reason}))
                continue
            if target.canonical not in status_cache:
                status_cache[target.canonical] = _status(target, ledger, state, this_run)
            status = status_cache[target.canonical]
            rows.append(_row(link, target, status))
            if status["outcome"] == "failed":
                failing_now.setdefault(target.canonical, {"url": target.url, "reason": status["reason"], "sources": []})
                failing_now[target.canonical]["sources"].append(f"{link.source}:{link.location}")
        for row in rows:
            totals[row["outcome"]] += 1
        totals["links"] += len(rows)
        totals["targets"] += len({t.canonical for t in doc.targets})
        docs.append(
            {
                "source": doc.source,
                "status": doc.status,
                "sha256": doc.sha256,
                "bag": doc.bag,
                "manifest": doc.manifest,
                "error": doc.error,
                "links": rows,
            }
        )
    totals["documents"] = len(docs)
    totals["bytes"] = sum(s.get("size") or 0 for s in status_cache.values() if s["outcome"] == "ok")
    before = {
        row["canonical"]
        for doc in (previous or {}).get("documents", [])
        for row in doc.get("links", [])
        if row.get("outcome") == "failed" and row.get("canonical")
    }
    still = [dict(item, canonical=c) for c, item in failing_now.items() if c in before]
    return {
        "run_id": run_id,
        "started": started.isoformat(),
        "ended": datetime.now(UTC).isoformat(),
        "software": f"preserve-pipeline {__version__}",
        "config": config,
        "store": store_uri,
        "previous_run": (previous or {}).get("run_id"),
        "exit_status": None,
        "totals": totals,
        "problems": list(problems),
        "still_failing": still,
        "documents": docs,
    }


def _status(target: Target, ledger: Ledger, state: RunState, this_run: set[tuple[str, str]]) -> dict[str, Any]:
    if not target.fetchable:
        return {"outcome": "unresolved", "reason": "relative link and no base URL for its document"}
    latest: dict[str, Capture] = {}
    for attempt in ledger.attempts(target.canonical):
        latest[attempt.fetcher] = attempt
    if not latest:
        return {"outcome": "failed", "reason": "not captured: no attempt recorded"}
    failed = [c for c in latest.values() if c.outcome == "failed"]
    ok = [c for c in latest.values() if c.outcome == "ok"]
    primary = latest.get("http") or next(iter(latest.values()))
    best = next((c for c in (primary, *ok) if c.outcome == "ok"), primary)
    size, sha256 = _payload(best)
    files = [f.path for c in ok for f in c.files]
    bags = sorted(set(ledger.bags_holding(files).values()))
    stored = [f"{store}{bag}/" for bag in bags for store in state.stores_of(bag)]
    if failed:
        outcome = "failed"
    elif all((c.canonical, c.fetcher) not in this_run for c in ok):
        outcome = "held"
    else:
        outcome = "ok"
    return {
        "outcome": outcome,
        "http_status": best.http_status,
        "size": size,
        "sha256": sha256,
        "captured": best.ended if best.outcome == "ok" else None,
        "bags": bags,
        "stored": stored,
        "reason": "; ".join(f"{c.fetcher}: {short_reason(c.error, c.url)}" for c in failed) or None,
        "error": "; ".join(f"{c.fetcher}: {c.error}" for c in failed) or None,
    }


_RESOLVE = re.compile(r"Failed to resolve '([^']+)'")
_REFUSED = re.compile(r"host='([^']+)', port=(\d+)\).*(?:Connection refused|NewConnectionError)")


def short_reason(error: str | None, url: str = "") -> str:
    """The reason a person needs, without the library's wrapping: the URL is already in the row."""
    text = (error or "unknown error").strip()
    if url and text.startswith(url + ": "):
        text = text[len(url) + 2 :]
    if match := _RESOLVE.search(text):
        return f"cannot resolve host {match.group(1)} (DNS lookup failed: no network, or no such host)"
    if match := _REFUSED.search(text):
        return f"connection refused by {match.group(1)}:{match.group(2)}"
    if "Read timed out" in text:
        return "the server stopped answering (read timeout)"
    if "ConnectTimeout" in text or ("Connection to " in text and "timed out" in text):
        return "could not connect (connect timeout)"
    return text if len(text) <= 300 else text[:297] + "..."


def _payload(capture: Capture) -> tuple[int | None, str | None]:
    """The evidence's own size and digest: the final response's payload, or the media file."""
    for record in capture.warc_records:
        if record.record_type == "response" and record.target_uri == capture.final_url and record.payload_sha256:
            return record.payload_size, record.payload_sha256
    media = [f for f in capture.files if f.role == "media"]
    if media:
        return media[0].size, media[0].sha256
    return None, None


def _row(link: Any, target: Target | None, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": link.source,
        "location": link.location,
        "href": link.href,
        "text": link.text,
        "url": target.url if target else link.url,
        "canonical": target.canonical if target else None,
        "kind": target.kind if target else None,
        **{k: status.get(k) for k in ("outcome", "http_status", "size", "sha256", "captured", "bags", "stored")},
        "reason": status.get("reason"),
        "error": status.get("error"),
    }


def write_report(run_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / "report.json"
    html_path = run_dir / "report.html"
    _write(json_path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    _write(html_path, render_html(report))
    return json_path, html_path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


# -- HTML ------------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#f2f2f2;cursor:pointer;user-select:none}td.url{word-break:break-all}
td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px;word-break:break-all}
.o-ok{background:#e6f4e6}.o-held{background:#eef3fb}.o-failed{background:#fbe4e4}.o-unresolved,.o-rejected{
background:#fff6dc}.totals td,.totals th{cursor:default}#filters button{margin-right:4px}
#filters button.on{font-weight:bold;outline:2px solid #444}
"""

_SCRIPT = """
(function(){
var table=document.getElementById('links'),body=table.tBodies[0],state={outcome:'all',text:''};
function apply(){var shown=0;Array.prototype.forEach.call(body.rows,function(r){
var ok=(state.outcome==='all'||r.dataset.outcome===state.outcome)&&
(!state.text||r.textContent.toLowerCase().indexOf(state.text)>=0);r.hidden=!ok;if(ok)shown++;});
document.getElementById('shown').textContent=shown;}
Array.prototype.forEach.call(document.querySelectorAll('#filters button'),function(b){
b.addEventListener('click',function(){state.outcome=b.dataset.outcome;
Array.prototype.forEach.call(document.querySelectorAll('#filters button'),function(o){
o.classList.toggle('on',o===b);});apply();});});
document.getElementById('search').addEventListener('input',function(e){
state.text=e.target.value.toLowerCase();apply();});
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
var dir=th.dataset.dir==='asc'?'desc':'asc';Array.prototype.forEach.call(table.tHead.rows[0].cells,
function(o){delete o.dataset.dir;});th.dataset.dir=dir;var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=a.cells[i].dataset.sort||a.cells[i].textContent,
y=b.cells[i].dataset.sort||b.cells[i].textContent,nx=parseFloat(x),ny=parseFloat(y),c;
c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return dir==='asc'?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});
apply();})();
"""

_COLUMNS = (
    "document",
    "found at",
    "link as written",
    "resolved URL",
    "kind",
    "outcome",
    "HTTP",
    "size",
    "sha256",
    "stored in",
    "reason",
)


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    totals = report["totals"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'\">",
        f"<title>preserve run {e(report['run_id'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Run {e(report['run_id'])}</h1>",
        f"<p>Started {e(report['started'])}, ended {e(report['ended'])}. "
        f"Store: <code>{e(report.get('store') or 'none')}</code>. "
        f'Exit status: <b id="exit-status">{e(str(report.get("exit_status")))}</b>. {e(report["software"])}.</p>',
        '<table class="totals" id="totals"><tr>'
        + "".join(f"<th>{e(k)}</th>" for k in totals)
        + "</tr><tr>"
        + "".join(f'<td class="num" data-total="{e(k)}">{e(str(v))}</td>' for k, v in totals.items())
        + "</tr></table>",
    ]
    if report.get("problems"):
        out.append('<h2>Problems</h2><ul id="problems">')
        out.extend(f"<li>{e(p)}</li>" for p in report["problems"])
        out.append("</ul>")
    out.append(
        '<h2>Documents</h2><table id="documents"><thead><tr><th>document</th><th>status</th><th>links</th>'
        "<th>bag</th><th>error</th></tr></thead><tbody>"
    )
    for doc in report["documents"]:
        out.append(
            f'<tr><td>{e(doc["source"])}</td><td>{e(doc["status"])}</td><td class="num">{len(doc["links"])}</td>'
            f"<td>{e(doc['bag'] or '')}</td><td>{e(doc['error'] or '')}</td></tr>"
        )
    out.append('</tbody></table><h2>Links</h2><p id="filters">Show: ')
    counts = {o: sum(1 for d in report["documents"] for r in d["links"] if r["outcome"] == o) for o in OUTCOMES}
    all_rows = sum(counts.values())
    out.append(f'<button type="button" class="on" data-outcome="all">all ({all_rows})</button>')
    out.extend(f'<button type="button" data-outcome="{o}">{o} ({counts[o]})</button>' for o in OUTCOMES if counts[o])
    out.append(
        ' <input id="search" type="search" placeholder="filter text" aria-label="filter text"> '
        '<span id="shown"></span> shown</p><table id="links"><thead><tr>'
    )
    out.extend(f"<th>{e(c)}</th>" for c in _COLUMNS)
    out.append("</tr></thead><tbody>")
    for doc in report["documents"]:
        for row in doc["links"]:
            stored = row.get("stored") or [f"{b} (local only)" for b in row.get("bags") or []]
            cells = [
                (doc["source"], ""),
                (row["location"], ""),
                (row["href"], "url"),
                (row["url"] or "", "url"),
                (row["kind"] or "", ""),
                (row["outcome"], ""),
                (str(row["http_status"] or ""), "num"),
                (str(row["size"] if row["size"] is not None else ""), "num"),
                (row["sha256"] or "", "url"),
                ("\n".join(stored), "url"),
                (row["reason"] or "", ""),
            ]
            out.append(f'<tr class="o-{e(row["outcome"])}" data-outcome="{e(row["outcome"])}">')
            out.extend(f'<td class="{cls}">{e(text)}</td>' if cls else f"<td>{e(text)}</td>" for text, cls in cells)
            out.append("</tr>")
    out.append("</tbody></table>")
    still = report["still_failing"]
    out.append(
        f'<details id="still-failing-section"{" open" if 0 < len(still) <= 20 else ""}><summary><b>'
        f"{len(still)} links failed in the previous run ({e(str(report.get('previous_run')))}) and still fail"
        "</b></summary>"
    )
    if still:
        out.append('<ul id="still-failing">')
        out.extend(
            f"<li><code>{e(item['url'])}</code>: {e(item['reason'] or '')} (cited at {e(', '.join(item['sources']))})"
            "</li>"
            for item in still
        )
        out.append("</ul>")
    out.append("</details>")
    out.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(out)
