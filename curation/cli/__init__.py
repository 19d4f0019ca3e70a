"""The ``curation`` command line (typer): one module per command group, wired here."""
from __future__ import annotations

import os
import sys

import typer

from curation.cli import inspect, run, sample

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Curate human-centric video into training data: run workflows into a Lance "
                       "store, query it, audit it.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    """(--debug is read by main(), which turns errors into one line unless it is given.)"""


run.register(app)
inspect.register(app)
sample.register(app)


def main() -> None:
    debug = "--debug" in sys.argv or os.environ.get("CURATION_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except SystemExit:
        raise
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        import click
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        msg = str(e).strip().splitlines()
        print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
