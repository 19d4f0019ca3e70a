"""The README and the docs/ pages document what the code does: the operator and column tables are
`curation schema` output, pasted (never edited by hand)."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from curation.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_schema_page_lists_every_column_of_every_table():
    out = CliRunner().invoke(app, ["schema", "--markdown"]).stdout.strip()
    page = (ROOT / "docs" / "schema.md").read_text()
    assert out in page, "docs/schema.md's tables are stale: paste `curation schema --markdown` into it"


def test_operators_page_lists_every_operator():
    out = CliRunner().invoke(app, ["schema", "--operators", "--markdown"]).stdout.strip()
    page = (ROOT / "docs" / "operators.md").read_text()
    assert out in page, ("docs/operators.md's table is stale: paste `curation schema --operators "
                         "--markdown` into it")
    for op in __import__("operators").REGISTRY.values():
        assert op.summary, f"operator {op.name} has no summary (one line: what it computes)"


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_only_to_pages_that_exist():
    import re
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
