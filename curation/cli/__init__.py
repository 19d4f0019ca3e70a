"""The ``curation`` command line (typer): one module per command group, wired here."""
from __future__ import annotations

import os
import sys

import typer

from curation.cli import audit, balance, distill, inspect, run, sample, train, validate

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Curate human-centric video into training data: run workflows into a Lance "
                       "store, query it, audit it.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    """(--debug is read by main(), which turns errors into one line unless it is given.)"""


run.register(app)
inspect.register(app)
sample.register(app)
balance.register(app)
audit.register(app)
validate.register(app)
train.register(app)
distill.register(app)


def main() -> None:
    """Entry point: every error is one line on stderr (``error: ...``, at most 300 characters, no
    traceback, no Rust source paths) unless --debug or CURATION_DEBUG=1."""
    import click

    from curation.cli.common import error_line, fail
    debug = "--debug" in sys.argv or os.environ.get("CURATION_DEBUG") == "1"
    from typer._click import exceptions as typer_click   # typer 0.29 ships its own click
    from curation.failures import RunStopped
    clicks = (click.ClickException, typer_click.ClickException)
    try:
        code = app(standalone_mode=False)
    except SystemExit:
        raise
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except clicks as e:  # usage errors: one line naming the option, with where to find the usage
        hint = ""
        if isinstance(e, (click.UsageError, typer_click.UsageError)) and e.ctx is not None:
            hint = f" (see: {e.ctx.command_path} --help)"
        print(f"error: {error_line(_usage_message(e), 290 - len(hint))}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except RunStopped as e:   # interrupted, or a step could not set up: what was committed
        print(f"{e.prefix}: {error_line(e, 600)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if debug:
            raise
        fail(error_line(e))
        code = getattr(e, "exit_code", 1)
        sys.exit(code if isinstance(code, int) and code > 0 else 1)
    # typer turns a KeyboardInterrupt it sees into a returned exit code (130) in this mode
    if isinstance(code, int) and code:
        if code == 130:
            print("aborted", file=sys.stderr)
        sys.exit(code)


def _usage_message(e) -> str:
    """A usage error's message, naming the option (typer's range checks say only "Input should be
    greater than or equal to 0")."""
    text = e.format_message()
    param = getattr(e, "param", None)
    if param is not None and not text.startswith("Invalid value"):
        names = " / ".join(getattr(param, "opts", None) or [param.name or "?"])
        text = f"invalid value for {names}: {text}"
    return text
