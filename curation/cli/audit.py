"""``curation audit``: the audit page, a local read-only web app over one store."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_cmd(
        store: str = typer.Option(..., "--store", "-s"),
        port: int = typer.Option(8765, "--port", "-p", min=1, max=65535),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on (loopback unless given: anyone who can "
                                      "reach it sees the store)."),
    ):
        """Serve the audit page of STORE (clip grid, clip pages, funnel) until Ctrl-C; prints its URL."""
        from curation.audit.app import check_port, serve
        check_port(host, port)
        serve(store, host=host, port=port,
              on_ready=lambda url: print(f"curation audit: {store} at {url} (read-only; Ctrl-C stops)",
                                         flush=True))
