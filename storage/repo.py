"""Repository: the queries maild runs, in one place, on a caller's session."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, func, or_, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from maild.storage.models import (
    Blob,
    Contact,
    InboxItem,
    Journal,
    Message,
    OutboxItem,
    Staff,
    Ticket,
    Watcher,
    utcnow,
)

# -- inbox -----------------------------------------------------------------


def insert_inbox(conn: Connection, rows: Sequence[dict]) -> None:
    """Insert received messages; one already there (same dedup key) is kept once (SPEC §3)."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(InboxItem.__table__).on_conflict_do_nothing(index_elements=["dedup_key"])
    conn.execute(stmt, list(rows))


def claim_inbox(session: Session, limit: int, max_attempts: int, instance: str = "") -> list[InboxItem]:
    """Take up to `limit` new rows for this process (SKIP LOCKED lets several instances share the queue)."""
    stmt = (
        select(InboxItem)
        .where(InboxItem.state == "new", InboxItem.attempts < max_attempts, InboxItem.next_attempt_at <= utcnow())
        .order_by(col(InboxItem.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    items = list(session.exec(stmt))
    now = utcnow()
    for item in items:
        item.state = "processing"
        item.claimed_at = now
        item.claimed_by = instance
        session.add(item)
    return items


def recover_stale(session: Session, older_than: dt.timedelta = dt.timedelta(0)) -> int:
    """Rows left 'processing' by a crash go back to 'new' (restart recovery)."""
    cutoff = utcnow() - older_than
    result = session.execute(
        update(InboxItem)
        .where(col(InboxItem.state) == "processing", col(InboxItem.claimed_at) <= cutoff)
        .values(state="new", claimed_by="")
    )
    return result.rowcount or 0


def unprocessed_parents(session: Session, message_ids: Iterable[str], exclude_id: int) -> list[InboxItem]:
    """Inbox rows not yet processed that carry one of these Message-IDs (a reply overtook its parent)."""
    ids = [i for i in message_ids if i]
    if not ids:
        return []
    stmt = (
        select(InboxItem)
        .where(col(InboxItem.message_id).in_(ids), col(InboxItem.state).in_(("new", "processing")),
               InboxItem.id != exclude_id)
        .order_by(col(InboxItem.id))
        .with_for_update(skip_locked=True)
    )
    return list(session.exec(stmt))


def parents_in_process_elsewhere(session: Session, message_ids: Iterable[str], exclude_id: int,
                                 instance: str) -> bool:
    """Is a message with one of these Message-IDs in the inbox and claimed, or locked, by someone else?"""
    ids = [i for i in message_ids if i]
    if not ids:
        return False
    stmt = (
        select(func.count()).select_from(InboxItem)
        .where(col(InboxItem.message_id).in_(ids), col(InboxItem.state).in_(("new", "processing")),
               InboxItem.id != exclude_id, InboxItem.claimed_by != instance)
    )
    return session.exec(stmt).one() > 0


def pending_inbox_count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(InboxItem).where(InboxItem.state == "new")).one()


# -- threading candidates ---------------------------------------------------


def tickets_for_message_ids(session: Session, ids: Iterable[str]) -> dict[str, int]:
    ids = [i for i in ids if i]
    if not ids:
        return {}
    rows = session.exec(select(Message.message_id, Message.ticket_id).where(col(Message.message_id).in_(ids)))
    return {mid: tid for mid, tid in rows}


def thread_ids_and_duplicate(session: Session, own_id: str, thread_ids: Iterable[str]) -> tuple[dict[str, int], bool]:
    """One query: which of `thread_ids` maild has stored (-> ticket), and is `own_id` already stored inbound?"""
    wanted = [i for i in (own_id, *thread_ids) if i]
    if not wanted:
        return {}, False
    rows = session.exec(
        select(Message.message_id, Message.ticket_id, Message.direction).where(col(Message.message_id).in_(wanted))
    )
    known: dict[str, int] = {}
    duplicate = False
    for mid, tid, direction in rows:
        if mid == own_id and direction == "in":
            duplicate = True
        known.setdefault(mid, tid)
    return {k: v for k, v in known.items() if k in thread_ids}, duplicate


def watchers(session: Session, ticket_id: int) -> list[str]:
    return list(session.exec(select(Watcher.address).where(Watcher.ticket_id == ticket_id).order_by(Watcher.address)))


# -- people ----------------------------------------------------------------


def contact(session: Session, address: str, name: str = "") -> Contact:
    found = session.exec(select(Contact).where(Contact.address == address)).first()
    if found is None:
        found = Contact(address=address, name=name)
        session.add(found)
        session.flush()
    elif name and not found.name:
        found.name = name
    return found


def clear_bounce(session: Session, address: str) -> None:
    if address:
        session.execute(update(Contact).where(col(Contact.address) == address, col(Contact.bounce) != "")
                        .values(bounce=""))


def mark_bounce(session: Session, address: str, kind: str) -> None:
    """kind: permanent | transient. A transient failure never softens a permanent one."""
    found = session.exec(select(Contact).where(Contact.address == address)).first()
    if found is None:
        return  # not someone maild writes to on its own (staff, a group address)
    if kind == "permanent" or found.bounce != "permanent":
        found.bounce = kind
        session.add(found)


def tickets_opened_since(session: Session, address: str, since: dt.datetime) -> int:
    stmt = (select(func.count()).select_from(Ticket).join(Contact, Contact.id == Ticket.requester_id)
            .where(Contact.address == address, col(Ticket.created_at) >= since))
    return session.exec(stmt).one()


def notice_times(session: Session, kinds: Sequence[str], since: dt.datetime, *, recipient: str | None = None,
                 ticket_id: int | None = None) -> list[dt.datetime]:
    """When each notice (one per Message-ID) went out since `since`, to a recipient or on a ticket."""
    stmt = select(OutboxItem.message_id, func.min(OutboxItem.created_at)).where(
        col(OutboxItem.kind).in_(kinds), col(OutboxItem.created_at) >= since).group_by(OutboxItem.message_id)
    if recipient is not None:
        stmt = stmt.where(OutboxItem.recipient == recipient)
    if ticket_id is not None:
        stmt = stmt.where(OutboxItem.ticket_id == ticket_id)
    return [t for _, t in session.exec(stmt)]


def bouncing_addresses(session: Session) -> set[str]:
    return set(session.exec(select(Contact.address).where(Contact.bounce != "")))


def try_job_lock(session: Session, name: str) -> bool:
    """PostgreSQL: one instance runs a scheduled job at a time (lock held until the transaction ends)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = int.from_bytes(hashlib.sha256(f"maild-job:{name}".encode()).digest()[:8], "big") >> 1
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())


def waiting_on_requester(session: Session, before: dt.datetime) -> list[tuple[Ticket, Message]]:
    """en_curso tickets whose last person-written message is staff's, written before `before`."""
    out = []
    for ticket in session.exec(select(Ticket).where(Ticket.state == "en_curso", col(Ticket.updated_at) < before)):
        last = session.exec(select(Message).where(Message.ticket_id == ticket.id,
                                                  col(Message.kind).in_(("requester", "staff")))
                            .order_by(col(Message.id).desc()).limit(1)).first()
        if last is not None and last.kind == "staff" and last.created_at < before:
            out.append((ticket, last))
    return out


def active_staff_map(session: Session) -> dict[str, Staff]:
    return {s.address: s for s in session.exec(select(Staff).where(Staff.active == True))}  # noqa: E712


def active_staff(session: Session, address: str) -> Staff | None:
    return session.exec(select(Staff).where(Staff.address == address, Staff.active == True)).first()  # noqa: E712


def group_members(session: Session, group: str) -> list[str]:
    from maild.config import fold

    rows = session.exec(select(Staff).where(Staff.active == True).order_by(Staff.address))  # noqa: E712
    return [s.address for s in rows if fold(s.group) == fold(group)]


# -- attachments -----------------------------------------------------------


def store_blob(session: Session, sha256: str, data: bytes) -> None:
    if session.get(Blob, sha256) is None:
        session.add(Blob(sha256=sha256, size=len(data), data=data))


# -- outbox ----------------------------------------------------------------


def due_outbox(session: Session, limit: int, now: dt.datetime) -> list[OutboxItem]:
    stmt = (
        select(OutboxItem)
        .where(OutboxItem.state == "queued", OutboxItem.next_attempt_at <= now)
        .order_by(col(OutboxItem.next_attempt_at), col(OutboxItem.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.exec(stmt))


def next_outbox_due(session: Session) -> dt.datetime | None:
    return session.exec(select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.state == "queued")).one()


# -- listings --------------------------------------------------------------


def list_tickets(
    session: Session,
    *,
    state: str | None = None,
    category: str | None = None,
    closed_since: dt.datetime | None = None,
    requester: str | None = None,
    assignee: str | None = None,
    limit: int = 1000,
) -> list[Ticket]:
    stmt = select(Ticket).order_by(col(Ticket.id).desc()).limit(limit)
    if state:
        stmt = stmt.where(Ticket.state == state)
    if category:
        stmt = stmt.where(Ticket.category == category)
    if closed_since:
        stmt = stmt.where(Ticket.closed_at != None, col(Ticket.closed_at) >= closed_since)  # noqa: E711
    if requester:
        stmt = stmt.join(Contact, Contact.id == Ticket.requester_id).where(Contact.address == requester.lower())
    if assignee:
        stmt = stmt.where(or_(Ticket.assignee == assignee))
    return list(session.exec(stmt))


def ticket_messages(session: Session, ticket_id: int) -> list[Message]:
    return list(session.exec(select(Message).where(Message.ticket_id == ticket_id).order_by(col(Message.id))))


def ticket_journal(session: Session, ticket_id: int) -> list[Journal]:
    return list(session.exec(select(Journal).where(Journal.ticket_id == ticket_id).order_by(col(Journal.id))))
