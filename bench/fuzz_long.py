"""A longer fuzz run of extract and resolve: the properties of tests/test_fuzz.py, for N minutes.

    .venv/bin/python bench/fuzz_long.py [--minutes 5] [--seed N]

Each property gets an equal share of the time; hypothesis runs it in batches of examples until its
share is spent, with a fresh seed per batch. A failure stops the run and prints the smallest failing
example hypothesis found (rerun with the printed seed to reproduce it). The pathological cases by hand
are not repeated here: `pytest tests/test_fuzz.py` runs them.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

BATCH = 200
os.environ.setdefault("FUZZ_EXAMPLES", str(BATCH))  # read by tests/test_fuzz.py when it is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import test_fuzz  # noqa: E402

# The hypothesis-wrapped properties, and whether they want a tmp_path.
PROPERTIES: list[tuple[str, bool]] = [
    ("test_generated_markdown_documents", True),
    ("test_generated_front_matter", True),
    ("test_arbitrary_bytes", True),
    ("test_in_memory_text_of_any_characters", False),
    ("test_generated_html_documents", True),
    ("test_any_url_resolves_without_raising", False),
]


def run_batch(name: str, wants_path: bool, batch_seed: int, workdir: Path) -> None:
    test: Any = getattr(test_fuzz, name)
    test._hypothesis_internal_use_seed = batch_seed  # what @seed(batch_seed) sets
    if wants_path:
        test(tmp_path=workdir)
    else:
        test()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz_long.{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    share = args.minutes * 60 / len(PROPERTIES)
    started = time.monotonic()
    totals: dict[str, int] = {}
    for name, wants_path in PROPERTIES:
        until = time.monotonic() + share
        examples = 0
        while time.monotonic() < until:
            batch_seed = rng.randrange(2**32)
            try:
                run_batch(name, wants_path, batch_seed, workdir)
            except Exception:
                print(f"FAILED {name} (seed {batch_seed}) after {examples} examples", flush=True)
                raise
            examples += BATCH
        totals[name] = examples
        print(f"{name}: {examples} examples, no failure", flush=True)
    elapsed = time.monotonic() - started
    print(f"{sum(totals.values())} examples in {elapsed / 60:.1f} minutes, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
