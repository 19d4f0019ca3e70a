"""The README documents what the code does."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from curation.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_schema_page_lists_every_column_of_every_table():
    out = CliRunner().invoke(app, ["schema", "--markdown"]).stdout.strip()
    page = (ROOT / "docs" / "schema.md").read_text()
    assert out in page, "docs/schema.md's tables are stale: paste `curation schema --markdown` into it"


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    operators_page = (ROOT / "docs" / "operators.md").read_text()
    for op in __import__("operators").REGISTRY:
        assert f"| {op} |" in operators_page, f"operator {op} missing from docs/operators.md's table"


def test_readme_links_only_to_pages_that_exist():
    import re
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
