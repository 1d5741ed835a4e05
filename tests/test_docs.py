"""The documentation: README.md stays a one-page front page, the pages under docs/ are linked from it,
every relative link resolves, and docs/configuration.md is what ``python -m lmship config_docs`` writes
from the config schema today (regenerate it after changing the schema)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
#: The README's page budget.
MAX_README_LINES = 150
#: Every page under docs/ that the README must link.
PAGES = ("stages", "configuration", "measuring", "results", "operations", "environments", "extending", "tests")

#: ``[text](target)`` and ``![alt](target)``, with an optional ``"title"``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """The link targets of a markdown text, outside fenced code blocks and code spans."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` (http(s), mailto and in-page ``#anchor`` links aside) whose file is missing."""
    missing = []
    for target in links(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0].split("?", 1)[0]
        if not (path.parent / file).exists():
            missing.append(target)
    return missing


def test_links_are_parsed_as_the_pages_write_them():
    text = (
        "[a](docs/a.md) ![b](../img.png) [c](https://x.org/y) [d](#anchor) [e](f.md#part)\n"
        "`[not](a-link.md)`\n```\n[not](either.md)\n```\n"
    )
    assert links(text) == ["docs/a.md", "../img.png", "https://x.org/y", "#anchor", "f.md#part"]


def test_configuration_page_is_what_the_schema_writes_today(tmp_path):
    """docs/configuration.md is generated: a schema change without ``python -m lmship config_docs`` fails."""
    from lmship.config_docs import config_docs

    fresh = config_docs(SCHEMA, tmp_path / "configuration.md").read_text()
    committed = DOCS / "configuration.md"
    assert committed.exists(), "docs/configuration.md is missing: run `python -m lmship config_docs` in workflow/"
    assert committed.read_text() == fresh, (
        "docs/configuration.md differs from the schema: run `python -m lmship config_docs` in workflow/"
    )


def test_config_docs_command_writes_the_page(tmp_path):
    """``python -m lmship config_docs --out`` (from workflow/) writes the same page as the function."""
    out = tmp_path / "configuration.md"
    subprocess.run(
        [sys.executable, "-m", "lmship", "config_docs", "--out", str(out)],
        cwd=REPO / "workflow",
        check=True,
        capture_output=True,
    )
    assert out.read_text() == (DOCS / "configuration.md").read_text()


def test_readme_is_one_page():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines, at most {MAX_README_LINES}: move sections to docs/"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files(page):
    assert broken_links(page) == [], f"{page.relative_to(REPO)} links to missing files"


@pytest.mark.parametrize("name", PAGES)
def test_every_docs_page_exists_and_is_linked_from_the_readme(name):
    page = DOCS / f"{name}.md"
    assert page.exists(), f"docs/{name}.md is missing"
    targets = {t.split("#", 1)[0].removeprefix("./") for t in links(README.read_text())}
    assert f"docs/{name}.md" in targets, f"README.md does not link docs/{name}.md"


#: A measured figure: a number with a unit of time, size, share or speed (``45 minutes``, ``93 MB``, ``2.3x``).
FIGURE = re.compile(
    r"\b\d+(?:[.,\u2013-]\d+)*\s*(?:ms|s|sec|seconds?|min|minutes?|h|hours?|GB|MB|KB|%|x|\u00d7|tokens/s|tests)\b",
    re.IGNORECASE,
)


def test_the_readme_types_no_figure_by_hand():
    """Bug: figures typed into the README go stale (27 of 111 commits once edited them). Every figure
    on the front page is in a file the workflow wrote (docs/results/, refreshed by ``snakemake publish``),
    so the README's own text holds none (code and link targets aside)."""
    text = re.sub(r"\]\([^)]*\)", "]", CODE_SPAN.sub("", FENCE.sub("", README.read_text())))
    typed = [m.group(0) for m in FIGURE.finditer(text)]
    assert not typed, typed
    assert FIGURE.search("about 45 minutes on 2 cores") and FIGURE.search("the wheel (93 MB)")


def test_the_readme_shows_the_published_answer():
    """The front page shows, for each published run (``docs/results/<models>/``, written by ``snakemake
    publish``), the picture that answers "what do I ship" and its summary, from the workflow's own copy."""
    shown = [t for t in links(README.read_text()) if t.startswith("docs/results/")]
    runs = sorted(p.parent for p in (REPO / "docs/results").glob("*/run.md"))
    assert runs, "no published run under docs/results/"
    for run in runs:
        folder = run.relative_to(REPO).as_posix()
        assert f"{folder}/ship.png" in shown and f"{folder}/summary.md" in shown, (folder, shown)
    assert all((REPO / t).is_file() for t in shown), shown
