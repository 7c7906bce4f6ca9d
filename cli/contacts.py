"""`maild contacts export EMAIL` and `maild contacts forget EMAIL`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from maild import privacy
from maild.cli.main import engine_from, new_app, settings_from

app = new_app("A requester's data: export it, or erase it.")


@app.command()
def export(ctx: typer.Context, email: str) -> None:
    """Print, as JSON, everything held about EMAIL: tickets, messages (raw included), attachments."""
    settings = settings_from(ctx, need_secret=False)
    typer.echo(json.dumps(privacy.export(engine_from(settings), email), ensure_ascii=False, indent=2))


@app.command()
def forget(ctx: typer.Context, email: str,
           yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False) -> None:
    """Erase EMAIL's address, name, message bodies and attachments; keep anonymous ticket statistics."""
    settings = settings_from(ctx, need_secret=False)
    if not yes and not typer.confirm(f"Erase everything maild holds about {email}? This cannot be undone"):
        typer.echo("Nothing erased.", err=True)
        raise typer.Exit(1)
    report = privacy.forget(engine_from(settings), email)
    typer.echo(f"forgotten: {report['tickets']} ticket(s), {report['messages']} message(s), "
               f"{report['attachments']} attachment(s), {report['inbox']} inbox and {report['outbox']} outbox copies")
