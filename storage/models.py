"""Tables. Times are aware UTC datetimes (SQLModel's UTCDateTime stores them portably)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Contact(SQLModel, table=True):
    """A requester or watcher address. `bounce` is '', 'transient' or 'permanent'."""

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(index=True, unique=True)
    name: str = ""
    language: str = ""
    bounce: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)


class Staff(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(index=True, unique=True)
    name: str
    group: str
    active: bool = True
    created_at: dt.datetime = Field(default_factory=utcnow)


class Ticket(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    subject: str
    state: str = Field(default="nueva", index=True)
    category: str = Field(index=True)
    subcategory: str
    assignee: str
    priority: str = "normal"
    language: str
    requester_id: int = Field(foreign_key="contact.id", index=True)
    previous_ticket_id: int | None = None
    created_at: dt.datetime = Field(default_factory=utcnow, index=True)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    closed_at: dt.datetime | None = None
    first_response_at: dt.datetime | None = None
    in_progress_at: dt.datetime | None = None  # first time it entered en_curso (the in_progress notice went then)
    # Message-IDs of the requester's last message, so what we send threads under it.
    last_inbound_message_id: str = ""
    references: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Watcher(SQLModel, table=True):
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True)
    address: str = Field(primary_key=True)


class Message(SQLModel, table=True):
    """Every message of a ticket, both ways. Inbound ones keep their raw bytes."""

    __table_args__ = (Index("ix_message_message_id", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    message_id: str
    direction: str  # in | out
    kind: str  # requester | staff | internal | notice
    from_addr: str
    to_addrs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subject: str = ""
    text: str = ""
    html: str = ""
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    inbox_id: int | None = None
    template: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)


class Blob(SQLModel, table=True):
    """Attachment content, stored once under its SHA-256, never under the sender's name."""

    sha256: str = Field(primary_key=True)
    size: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    filename: str  # sanitised, for display only
    content_type: str
    size: int
    sha256: str | None = None  # None when the part was dropped (too big)
    dropped: str = ""


class Journal(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    at: dt.datetime = Field(default_factory=utcnow)
    author: str
    changes: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    note: str = ""


class InboxItem(SQLModel, table=True):
    """A received message, committed before the sender is told yes (SPEC §6).

    state: new | processing | done | ignored | quarantined
    """

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("dedup_key", name="uq_inbox_dedup_key"),)

    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str
    message_id: str = Field(default="", index=True)
    channel: str  # smtp | lmtp | imap | pipe
    mail_from: str | None = None  # "" is the null sender <>; None: not known (IMAP without Return-Path)
    rcpt_tos: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: str = Field(default="new", index=True)
    attempts: int = 0
    error: str = ""
    ticket_id: int | None = None
    received_at: dt.datetime = Field(default_factory=utcnow)
    claimed_at: dt.datetime | None = None
    claimed_by: str = ""  # the instance processing it: a row is only processed by its claimant
    next_attempt_at: dt.datetime = Field(default_factory=utcnow)  # after a failure: backoff
    processed_at: dt.datetime | None = None


class OutboxItem(SQLModel, table=True):
    """One message to one recipient, so a VERP bounce names both (SPEC §6).

    state: queued | sent | failed
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        Index("ix_outbox_recipient_created", "recipient", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, index=True)
    kind: str  # opened | in_progress | closed | group_copy | answer | ...
    recipient: str
    message_id: str
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: str = "queued"
    attempts: int = 0
    next_attempt_at: dt.datetime = Field(default_factory=utcnow)
    last_error: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)
    sent_at: dt.datetime | None = None


class ImapState(SQLModel, table=True):
    """The last UIDVALIDITY seen per mailbox, so a change is noticed and logged."""

    __tablename__ = "imap_state"

    mailbox: str = Field(primary_key=True)
    uidvalidity: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow)


class Article(SQLModel, table=True):
    """One language version of a knowledge-base article, loaded by `maild kb sync`."""

    __table_args__ = (UniqueConstraint("slug", "language", name="uq_article_slug_language"),)

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True)
    language: str
    category: str = Field(index=True)
    subcategory: str
    title: str
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    body: str  # Markdown, as written; rendered and sanitised when shown
    search_text: str = ""  # title and body folded (no case, no accents), for full-text search
    source: str = ""  # the file it came from, relative to the synced directory
    checksum: str = ""
    updated_at: dt.datetime = Field(default_factory=utcnow)
