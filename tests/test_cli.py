"""The `preserve` command as users call it: output contract, errors, exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
INVESTIGATION = ROOT / "documents" / "002_a9fc09c2c0e03313.txt"


def test_jsonl_is_one_target_per_line_with_the_contract_fields(capsys) -> None:
    assert main(["links", str(INVESTIGATION), "--base-url", "https://syrianarchive.org", "--format", "jsonl"]) == 0
    out = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in out]
    assert len(records) == 59
    for record in records:
        assert {"url", "canonical", "kind", "hops", "links"} <= set(record)
        for hop in record["hops"]:
            assert set(hop) == {"rule", "url"}
        for link in record["links"]:
            assert {"source", "location", "text", "href"} <= set(link)
    video = next(r for r in records if r["url"] == "https://www.youtube.com/watch?v=g4SJoYgo7hU")
    assert video["kind"] == "video"
    assert [h["rule"] for h in video["hops"]] == ["google"]
    assert [link["location"] for link in video["links"]] == ["36:100", "41:48", "46:49"]
    image = next(r for r in records if r["url"].endswith("image27.png"))
    assert image["url"] == "https://syrianarchive.org/assets/investigations/Harem/image27.png"
    assert image["hops"] == []


def test_config_gives_every_document_its_settings(capsys) -> None:
    assert main(["links", "--config", str(DEFAULT_CONFIG), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == 15 + 59  # the article's 17 links name 15 pages; the investigation's 67 name 59
    assert all(r["fetchable"] for r in records)
    sources = {link["source"] for r in records for link in r["links"]}
    assert sources == {"documents/000_57833927fbecfe78.txt", "documents/002_a9fc09c2c0e03313.txt"} or all(
        s.endswith(("000_57833927fbecfe78.txt", "002_a9fc09c2c0e03313.txt")) for s in sources
    )
    assert "warning" not in captured.err


def test_table_output_for_people(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")
    assert main(["links", str(INVESTIGATION), "--base-url", "https://syrianarchive.org"]) == 0
    out = capsys.readouterr().out
    assert "59 targets" in out and "snapshot" in out and "36.2093028,36.5199889" in out


def test_unreadable_document_is_one_line_and_the_rest_are_listed(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "photo.md"
    binary.write_bytes(b"\x00\x01\x02binary")
    good = tmp_path / "good.md"
    good.write_text("[a](https://good.example/)\n", encoding="utf-8")
    missing = tmp_path / "missing.md"
    code = main(["links", str(binary), str(missing), str(good), "--format", "jsonl"])
    captured = capsys.readouterr()
    assert code == 1
    assert [json.loads(line)["url"] for line in captured.out.splitlines()] == ["https://good.example/"]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "photo.md: not a text document" in errors[0]
    assert "missing.md: cannot read" in errors[1]


def test_rejected_links_are_reported_on_stderr(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("[x](javascript:void(0)) and [y](https://ok.example/)\n", encoding="utf-8")
    assert main(["links", str(doc), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    assert "d.md:1:5: 'javascript:void(0)' is not a target: scheme 'javascript:' is not fetched" in captured.err


def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("documents:\n  - path: a.md\n    base_ur: https://x.example/\n", encoding="utf-8")
    assert main(["links", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {config}: documents[0].base_ur: unknown key"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("wiki_base: 12\n", "wiki_base: URL input should be a string or URL"),
        ("documents:\n  - path: a.md\n    base_url: not a url\n", "documents[0].base_url: Input should be a valid URL"),
        ("documents: [\n", "not valid YAML (line 2, column 1)"),
        ("output:\n  runs_dir: [1]\n", "output.runs_dir: Input should be a valid string"),
        ("documents:\n  - {}\n", "documents[0]: Value error, give exactly one of 'path', 'glob' or 'url'"),
        ("- a\n- b\n", "a config must be a mapping"),
    ],
)
def test_config_errors(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert text.startswith(f"{config}: ") and message in text and "\n" not in text


def test_config_globs_and_base_url_rules(tmp_path: Path) -> None:
    (tmp_path / "docs" / "site").mkdir(parents=True)
    (tmp_path / "docs" / "site" / "a.md").write_text("![](/img/a.png)\n", encoding="utf-8")
    (tmp_path / "docs" / "b.md").write_text("![](/img/b.png)\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(
        "documents:\n  - glob: docs/**/*.md\nbase_urls:\n  - match: docs/site/*\n    base_url: https://site.example/\n"
        "base_url: https://fallback.example/\n",
        encoding="utf-8",
    )
    loaded = load_config(config)
    paths = [p.relative_to(tmp_path).as_posix() for p, _ in loaded.document_paths()]
    assert paths == ["docs/b.md", "docs/site/a.md"]
    assert loaded.settings_for(tmp_path / "docs" / "site" / "a.md").base_url == "https://site.example/"
    assert loaded.settings_for(tmp_path / "docs" / "b.md").base_url == "https://fallback.example/"
