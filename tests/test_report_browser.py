"""The run report as people see it: rendered by headless Chromium (Debian's package, driven by Playwright),
checked by what is visible on the page, not by the HTML text."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from tests.support.site import LocalSite

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic is refused by this machine's closed network; these keep it quiet
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def test_report_table_is_visible_sortable_and_filterable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "documents").mkdir()
    with LocalSite() as site:
        (tmp_path / "documents" / "evidence.md").write_text(
            f"[report]({site.url('/doc.pdf')})\n\n[image]({site.url('/img/a.png')})\n\n"
            f"[gone](https://www.google.com/url?q={site.url('/missing')}&sa=D)\n\n"
            "[script](javascript:alert(1))\n\n![local](/relative/only.png)\n",
            encoding="utf-8",
        )
        config = tmp_path / "run.yaml"
        config.write_text(
            "documents:\n  - path: documents/evidence.md\n"
            "capture:\n  allow_private_addresses: true\n  per_host_rate: 100\n  retries: 0\n  media: false\n",
            encoding="utf-8",
        )
        assert main(["run", "--config", str(config)]) == 1
    (report,) = tmp_path.glob("runs/*/report.html")

    page = browser.new_page()
    page.goto(report.as_uri())
    table = page.locator("#links")
    visible = table.locator("tbody tr:visible")
    assert visible.count() == 5
    assert page.locator("#shown").inner_text() == "5"
    assert page.locator("#exit-status").inner_text() == "1"
    outcomes = sorted(visible.nth(i).locator("td").nth(5).inner_text() for i in range(5))
    assert outcomes == ["failed", "ok", "ok", "rejected", "unresolved"]

    page.get_by_role("button", name="failed (1)").click()
    assert visible.count() == 1
    cells = visible.first.locator("td")
    assert cells.nth(3).inner_text() == site.url("/missing")
    assert "HTTP 404" in cells.nth(10).inner_text()
    assert page.locator("#shown").inner_text() == "1"

    page.get_by_role("button", name="all (5)").click()
    page.locator("#search").fill("img/a.png")
    assert visible.count() == 1 and visible.first.locator("td").nth(5).inner_text() == "ok"
    page.locator("#search").fill("")

    # sort by size: click once for ascending, again for descending; empty sizes compare as text
    size_header = table.locator("thead th", has_text="size")
    size_header.click()
    sizes = [visible.nth(i).locator("td").nth(7).inner_text() for i in range(visible.count())]
    numbers = [int(s) for s in sizes if s]
    assert numbers == sorted(numbers) and len(numbers) == 3  # the 404 page has a body too
    size_header.click()
    sizes_desc = [visible.nth(i).locator("td").nth(7).inner_text() for i in range(visible.count())]
    assert [int(s) for s in sizes_desc if s] == sorted(numbers, reverse=True)
    page.close()


def test_hostile_link_text_is_shown_as_text_never_run(tmp_path: Path, browser: Any) -> None:
    """Documents and web servers are written by others: a URL or a reason that carries markup must be shown
    literally (escaped, and the page's Content-Security-Policy would stop an inline handler anyway)."""
    from pipeline.runreport import render_html

    script = "\"><script>document.title='pwned'</script>"
    handler = "<img src=x onerror=\"document.title='pwned'\">"
    row = {
        "source": "doc.md",
        "location": "1:1",
        "href": "https://example.org/" + script,
        "text": handler,
        "url": "https://example.org/" + script,
        "canonical": "https://example.org/",
        "kind": "page",
        "outcome": "failed",
        "http_status": 500,
        "size": None,
        "sha256": None,
        "captured": None,
        "bags": [],
        "stored": [],
        "reason": handler,
    }
    report = {
        "run_id": "r1",
        "started": "2026-11-24T00:00:00+00:00",
        "ended": "2026-11-24T00:00:01+00:00",
        "software": "preserve-pipeline test",
        "store": None,
        "previous_run": None,
        "exit_status": 1,
        "totals": {"links": 1, "failed": 1},
        "problems": [handler],
        "still_failing": [{"url": row["url"], "reason": handler, "sources": ["doc.md:1:1"]}],
        "documents": [
            {
                "source": "doc.md",
                "status": "new",
                "sha256": None,
                "bag": None,
                "manifest": None,
                "error": script,
                "links": [row],
            }
        ],
    }
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(report), encoding="utf-8")
    page = browser.new_page()
    page.goto(page_file.as_uri())
    assert page.title() == "preserve run r1"
    cells = page.locator("#links tbody tr").first.locator("td")
    assert cells.nth(2).inner_text() == "https://example.org/" + script
    assert cells.nth(10).inner_text() == handler
    assert page.locator("img").count() == 0 and page.locator("body script").count() == 1  # only the report's own
    page.close()
