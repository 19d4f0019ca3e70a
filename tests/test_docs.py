"""The README and docs/ pages document what the code does: their operator and column tables are
`curation schema` output, pasted (never edited by hand)."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from curation.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _docs() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_docs_list_every_column_of_every_table():
    out = CliRunner().invoke(app, ["schema", "--markdown"]).stdout.strip()
    assert out in _docs(), "the column tables are stale: paste `curation schema --markdown` into them"


def test_docs_list_every_operator():
    out = CliRunner().invoke(app, ["schema", "--operators", "--markdown"]).stdout.strip()
    assert out in _docs(), ("the operator table is stale: paste `curation schema --operators "
                            "--markdown` into it")
    for op in __import__("operators").REGISTRY.values():
        assert op.summary, f"operator {op.name} has no summary (one line: what it computes)"


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
