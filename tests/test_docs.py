"""The README documents what the code does."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from curation.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_column_of_every_table():
    out = CliRunner().invoke(app, ["schema", "--markdown"]).stdout.strip()
    readme = (ROOT / "README.md").read_text()
    assert out in readme, "README's tables are stale: paste `curation schema --markdown` into it"


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for op in __import__("operators").REGISTRY:
        assert f"| {op} |" in readme, f"operator {op} missing from the README's operator table"
