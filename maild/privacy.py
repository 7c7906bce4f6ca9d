"""A requester's data: everything held about them (export), or its erasure (forget).

Forgetting erases the address, the name, the bodies and raw bytes of every
message of their tickets (both ways: answers quote them), their attachments,
and the copies in the inbox and outbox; it keeps the tickets' anonymous facts
(state, category, dates) for statistics and journals the erasure. SQLite runs
with `secure_delete` on, and the WAL is checkpointed after, so no byte of
what was erased stays in the database file; PostgreSQL vacuums the tables.
"""

from __future__ import annotations

import base64
import datetime as dt

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from maild.errors import UserError
from maild.report import iso, ticket_detail
from maild.storage.db import transaction
from maild.storage.models import (
    Attachment,
    Blob,
    Contact,
    InboxItem,
    Journal,
    Message,
    OutboxItem,
    Ticket,
    Watcher,
    utcnow,
)

FORGOTTEN = "[olvidado]"


def _contact(session: Session, address: str) -> Contact | None:
    return session.exec(select(Contact).where(Contact.address == address.strip().lower())).first()


def export(engine: Engine, address: str) -> dict:
    address = address.strip().lower()
    with Session(engine) as session:
        contact = _contact(session, address)
        tickets = list(session.exec(select(Ticket).where(Ticket.requester_id == contact.id))) if contact else []
        watching = list(session.exec(select(Watcher.ticket_id).where(Watcher.address == address)))
        if contact is None and not watching:
            raise UserError(f"nothing is held about {address}")
        data = {
            "address": address,
            "name": contact.name if contact else "",
            "language": contact.language if contact else "",
            "bounce": contact.bounce if contact else "",
            "first_seen": iso(contact.created_at) if contact else None,
            "watching": watching,
            "tickets": [],
        }
        for t in tickets:
            detail = ticket_detail(session, t)
            for m, row in zip(detail["messages"], session.exec(
                    select(Message).where(Message.ticket_id == t.id).order_by(col(Message.id))), strict=True):
                m["raw"] = base64.b64encode(row.raw).decode() if row.raw else None
                for att in m["attachments"]:
                    blob = session.get(Blob, att["sha256"]) if att["sha256"] else None
                    att["data"] = base64.b64encode(blob.data).decode() if blob else None
            data["tickets"].append(detail)
        return data


def forget(engine: Engine, address: str, *, now: dt.datetime | None = None) -> dict:
    address = address.strip().lower()
    needle = address.encode()
    now = now or utcnow()
    with transaction(engine) as session:
        contact = _contact(session, address)
        if contact is None:
            raise UserError(f"nothing is held about {address}")
        tickets = list(session.exec(select(Ticket).where(Ticket.requester_id == contact.id)))
        ticket_ids = {t.id for t in tickets}
        messages = list(session.exec(select(Message).where(
            col(Message.ticket_id).in_(ticket_ids) | (Message.from_addr == address))))
        hashes: set[str] = set()
        for m in messages:
            for att in session.exec(select(Attachment).where(Attachment.message_id == m.id)):
                if att.sha256:
                    hashes.add(att.sha256)
                session.delete(att)
            m.text = m.html = m.subject = ""
            m.raw = None
            m.to_addrs = []
            if m.from_addr == address:
                m.from_addr = FORGOTTEN
            session.add(m)
        message_ids = {m.message_id for m in messages}
        for t in tickets:
            t.subject = FORGOTTEN
            t.references, t.last_inbound_message_id = [], ""
            session.add(t)
        # Journal lines that name the person.
        for j in session.exec(select(Journal).where(col(Journal.ticket_id).in_(ticket_ids)
                                                    | (Journal.author == address))):
            if j.author == address:
                j.author = FORGOTTEN
            j.note = j.note.replace(address, FORGOTTEN)
            session.add(j)
        for w in session.exec(select(Watcher).where(Watcher.address == address)):
            session.delete(w)
        # The raw copies: inbox rows of those tickets or messages, or that carry the address anywhere.
        inbox = 0
        for item in session.exec(select(InboxItem)).yield_per(200):
            if item.ticket_id in ticket_ids or item.message_id in message_ids or needle in item.raw.lower() \
                    or (item.mail_from or "").lower() == address:
                item.raw, item.mail_from, item.rcpt_tos, item.error = b"", "", [], item.error.replace(address, "")
                session.add(item)
                inbox += 1
        outbox = 0
        for row in session.exec(select(OutboxItem).where(col(OutboxItem.ticket_id).in_(ticket_ids)
                                                         | (OutboxItem.recipient == address))):
            row.raw, row.last_error = b"", ""
            if row.recipient == address:
                row.recipient = FORGOTTEN
            session.add(row)
            outbox += 1
        session.flush()
        blobs = 0
        for sha in hashes:
            still = session.exec(select(Attachment.id).where(Attachment.sha256 == sha).limit(1)).first()
            if still is None:
                blob = session.get(Blob, sha)
                if blob is not None:
                    session.delete(blob)
                    blobs += 1
        contact.address = f"forgotten-{contact.id}@invalid"
        contact.name, contact.bounce = "", ""
        session.add(contact)
        for t in tickets:
            session.add(Journal(ticket_id=t.id, at=now, author="operator",
                                note="Datos personales del solicitante borrados (maild contacts forget)"))
        report = {"tickets": len(tickets), "messages": len(messages), "inbox": inbox, "outbox": outbox,
                  "attachments": len(hashes), "blobs_deleted": blobs}
    _purge(engine)
    return report


def _purge(engine: Engine) -> None:
    """Make erased bytes unrecoverable from the database files."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ("message", "inbox", "outbox", "blob", "attachment", "contact", "journal", "ticket"):
                conn.execute(text(f'VACUUM "{table}"'))
