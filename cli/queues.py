"""`maild inbox list|retry` and `maild outbox list|retry`."""

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
from maild.storage.models import InboxItem, OutboxItem, utcnow

inbox_app = new_app("Received messages not yet processed, and the quarantine.")
outbox_app = new_app("The outgoing queue.")

INBOX_STATES = ("new", "processing", "done", "ignored", "quarantined")


@inbox_app.command("list")
def inbox_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="new, processing, done, ignored or quarantined")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include done messages")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Messages not done yet (new, processing, ignored, quarantined); --all for every one."""
    settings = settings_from(ctx, need_secret=False)
    if state is not None and state not in INBOX_STATES:
        raise UserError(f"--state {state!r}: expected one of {', '.join(INBOX_STATES)}")
    stmt = select(InboxItem).order_by(col(InboxItem.id))
    if state:
        stmt = stmt.where(InboxItem.state == state)
    elif not all_:
        stmt = stmt.where(InboxItem.state != "done")
    with transaction(engine_from(settings)) as session:
        rows = [
            {"id": i.id, "message_id": i.message_id, "channel": i.channel, "state": i.state, "attempts": i.attempts,
             "error": i.error, "received_at": iso(i.received_at), "ticket_id": i.ticket_id}
            for i in session.exec(stmt)
        ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(rows)} inbox message(s)")
    for c in ("id", "state", "channel", "attempts", "message_id", "error"):
        table.add_column(c)
    for r in rows:
        table.add_row(str(r["id"]), r["state"], r["channel"], str(r["attempts"]), r["message_id"], r["error"])
    Console().print(table)


@inbox_app.command("retry")
def inbox_retry(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every quarantined message")] = False,
) -> None:
    """Put quarantined (or ignored) messages back in the queue, with their attempts reset."""
    settings = settings_from(ctx, need_secret=False)
    if not ids and not all_:
        raise UserError("name the inbox ids to retry, or pass --all")
    with transaction(engine_from(settings)) as session:
        stmt = select(InboxItem).where(col(InboxItem.state).in_(("quarantined", "ignored")))
        if not all_:
            stmt = stmt.where(col(InboxItem.id).in_(ids or []))
        items = list(session.exec(stmt))
        if ids and not all_ and len(items) != len(set(ids)):
            missing = sorted(set(ids) - {i.id for i in items})
            raise UserError(f"inbox {', '.join(map(str, missing))}: not quarantined or ignored (see 'maild inbox list')")
        for i in items:
            i.state, i.attempts, i.error, i.next_attempt_at = "new", 0, "", utcnow()
            session.add(i)
    typer.echo(f"{len(items)} message(s) queued again")


@outbox_app.command("list")
def outbox_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="queued, sent or failed")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The outgoing queue (queued and failed unless --state says otherwise)."""
    settings = settings_from(ctx, need_secret=False)
    if state is not None and state not in ("queued", "sent", "failed"):
        raise UserError(f"--state {state!r}: expected queued, sent or failed")
    stmt = select(OutboxItem).order_by(col(OutboxItem.id))
    stmt = stmt.where(OutboxItem.state == state) if state else stmt.where(OutboxItem.state != "sent")
    with transaction(engine_from(settings)) as session:
        rows = [
            {"id": o.id, "ticket_id": o.ticket_id, "kind": o.kind, "recipient": o.recipient, "state": o.state,
             "attempts": o.attempts, "next_attempt_at": iso(o.next_attempt_at), "last_error": o.last_error,
             "message_id": o.message_id, "created_at": iso(o.created_at), "sent_at": iso(o.sent_at)}
            for o in session.exec(stmt)
        ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(rows)} outgoing message(s)")
    for c in ("id", "ticket", "kind", "recipient", "state", "attempts", "next attempt", "last error"):
        table.add_column(c)
    for r in rows:
        table.add_row(str(r["id"]), str(r["ticket_id"]), r["kind"], r["recipient"], r["state"], str(r["attempts"]),
                      (r["next_attempt_at"] or "")[:19], r["last_error"])
    Console().print(table)


@outbox_app.command("retry")
def outbox_retry(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every failed or queued message")] = False,
) -> None:
    """Send failed or waiting messages now (a running daemon picks them up)."""
    settings = settings_from(ctx, need_secret=False)
    if not ids and not all_:
        raise UserError("name the outbox ids to retry, or pass --all")
    with transaction(engine_from(settings)) as session:
        stmt = select(OutboxItem).where(col(OutboxItem.state).in_(("queued", "failed")))
        if not all_:
            stmt = stmt.where(col(OutboxItem.id).in_(ids or []))
        items = list(session.exec(stmt))
        if ids and not all_ and len(items) != len(set(ids)):
            missing = sorted(set(ids) - {i.id for i in items})
            raise UserError(f"outbox {', '.join(map(str, missing))}: not queued or failed (see 'maild outbox list')")
        now = utcnow()
        for o in items:
            o.state, o.next_attempt_at = "queued", now
            session.add(o)
    typer.echo(f"{len(items)} message(s) will be sent again")
