"""Tickets as plain data (the JSON of SPEC §8) and the journal as sentences, in es/pt/en."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session, select

from maild.decide import STATE_LABELS
from maild.storage import repo
from maild.storage.models import Attachment, Contact, Ticket

FIELD_LABELS = {
    "state": {"es": "Estado", "pt": "Estado", "en": "State"},
    "category": {"es": "Categoría", "pt": "Categoria", "en": "Category"},
    "subcategory": {"es": "Subcategoría", "pt": "Subcategoria", "en": "Subcategory"},
    "assignee": {"es": "Grupo asignado", "pt": "Grupo atribuído", "en": "Assignee"},
    "priority": {"es": "Prioridad", "pt": "Prioridade", "en": "Priority"},
    "language": {"es": "Idioma", "pt": "Idioma", "en": "Language"},
}
_FEMININE = {"category", "subcategory", "priority"}  # es/pt participles agree: "Prioridad cambiada"
_CHANGED = {"es": "{f} cambiad{o} de {old} a {new}", "pt": "{f} alterad{o} de {old} para {new}",
            "en": "{f} changed from {old} to {new}"}
_SET = {"es": "{f}: {new}", "pt": "{f}: {new}", "en": "{f}: {new}"}


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _value(field: str, value: object, lang: str) -> str:
    if value is None or value == "":
        return "—"
    if field == "state" and value in STATE_LABELS:
        return STATE_LABELS[value][lang]
    return str(value)


def change_sentence(change: dict, lang: str = "es") -> str:
    field = change.get("field", "")
    label = FIELD_LABELS.get(field, {}).get(lang, field)
    old, new = _value(field, change.get("old"), lang), _value(field, change.get("new"), lang)
    template = _SET[lang] if change.get("old") is None else _CHANGED[lang]
    return template.format(f=label, old=old, new=new, o="a" if field in _FEMININE else "o")


def requester_of(session: Session, ticket: Ticket) -> str:
    c = session.get(Contact, ticket.requester_id)
    return c.address if c else ""


def ticket_summary(session: Session, t: Ticket) -> dict:
    return {
        "id": t.id,
        "state": t.state,
        "subject": t.subject,
        "category": t.category,
        "subcategory": t.subcategory,
        "assignee": t.assignee,
        "priority": t.priority,
        "language": t.language,
        "requester": requester_of(session, t),
        "watchers": repo.watchers(session, t.id),
        "created_at": iso(t.created_at),
        "closed_at": iso(t.closed_at),
        "previous_ticket": t.previous_ticket_id,
    }


def ticket_detail(session: Session, t: Ticket, lang: str = "es") -> dict:
    data = ticket_summary(session, t)
    messages = []
    for m in repo.ticket_messages(session, t.id):
        atts = session.exec(select(Attachment).where(Attachment.message_id == m.id)).all()
        messages.append({
            "message_id": m.message_id,
            "direction": m.direction,
            "kind": m.kind,
            "from": m.from_addr,
            "to": m.to_addrs,
            "subject": m.subject,
            "text": m.text,
            "at": iso(m.created_at),
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
                 "dropped": a.dropped or None}
                for a in atts
            ],
        })
    data["messages"] = messages
    data["journal"] = [
        {
            "at": iso(j.at),
            "author": j.author,
            "changes": [{"field": c.get("field"), "old": c.get("old"), "new": c.get("new")} for c in j.changes],
            "note": j.note,
            "text": [change_sentence(c, lang) for c in j.changes],
        }
        for j in repo.ticket_journal(session, t.id)
    ]
    return data
