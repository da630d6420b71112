"""Benchmark: `preserve links` over a generated 100,000-link document.

Reference in the same run: the Markdown parser the extractor is built on (markdown-it, the Rust port
`markdown-it-pyrs`) parsing the same text with the same options (linkify on), which is the floor for
any extractor built on it, and rendering it to HTML as most Markdown tools do.

    .venv/bin/python bench/bench_links.py [--links 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import markdown_it_pyrs

from pipeline.extract import DocumentSettings, extract_file
from pipeline.resolve import resolve


def make_document(count: int, seed: int = 7) -> str:
    """Exactly `count` links in the seeds' style: Google-wrapped links, relative images, bare URLs, maps,
    raw HTML and reference-style links (a citation and its definition count as two)."""
    rng = random.Random(seed)
    parts = []
    made = i = 0
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    while made < count:
        pick = i % 6 if count - made > 1 else i % 5
        if pick == 0:
            video = "".join(rng.choice(alphabet) for _ in range(11))
            parts.append(
                "A [video](https://www.google.com/url?q=https://www.youtube.com/watch"
                f"?v%3D{video}&sa=D&ust=15384771353{i:05d}) documents the strike."
            )
        elif pick == 1:
            parts.append(f"![](/assets/investigations/Bench/image{i}.png)")
        elif pick == 2:
            parts.append(f"Reported at https://news{i % 97}.example/article/{i}?utm_source=x, then archived.")
        elif pick == 3:
            parts.append(
                f"[The site](https://www.google.com/url?q=https://www.google.com/maps/place/36%25C2%25B012'33.5%2522N"
                f"/@36.{i},36.5,179m/data%3D!3m1!1e3!8m2!3d36.{i}!4d36.5&sa=D&ust=1)"
            )
        elif pick == 4:
            parts.append(f'<a href="https://html{i % 13}.example/p/{i}">raw</a> is cited inline.')
        else:
            parts.append(f"See [ref{i}][r{i}].\n\n[r{i}]: https://ref.example/{i}")
            made += 1
        made += 1
        i += 1
    return "\n\n".join(parts) + "\n"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    text = make_document(args.links)
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "big.md"
        doc.write_text(text, encoding="utf-8")
        settings = DocumentSettings(base_url="https://syrianarchive.org/")
        counts: dict[str, int] = {}

        def ours() -> None:
            result = extract_file(doc, settings)
            resolution = resolve(result.links)
            counts["links"] = len(result.links)
            counts["targets"] = len(resolution.targets)

        md = markdown_it_pyrs.MarkdownIt("commonmark")
        md.enable_many(["linkify", "table", "strikethrough"])
        ours_s = best(ours, args.repeat)
        parse_s = best(lambda: md.tree(text), args.repeat)
        render_s = best(lambda: md.render(text), args.repeat)
        start = time.perf_counter()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "links",
                str(doc),
                "--format",
                "jsonl",
                "--base-url",
                "https://syrianarchive.org/",
            ],
            capture_output=True,
            check=True,
        )
        cli_s = time.perf_counter() - start
    mb = len(text.encode()) / 1e6
    print(f"document: {mb:.1f} MB, {counts['links']} links, {counts['targets']} targets")
    print(
        f"extract+resolve (in process, best of {args.repeat}): {ours_s:.2f} s"
        f"  ({counts['links'] / ours_s:,.0f} links/s)"
    )
    print(f"markdown-it parse to a tree (reference):{parse_s:.2f} s  -> ours is {ours_s / parse_s:.2f}x its time")
    print(f"markdown-it render to HTML:             {render_s:.2f} s  -> ours is {ours_s / render_s:.2f}x its time")
    print(
        f"`preserve links --format jsonl` end to end (one run): {cli_s:.2f} s, {len(cli.stdout) / 1e6:.1f} MB of output"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
