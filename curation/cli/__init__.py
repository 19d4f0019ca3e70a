"""The ``curation`` command line (typer): one module per command group, wired here."""
from __future__ import annotations

import os
import sys

import typer

from curation.cli import inspect, run, sample

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Curate human-centric video into training data: run workflows into a Lance "
                       "store, query it, audit it.")
STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    STATE["debug"] = debug


run.register(app)
inspect.register(app)
sample.register(app)


class CliError(Exception):
    """An error the user can fix; printed as one line."""


def main() -> None:
    debug = "--debug" in sys.argv or os.environ.get("CURATION_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except SystemExit as e:
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
