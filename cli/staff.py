"""`maild staff add|list|remove`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import col, select

from maild.cli.main import JsonOpt, engine_from, new_app, settings_from
from maild.errors import UserError
from maild.report import iso
from maild.storage.db import transaction
from maild.storage.models import Staff

app = new_app("Staff who answer by mail.")


@app.command()
def add(
    ctx: typer.Context,
    email: str,
    name: Annotated[str, typer.Option(help="full name")],
    group: Annotated[str, typer.Option(help="group, as in config.toml [[groups]]")],
) -> None:
    """Register (or re-activate) a staff member in a group."""
    settings = settings_from(ctx, need_secret=False)
    email = email.strip().lower()
    if email.count("@") != 1 or " " in email:
        raise UserError(f"{email!r} is not an e-mail address")
    g = settings.group(group)
    if g is None:
        raise UserError(f"--group {group!r}: no such group; expected one of {', '.join(x.name for x in settings.groups)}")
    with transaction(engine_from(settings)) as session:
        member = session.exec(select(Staff).where(Staff.address == email)).first()
        if member is None:
            member = Staff(address=email, name=name, group=g.name)
        member.name, member.group, member.active = name, g.name, True
        session.add(member)
    typer.echo(f"{email} is staff of {g.name}")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List staff."""
    settings = settings_from(ctx, need_secret=False)
    with transaction(engine_from(settings)) as session:
        rows = [
            {"email": s.address, "name": s.name, "group": s.group, "active": s.active, "created_at": iso(s.created_at)}
            for s in session.exec(select(Staff).order_by(col(Staff.group), col(Staff.address)))
        ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(rows)} staff")
    for c in ("email", "name", "group", "active"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["email"], r["name"], r["group"], "yes" if r["active"] else "no")
    Console().print(table)


@app.command()
def remove(ctx: typer.Context, email: str) -> None:
    """Deactivate a staff member: their mail no longer counts as staff's (history keeps their name)."""
    settings = settings_from(ctx, need_secret=False)
    with transaction(engine_from(settings)) as session:
        member = session.exec(select(Staff).where(Staff.address == email.strip().lower())).first()
        if member is None or not member.active:
            raise UserError(f"{email} is not active staff: see 'maild staff list'")
        member.active = False
        session.add(member)
    typer.echo(f"{email} removed from staff")
