"""`maild tickets list|show`."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from maild.cli.main import JsonOpt, engine_from, new_app, settings_from
from maild.decide import STATE_LABELS, STATES
from maild.errors import UserError
from maild.report import change_sentence, ticket_detail, ticket_summary
from maild.storage import repo
from maild.storage.db import transaction
from maild.storage.models import Ticket, utcnow

app = new_app("Look at tickets.")

_DURATION = re.compile(r"^(\d+)([dhw])$")


def parse_duration(value: str) -> dt.timedelta:
    match = _DURATION.match(value.strip())
    if not match:
        raise UserError(f"--closed-within {value!r}: expected a number and a unit, e.g. 30d, 12h or 2w")
    n, unit = int(match.group(1)), match.group(2)
    return {"d": dt.timedelta(days=n), "h": dt.timedelta(hours=n), "w": dt.timedelta(weeks=n)}[unit]


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="nueva, en_curso or cerrada")] = None,
    category: Annotated[str | None, typer.Option(help="category code, e.g. 04")] = None,
    closed_within: Annotated[str | None, typer.Option("--closed-within", help="e.g. 30d")] = None,
    requester: Annotated[str | None, typer.Option(help="requester address")] = None,
    assignee: Annotated[str | None, typer.Option(help="assigned group")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tickets, newest first."""
    settings = settings_from(ctx, need_secret=False)
    if state is not None and state not in STATES:
        raise UserError(f"--state {state!r}: expected one of {', '.join(STATES)}")
    if category is not None and settings.category(category) is None:
        raise UserError(f"--category {category!r}: expected one of {', '.join(c.code for c in settings.categories)}")
    since = utcnow() - parse_duration(closed_within) if closed_within else None
    group = None
    if assignee is not None:
        g = settings.group(assignee)
        if g is None:
            raise UserError(f"--assignee {assignee!r}: expected one of {', '.join(x.name for x in settings.groups)}")
        group = g.name
    with transaction(engine_from(settings)) as session:
        tickets = repo.list_tickets(session, state=state, category=category, closed_since=since,
                                    requester=requester, assignee=group)
        rows = [ticket_summary(session, t) for t in tickets]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(rows)} ticket(s)")
    for col in ("ID", "State", "Cat.", "Assignee", "Prio.", "Requester", "Subject", "Created"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), STATE_LABELS[r["state"]]["es"], r["category"], r["assignee"], r["priority"],
                      r["requester"], r["subject"], (r["created_at"] or "")[:16].replace("T", " "))
    Console().print(table)


@app.command()
def show(
    ctx: typer.Context,
    ticket_id: Annotated[int, typer.Argument(metavar="ID")],
    lang: Annotated[str, typer.Option("--lang", help="language of the journal: es, pt or en")] = "es",
    as_json: JsonOpt = False,
) -> None:
    """Show one ticket, its messages and its journal."""
    settings = settings_from(ctx, need_secret=False)
    if lang not in ("es", "pt", "en"):
        raise UserError(f"--lang {lang!r}: expected es, pt or en")
    with transaction(engine_from(settings)) as session:
        ticket = session.get(Ticket, ticket_id)
        if ticket is None:
            raise UserError(f"no ticket {ticket_id}: see 'maild tickets list'")
        data = ticket_detail(session, ticket, lang)
    if as_json:
        for j in data["journal"]:
            j.pop("text", None)
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    console = Console()
    console.print(f"[bold]#{data['id']}[/bold] {data['subject']}", markup=True, highlight=False)
    head = Table.grid(padding=(0, 2))
    for key in ("state", "category", "subcategory", "assignee", "priority", "language", "requester", "watchers",
                "created_at", "closed_at"):
        value = data[key]
        if key == "state":
            value = STATE_LABELS[value][lang]
        head.add_row(key, ", ".join(value) if isinstance(value, list) else str(value or "—"))
    console.print(head)
    msgs = Table(title="messages")
    for col in ("at", "dir", "kind", "from", "text"):
        msgs.add_column(col)
    for m in data["messages"]:
        text = m["text"] if len(m["text"]) < 400 else m["text"][:400] + "…"
        msgs.add_row((m["at"] or "")[:16].replace("T", " "), m["direction"], m["kind"], m["from"], text)
    console.print(msgs)
    journal = Table(title="journal")
    for col in ("at", "author", "change"):
        journal.add_column(col)
    for j in data["journal"]:
        lines = [change_sentence(c, lang) for c in j["changes"]] + ([j["note"]] if j["note"] else [])
        journal.add_row((j["at"] or "")[:16].replace("T", " "), j["author"], "\n".join(lines))
    console.print(journal)


@app.command()
def apply(
    ctx: typer.Context,
    ticket_id: Annotated[int, typer.Argument(metavar="ID")],
    text: Annotated[str, typer.Argument(help="commands, one per line, then an optional answer, e.g. '#close'")],
    as_: Annotated[str, typer.Option("--as", help="the staff member it is done as (journaled as them)")],
) -> None:
    """Run staff commands on a ticket, as staff would by mail: '#close', '#assign DRIM', …"""
    from maild.process import Processor

    settings = settings_from(ctx)
    decision = Processor(settings, engine_from(settings)).operator_command(ticket_id, text.replace("\\n", "\n"),
                                                                            as_)
    changes = ", ".join(f"{c.field}: {c.old} → {c.new}" for c in decision.changes) or "no field changed"
    sent = ", ".join(n.template for n in decision.notify) or "nothing"
    typer.echo(f"ticket {ticket_id}: {changes}; queued: {sent}")
