"""Thread: which ticket a message belongs to (SPEC §3). Pure.

The repository fetches the candidates first (`Candidates`); this module only
chooses, in the spec's order, so it is tested without a database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from maild.addresses import classify
from maild.config import Settings
from maild.parse import Parsed


@dataclass(frozen=True)
class TaggedTicket:
    """The ticket a subject tag names, with who may use the tag."""

    id: int
    requester: str
    watchers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidates:
    known_ids: Mapping[str, int] = field(default_factory=dict)  # stored Message-ID -> ticket id
    tagged: TaggedTicket | None = None
    sender_is_staff: bool = False


@dataclass(frozen=True)
class Thread:
    ticket_id: int | None
    rule: str  # signed | message-id | subject | new


def subject_tag_pattern(tag: str) -> re.Pattern[str]:
    return re.compile(r"\[\s*" + re.escape(tag) + r"\s*#\s*(\d{1,12})\s*\]", re.IGNORECASE)


def tagged_ticket_id(settings: Settings, subject: str) -> int | None:
    match = subject_tag_pattern(settings.tickets.subject_tag).search(subject)
    return int(match.group(1)) if match else None


def addressed_to(parsed: Parsed, rcpt_tos: Iterable[str]) -> list[str]:
    """Every address the message was sent to: envelope first, then To, Cc, Delivered-To."""
    out: list[str] = []
    for addr in (*(a.lower() for a in rcpt_tos), *parsed.to, *parsed.cc, *parsed.delivered_to):
        if addr not in out:
            out.append(addr)
    return out


def signed_ticket(settings: Settings, addresses: Iterable[str]) -> int | None:
    for addr in addresses:
        local = classify(settings, addr)
        if local is not None and local.kind == "ticket":
            return local.number
    return None


def thread(settings: Settings, parsed: Parsed, rcpt_tos: Iterable[str], cand: Candidates) -> Thread:
    # 1. Signed reply address (To, Cc, Delivered-To or the envelope recipient).
    ticket_id = signed_ticket(settings, addressed_to(parsed, rcpt_tos))
    if ticket_id is not None:
        return Thread(ticket_id, "signed")
    # 2. Message-ID chain: the most specific id maild has stored.
    for mid in parsed.thread_ids:
        if mid in cand.known_ids:
            return Thread(cand.known_ids[mid], "message-id")
    # 3. Subject tag, honoured only from the requester, a watcher or staff.
    tagged = cand.tagged
    if tagged is not None and tagged.id == tagged_ticket_id(settings, parsed.subject):
        sender = parsed.from_addr
        if sender and (sender == tagged.requester or sender in tagged.watchers or cand.sender_is_staff):
            return Thread(tagged.id, "subject")
    # 4. Otherwise a new ticket.
    return Thread(None, "new")
