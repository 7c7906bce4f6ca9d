"""Decide: what a threaded message does to its ticket (SPEC §2, §6). Pure.

`decide()` takes plain data (the parsed message, the envelope, the thread,
a view of the ticket, who the sender is, the clock) and returns a
`Decision`: open / append / ignore, the field changes, and the notices to
send. `apply.py` carries it out in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from maild.addresses import is_own
from maild.config import Settings
from maild.parse import Parsed, detect_language
from maild.strip import strip_reply
from maild.thread import Thread, subject_tag_pattern

STATES = ("nueva", "en_curso", "cerrada")
PRIORITIES = ("baja", "normal", "alta", "urgente")

STATE_LABELS = {
    "nueva": {"es": "Nueva", "pt": "Aberta", "en": "Open"},
    "en_curso": {"es": "En curso", "pt": "Em curso", "en": "In progress"},
    "cerrada": {"es": "Cerrada", "pt": "Fechada", "en": "Closed"},
}


@dataclass(frozen=True)
class TicketView:
    id: int
    state: str
    category: str
    subcategory: str
    assignee: str
    priority: str
    language: str
    requester: str
    subject: str
    watchers: frozenset[str] = frozenset()
    closed_at: dt.datetime | None = None
    entered_en_curso: bool = False


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    channel: str


@dataclass(frozen=True)
class Change:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class Notify:
    template: str  # opened | in_progress | closed | group_new | group_reply | answer
    audience: str  # requester | group | watchers


@dataclass(frozen=True)
class NewTicket:
    category: str
    subcategory: str
    assignee: str
    language: str
    subject: str
    previous_ticket_id: int | None = None


@dataclass(frozen=True)
class Decision:
    verb: str  # open | append | ignore
    kind: str = "requester"  # requester | staff | internal | notice
    ticket_id: int | None = None
    new_ticket: NewTicket | None = None
    changes: tuple[Change, ...] = ()
    note: str = ""
    notify: tuple[Notify, ...] = ()
    reason: str = ""
    author: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)
    text: str = ""  # what is stored in the journal and relayed: quoted history, signature and commands taken off
    watch: tuple[str, ...] = ()
    unwatch: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def automatic_reason(settings: Settings, parsed: Parsed, envelope: Envelope) -> str:
    """Why no notice may answer this message (RFC 3834 §2, SPEC §6), or '' when one may."""
    if parsed.auto_submitted and parsed.auto_submitted.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {parsed.auto_submitted}"
    if parsed.precedence in ("bulk", "junk", "list"):
        return f"Precedence: {parsed.precedence}"
    if parsed.list_id:
        return "List-Id present"
    if not envelope.mail_from or envelope.mail_from == "<>":
        return "null envelope sender"
    if parsed.from_addr and is_own(settings, parsed.from_addr):
        return "sent from one of maild's own addresses"
    if not parsed.from_addr:
        return "no From address"
    return ""


def clean_subject(settings: Settings, subject: str) -> str:
    """A new ticket's subject: without another ticket's tag, bounded."""
    subject = " ".join(subject_tag_pattern(settings.tickets.subject_tag).sub("", subject).split())
    return subject[:250] or "(sin asunto)"


def new_ticket_for(settings: Settings, parsed: Parsed, category: str | None, previous: int | None = None) -> NewTicket:
    cat = settings.category(category or "") or settings.category(settings.tickets.default_category)
    assert cat is not None, "config validation guarantees the default category exists"
    return NewTicket(
        category=cat.code,
        subcategory=cat.other.name.es,
        assignee=cat.group,
        language=detect_language(parsed.text, parsed.content_language, settings.tickets.default_language),
        subject=clean_subject(settings, parsed.subject),
        previous_ticket_id=previous,
    )


def decide(
    settings: Settings,
    parsed: Parsed,
    envelope: Envelope,
    thread: Thread,
    ticket: TicketView | None,
    *,
    category: str | None,
    sender_is_staff: bool,
    now: dt.datetime,
) -> Decision:
    auto = automatic_reason(settings, parsed, envelope)

    if ticket is None:
        if auto:
            # An autoresponder that threads into nothing opens nothing (SPEC §6).
            return Decision("ignore", reason=auto)
        return Decision(
            "open",
            new_ticket=new_ticket_for(settings, parsed, category),
            author=parsed.from_addr,
            notify=(Notify("opened", "requester"), Notify("group_new", "group")),
            text=parsed.text,
        )

    text = strip_reply(parsed.text, ticket.language)
    if auto:
        # Recorded on the ticket, answered by nobody.
        return Decision("append", ticket_id=ticket.id, author=parsed.from_addr, flags=frozenset({"automatic"}),
                        text=text)

    if sender_is_staff:
        decision = _staff_reply(settings, ticket, parsed, text)
    else:
        decision = replace(_requester_reply(settings, parsed, ticket, now), text=text)
    return with_state_notices(decision, ticket)


def with_state_notices(decision: Decision, ticket: TicketView) -> Decision:
    """Entering en_curso the first time sends in_progress; entering cerrada sends closed (SPEC §2)."""
    extra = []
    for change in decision.changes:
        if change.field != "state" or change.old == change.new:
            continue
        if change.new == "en_curso" and not ticket.entered_en_curso:
            extra.append(Notify("in_progress", "requester"))
        elif change.new == "cerrada":
            extra.append(Notify("closed", "requester"))
    if not extra:
        return decision
    return replace(decision, notify=(*decision.notify, *extra))


def _requester_reply(settings: Settings, parsed: Parsed, ticket: TicketView, now: dt.datetime) -> Decision:
    if ticket.state == "cerrada":
        window = dt.timedelta(days=settings.tickets.reopen_days)
        if ticket.closed_at is not None and now - ticket.closed_at > window:
            # Too late to reopen: a new consulta that names the old one (SPEC §2.3).
            return Decision(
                "open",
                new_ticket=new_ticket_for(settings, parsed, ticket.category, previous=ticket.id),
                author=parsed.from_addr,
                notify=(Notify("opened", "requester"), Notify("group_new", "group")),
            )
        return Decision(
            "append",
            ticket_id=ticket.id,
            author=parsed.from_addr,
            changes=(Change("state", "cerrada", "en_curso"),),
            note="Reabierta por respuesta del solicitante",
            notify=(Notify("group_reply", "group"),),
        )
    return Decision(
        "append", ticket_id=ticket.id, author=parsed.from_addr, notify=(Notify("group_reply", "group"),)
    )


def _staff_reply(settings: Settings, ticket: TicketView, parsed: Parsed, text: str) -> Decision:
    from maild.commands import resolve, split

    commands, answer = split(text)
    outcome = resolve(settings, ticket, commands)
    if outcome.errors:
        # All or nothing: nothing changes, nothing is relayed; the message is kept as an
        # internal note and its author is told which line is wrong and what is valid.
        return Decision(
            "append", kind="internal", ticket_id=ticket.id, author=parsed.from_addr, text=text,
            note="Órdenes rechazadas: " + " | ".join(outcome.errors), errors=outcome.errors,
            notify=(Notify("command_error", "sender"),),
        )
    changes = outcome.changes
    if answer and not outcome.internal and not outcome.explicit_state and ticket.state == "nueva":
        changes = (*changes, Change("state", "nueva", "en_curso"))
    notify: list[Notify] = []
    if outcome.internal:
        notify.append(Notify("group_reply", "group"))
    elif answer:
        notify.append(Notify("answer", "requester"))
    return Decision(
        "append",
        kind="internal" if outcome.internal else "staff",
        ticket_id=ticket.id,
        author=parsed.from_addr,
        changes=changes,
        notify=tuple(notify),
        text=answer,
        note="Nota interna" if outcome.internal else "",
        watch=outcome.watch,
        unwatch=outcome.unwatch,
        flags=frozenset({"internal"}) if outcome.internal else frozenset(),
    )
