"""Process: inbox rows in, tickets + outbox rows out, one transaction per batch.

This is the synchronous worker the daemon runs in a thread: claim new inbox
rows, then for each one parse → thread → decide → apply inside a SAVEPOINT,
so a message that fails rolls back alone, is counted and retried, and after
`limits.max_attempts` is quarantined (SPEC §6), never dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session, select

from maild import addresses, logs
from maild.auth import DnsFunc, authenticate
from maild.bounce import Bounce, read_bounce
from maild.compose import Attachment as OutAttachment
from maild.compose import compose, new_message_id, parsed_reference_chain, tagged_subject
from maild.config import Settings, fold
from maild.decide import (
    STATE_LABELS,
    Change,
    Decision,
    Envelope,
    NewTicket,
    Notify,
    TicketView,
    decide,
    with_state_notices,
)
from maild.errors import QuarantineError, RejectError, UserError
from maild.metrics import Metrics
from maild.parse import Parsed, parse
from maild.render import Renderer
from maild.storage import repo
from maild.storage.db import gate as db_gate
from maild.storage.db import transaction
from maild.storage.models import (
    Attachment,
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
from maild.thread import Candidates, TaggedTicket, addressed_to, tagged_ticket_id, thread

log = logging.getLogger(__name__)

# A reply whose parent another instance is processing waits for it: tried again after this, for at
# most PARENT_WAIT_SECONDS after it was received (then it is threaded as it stands).
PARENT_RETRY_SECONDS = 0.5
PARENT_WAIT_SECONDS = 120.0


class _WaitForParent(Exception):
    pass


# How long the processor keeps SQLite's write lock while the outbox sender waits for it (a receiver
# waiting to say 250 gets it after the message in hand).
WRITE_SLICE_SECONDS = 0.05

FIELDS = ("state", "category", "subcategory", "assignee", "priority", "language")


class Processor:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        renderer: Renderer | None = None,
        *,
        dnsfunc: DnsFunc | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.engine = engine
        self.renderer = renderer or Renderer()
        self.dnsfunc = dnsfunc
        self.clock = clock
        self._claimed: set[int] = set()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._parsed: dict[int, Parsed | Exception] = {}
        self._staff: dict[str, Staff] = {}
        self._bouncing: set[str] = set()
        # Are receivers busy? (SMTP transactions open.) Then pause between messages: see run_batch.
        self.receivers_busy: Callable[[], bool] = lambda: False
        self.yielded = 0  # pauses taken (for the bench and the tests)

    # -- the queue ------------------------------------------------------------
    def run_batch(self, limit: int = 64) -> int:
        """Process up to `limit` new inbox rows; returns how many were taken."""
        with transaction(self.engine) as session:
            claimed = repo.claim_inbox(session, limit, self.settings.limits.max_attempts, self.instance)
            ids = [i.id for i in claimed]
            raws = {i.id: i.raw for i in claimed}
        if not ids:
            return 0
        self._claimed = set(ids)
        # Parsing is pure and the costliest step: do it before taking the write lock.
        self._parsed = {}
        for item_id, raw in raws.items():
            try:
                self._parsed[item_id] = parse(raw, self.settings.limits.max_parts)
            except RejectError as exc:
                self._parsed[item_id] = exc
        del raws
        with transaction(self.engine) as session:
            self._staff = repo.active_staff_map(session)
            self._bouncing = repo.bouncing_addresses(session)
        todo = list(ids)
        gate = db_gate(self.engine)
        while todo:
            # autoflush off: each message's SAVEPOINT release flushes, and apply() flushes where it reads back.
            with transaction(self.engine, autoflush=False) as session:
                began = time.monotonic()
                while todo:
                    item = session.get(InboxItem, todo.pop(0), with_for_update=True)
                    # Ours still? (not already taken as an overtaken parent, not recovered from us after
                    # a stall and re-claimed by another instance)
                    if item is not None and item.state == "processing" and item.claimed_by == self.instance:
                        self._process_guarded(session, item)
                    if gate.urgent > 0 or (gate.waiting > 0 and time.monotonic() - began > WRITE_SLICE_SECONDS):
                        break  # a receiver waits to commit: let it now; the sender, after a slice
                    if todo and self._should_yield():
                        break
            if todo and self._should_yield():
                # Receivers first: with the write lock released and the GIL free, a burst is taken at
                # the protocol's speed; one message per pause still moves, so nothing starves.
                self.yielded += 1
                time.sleep(self.settings.limits.processor_yield_ms / 1000)
        return len(ids)

    def warm_up(self) -> None:
        """Import, compile and build what the first message would (parser, reply stripper, templates,
        composer) before the listener opens, not in the middle of the first burst."""
        from maild.strip import strip_reply

        sample = (b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: x\r\nMessage-ID: <w@example.org>\r\n"
                  b"Content-Type: text/plain; charset=utf-8\r\n\r\nHola\r\n\r\nOn Mon, A <a@example.org> wrote:\r\n> x\r\n")
        parsed = parse(sample, self.settings.limits.max_parts)
        for lang in ("es", "pt", "en"):
            strip_reply(parsed.text, lang)
        for name in self.renderer.env.list_templates(filter_func=lambda n: n.startswith("mail/")):
            self.renderer.env.get_template(name)
        compose(from_name="maild", from_addr=self.settings.mail.noreply_address, to="b@example.org", subject="x",
                body="x", message_id=new_message_id(self.settings))

    def rehearse(self) -> None:
        """SQLite: process a made-up consulta in a transaction that is then rolled back.

        The first real message would otherwise pay SQLAlchemy's first-use work (statement
        compilation, mapper set-up) while holding SQLite's one write lock, and a receiver
        waits behind it. Rolled back, it leaves nothing (SQLite reuses the row ids); on
        PostgreSQL it would spend ticket numbers, and there is no single writer to protect.
        """
        if self.engine.dialect.name != "sqlite":
            return
        from maild.storage.inbox import inbox_row

        class _Rehearsal(Exception):
            pass

        sender = "rehearsal@maild.invalid"
        raw = (f"From: {sender}\r\nTo: {self.settings.mail.support_address}\r\nSubject: maild rehearsal\r\n"
               f"Message-ID: <{new_message_id(self.settings)}>\r\n\r\nHola, una consulta de prueba.\r\n").encode()
        logging.disable(logging.INFO)  # its "ticket opened" is not news (the worker has no other thread yet)
        try:
            with transaction(self.engine, autoflush=False) as session:
                item = InboxItem(**inbox_row(raw, "smtp", sender, [self.settings.mail.support_address]))
                item.state, item.claimed_by = "processing", self.instance
                session.add(item)
                session.flush()
                self._staff = repo.active_staff_map(session)
                self._bouncing = repo.bouncing_addresses(session)
                self._process_guarded(session, item)
                raise _Rehearsal
        except _Rehearsal:
            pass
        except Exception as exc:  # a rehearsal is an optimisation: never a reason not to start
            log.warning("rehearsal skipped: %s", exc)
        finally:
            logging.disable(logging.NOTSET)

    def _should_yield(self) -> bool:
        return self.settings.limits.processor_yield_ms > 0 and self.receivers_busy()

    def _process_guarded(self, session: Session, item: InboxItem) -> None:
        with logs.context(inbox=item.id, message_id=item.message_id):
            try:
                with session.begin_nested():
                    self.process(session, item)
            except _WaitForParent as wait:
                # Not a failure: back in the queue shortly, no attempt counted.
                item.state, item.claimed_by, item.error = "new", "", str(wait)
                item.next_attempt_at = self.clock() + dt.timedelta(seconds=PARENT_RETRY_SECONDS)
                log.info("inbox %s waits for the message it answers, in process elsewhere", item.id)
            except Exception as exc:
                self._failed(session, item, exc)
            session.add(item)

    def _failed(self, session: Session, item: InboxItem, exc: Exception) -> None:
        item.attempts += 1
        item.error = f"{type(exc).__name__}: {exc}"[:2000]
        permanent = isinstance(exc, RejectError)
        if permanent or item.attempts >= self.settings.limits.max_attempts:
            item.state = "quarantined"
            self.metrics.quarantined.inc()
            log.error("inbox %s quarantined after %d attempt(s): %s", item.id, item.attempts, item.error)
        else:
            item.state = "new"
            delay = self.settings.limits.retry_base_seconds * 2 ** (item.attempts - 1)
            item.next_attempt_at = self.clock() + dt.timedelta(seconds=delay)
            self.metrics.processed.labels("failed").inc()
            log.warning("inbox %s failed (attempt %d), will retry: %s", item.id, item.attempts, item.error)
        if not permanent:
            log.debug("inbox %s failure", item.id, exc_info=exc)

    # -- one message ------------------------------------------------------------
    def process(self, session: Session, item: InboxItem) -> None:
        settings = self.settings
        parsed = self._parsed.pop(item.id, None) or parse(item.raw, settings.limits.max_parts)
        if isinstance(parsed, Exception):
            raise parsed
        now = self.clock()
        item.processed_at = now
        known, duplicate = repo.thread_ids_and_duplicate(session, parsed.message_id, parsed.thread_ids)
        if duplicate:
            item.state, item.error = "done", "duplicate: this Message-ID is already stored"
            return
        verdict = spam_verdict(settings, parsed)
        if verdict:
            raise QuarantineError(f"upstream spam verdict ({verdict})")
        bounce = read_bounce(settings, parsed, item.mail_from, addressed_to(parsed, item.rcpt_tos))
        if bounce is not None:
            self._bounce(session, item, parsed, bounce, now)
            return

        envelope = Envelope(item.mail_from, tuple(item.rcpt_tos), item.channel)
        sender_is_staff = False
        if parsed.from_addr in self._staff:
            verdict = authenticate(settings, parsed, self.dnsfunc)
            sender_is_staff = verdict.ok
            if not verdict.ok:
                self.metrics.forged_staff.inc()
                log.warning(
                    "message %s claims staff From %s but fails authentication (%s): treated as a requester's",
                    parsed.message_id, parsed.from_addr, verdict.reason,
                )

        tagged_id = tagged_ticket_id(settings, parsed.subject)
        tagged = None
        if tagged_id is not None:
            t = session.get(Ticket, tagged_id)
            if t is not None:
                requester = self._requester(session, t)
                tagged = TaggedTicket(t.id, requester, frozenset(repo.watchers(session, t.id)))
        if parsed.thread_ids and not known:
            # Over parallel connections a reply can be committed before the message it
            # answers: process that parent first, so the reply threads instead of splitting.
            parents = [p for p in repo.unprocessed_parents(session, parsed.thread_ids, item.id)
                       if p.state == "new" or p.id in self._claimed]  # never another instance's row
            for parent in parents:
                parent.state = "processing"
                self._process_guarded(session, parent)
            if parents:
                known = repo.tickets_for_message_ids(session, parsed.thread_ids)
            if not known and now - item.received_at < dt.timedelta(seconds=PARENT_WAIT_SECONDS) \
                    and repo.parents_in_process_elsewhere(session, parsed.thread_ids, item.id, self.instance):
                # Another instance (or worker) holds the message this one answers: threading now would
                # open a second ticket for one conversation. Wait for it, within reason.
                raise _WaitForParent("waiting for the message it answers (in process by another instance)")
        cand = Candidates(known, tagged, sender_is_staff)
        th = thread(settings, parsed, item.rcpt_tos, cand)
        ticket = session.get(Ticket, th.ticket_id) if th.ticket_id is not None else None
        logs.bind(ticket=th.ticket_id)

        category = None
        for addr in addressed_to(parsed, item.rcpt_tos):
            local = addresses.classify(settings, addr)
            if local is not None and local.kind == "category":
                category = local.category
                break

        view = self._view(session, ticket) if ticket is not None else None
        decision = decide(
            settings, parsed, envelope, th, view, category=category, sender_is_staff=sender_is_staff, now=now
        )
        self.apply(session, item, parsed, decision, now)

    def _requester(self, session: Session, ticket: Ticket) -> str:
        c = session.get(Contact, ticket.requester_id)
        return c.address if c else ""

    def _person(self, session: Session, address: str) -> str:
        """'Name <address>' for the group's copies, the name as the person's mail client gave it."""
        c = session.exec(select(Contact).where(Contact.address == address)).first()
        return f"{c.name} <{address}>" if c is not None and c.name else address

    def _view(self, session: Session, t: Ticket) -> TicketView:
        return TicketView(
            id=t.id, state=t.state, category=t.category, subcategory=t.subcategory, assignee=t.assignee,
            priority=t.priority, language=t.language, requester=self._requester(session, t), subject=t.subject,
            watchers=frozenset(repo.watchers(session, t.id)), closed_at=t.closed_at, entered_en_curso=t.in_progress_at is not None,
        )

    # -- apply ------------------------------------------------------------------
    def apply(self, session: Session, item: InboxItem | None, parsed: Parsed, d: Decision,
              now: dt.datetime) -> Ticket | None:
        if d.verb == "ignore":
            if item is not None:
                item.state, item.error = "ignored", d.reason
            self.metrics.processed.labels("ignored").inc()
            log.info("message %s ignored: %s", parsed.message_id, d.reason)
            return None

        if d.kind == "requester" and "automatic" not in d.flags and parsed.from_addr in self._bouncing:
            repo.clear_bounce(session, parsed.from_addr)  # it writes again: notices may go to it again
            self._bouncing.discard(parsed.from_addr)
        if d.verb == "open":
            assert d.new_ticket is not None
            recent = repo.tickets_opened_since(session, parsed.from_addr, now - dt.timedelta(hours=1))
            if recent >= self.settings.limits.new_tickets_per_hour:
                self.metrics.held.inc()
                raise QuarantineError(
                    f"{parsed.from_addr} opened {recent} tickets in the last hour "
                    f"(limits.new_tickets_per_hour = {self.settings.limits.new_tickets_per_hour})"
                )
            ticket = self._open(session, parsed, d.new_ticket, now)
        else:
            ticket = session.get(Ticket, d.ticket_id)
            assert ticket is not None

        text = d.text
        message = Message(
            ticket_id=ticket.id, message_id=parsed.message_id or new_message_id(self.settings),
            direction="in", kind=d.kind, from_addr=parsed.from_addr, to_addrs=list(parsed.to),
            subject=parsed.subject, text=text, html=parsed.html, raw=parsed.raw or None, inbox_id=item.id if item else None,
            created_at=now,
        )
        session.add(message)
        session.flush()
        dropped = self._attachments(session, message, parsed)

        self._change(session, ticket, d.changes, d.author or parsed.from_addr, d.note, now)
        if d.watch or d.unwatch:
            self._watchers(session, ticket, d, now)
        if dropped:
            session.add(Journal(ticket_id=ticket.id, at=now, author="maild",
                                note="Adjuntos descartados por tamaño: " + ", ".join(dropped)))
        if d.kind in ("requester",) and "automatic" not in d.flags:
            if d.verb != "open" and parsed.from_name:
                repo.contact(session, parsed.from_addr, parsed.from_name)  # a name first given in a reply
            ticket.last_inbound_message_id = message.message_id
            ticket.references = list(parsed_reference_chain(parsed))[-20:]
        if d.kind == "staff" and ticket.first_response_at is None:
            ticket.first_response_at = now
        ticket.updated_at = now
        session.add(ticket)
        session.flush()

        for notify in d.notify:
            self._notify(session, ticket, notify, message, dropped, d, now)

        self.metrics.processed.labels("done").inc()
        if item is not None:
            item.state, item.ticket_id, item.error = "done", ticket.id, ""
            self.metrics.latency.observe(max(0.0, (now - item.received_at).total_seconds()))
        return ticket

    def _open(self, session: Session, parsed: Parsed, new: NewTicket, now: dt.datetime) -> Ticket:
        requester = repo.contact(session, parsed.from_addr, parsed.from_name)
        if not requester.language:
            requester.language = new.language
        ticket = Ticket(
            subject=new.subject, state="nueva", category=new.category, subcategory=new.subcategory,
            assignee=new.assignee, priority="normal", language=requester.language or new.language,
            requester_id=requester.id, previous_ticket_id=new.previous_ticket_id, created_at=now, updated_at=now,
        )
        session.add(ticket)
        session.flush()
        logs.bind(ticket=ticket.id)
        note = "Consulta recibida"
        if new.previous_ticket_id:
            note += f"; continúa la consulta {new.previous_ticket_id}"
        changes = [
            {"field": f, "old": None, "new": getattr(ticket, f)} for f in FIELDS
        ]
        session.add(Journal(ticket_id=ticket.id, at=now, author=parsed.from_addr, changes=changes, note=note))
        self.metrics.processed.labels("opened").inc()
        log.info("ticket %s opened from %s (message %s)", ticket.id, parsed.from_addr, parsed.message_id)
        return ticket

    def _change(self, session: Session, ticket: Ticket, changes: tuple[Change, ...], author: str, note: str,
                now: dt.datetime) -> None:
        applied = []
        for ch in changes:
            old = getattr(ticket, ch.field)
            if old == ch.new:
                continue
            setattr(ticket, ch.field, ch.new)
            applied.append({"field": ch.field, "old": old, "new": ch.new})
            if ch.field == "state":
                ticket.closed_at = now if ch.new == "cerrada" else None
                if ch.new == "en_curso" and ticket.in_progress_at is None:
                    ticket.in_progress_at = now
        if applied or note:
            session.add(Journal(ticket_id=ticket.id, at=now, author=author, changes=applied, note=note))

    # -- operator actions and scheduled jobs -------------------------------------------
    def operator_command(self, ticket_id: int, text: str, staff_address: str) -> Decision:
        """`maild tickets apply`: the staff command engine, run for an operator as that staff member."""
        from maild.decide import _staff_reply

        staff_address = staff_address.strip().lower()
        now = self.clock()
        with transaction(self.engine, autoflush=False) as session:
            self._staff = repo.active_staff_map(session)
            if staff_address not in self._staff:
                raise UserError(f"--as {staff_address}: not active staff (see 'maild staff list')")
            ticket = session.get(Ticket, ticket_id)
            if ticket is None:
                raise UserError(f"no ticket {ticket_id}: see 'maild tickets list'")
            parsed = Parsed(raw=b"", message_id=new_message_id(self.settings), from_addr=staff_address,
                            from_name=self._staff[staff_address].name, subject=ticket.subject, text=text)
            view = self._view(session, ticket)
            decision = with_state_notices(_staff_reply(self.settings, view, parsed, text.strip()), view)
            if decision.errors:
                raise UserError("; ".join(decision.errors))
            self.apply(session, None, parsed, decision, now)
        return decision

    def auto_close(self) -> list[int]:
        """Close en_curso tickets whose last word is staff's and older than tickets.auto_close_days."""
        days = self.settings.tickets.auto_close_days
        if days <= 0:
            return []
        now = self.clock()
        closed: list[int] = []
        with transaction(self.engine, autoflush=False) as session:
            if not repo.try_job_lock(session, "auto-close"):
                return []  # another instance is at it
            self._staff = repo.active_staff_map(session)
            for ticket, last in repo.waiting_on_requester(session, now - dt.timedelta(days=days)):
                change = Change("state", ticket.state, "cerrada")
                self._change(session, ticket, (change,), "maild",
                             f"Cerrada automáticamente: sin respuesta del solicitante en {days} días", now)
                ticket.updated_at = now
                session.add(ticket)
                session.flush()
                d = Decision("append", kind="notice", ticket_id=ticket.id, author="maild")
                self._notify(session, ticket, Notify("closed", "requester"), last, [], d, now,
                             auto_submitted="auto-generated")
                closed.append(ticket.id)
                log.info("ticket %s closed automatically after %d days waiting on the requester", ticket.id, days)
        return closed

    def _bounce(self, session: Session, item: InboxItem, parsed: Parsed, b: Bounce, now: dt.datetime) -> None:
        """Mark who bounces, journal it on the ticket, send nothing back (SPEC §6)."""
        failed: dict[str, str] = {a: "permanent" for a in b.permanent}
        failed.update({a: "transient" for a in b.temporary if a not in failed})
        ticket_ids: list[int] = []
        if b.outbox_id is not None:
            row = session.get(OutboxItem, b.outbox_id)
            if row is not None:
                # The VERP address names the recipient even when the body says nothing readable.
                failed[row.recipient] = "transient" if row.recipient in b.temporary and \
                    row.recipient not in b.permanent else "permanent"
                if row.ticket_id:
                    ticket_ids.append(row.ticket_id)
        for mid in own_message_ids(self.settings, parsed.raw):
            tid = repo.tickets_for_message_ids(session, [mid]).get(mid)
            if tid and tid not in ticket_ids:
                ticket_ids.append(tid)
        for addr, kind in failed.items():
            repo.mark_bounce(session, addr, kind)
            self._bouncing.add(addr)
        self.metrics.bounces.inc()
        what = ", ".join(f"{a} ({'permanente' if k == 'permanent' else 'temporal'})" for a, k in failed.items())
        log.info("bounce %s: %s", parsed.message_id or item.id, what or "no recipient named")
        if not ticket_ids:
            item.state, item.error = "ignored", f"bounce for no known message: {what or 'no recipient named'}"
            return
        for tid in ticket_ids:
            session.add(Journal(ticket_id=tid, at=now, author="maild", note=f"Rebote: {what}"))
        session.add(Message(
            ticket_id=ticket_ids[0], message_id=parsed.message_id or new_message_id(self.settings),
            direction="in", kind="notice", from_addr=parsed.from_addr, to_addrs=list(parsed.to),
            subject=parsed.subject, text=parsed.text[:20000], raw=parsed.raw, inbox_id=item.id, created_at=now,
        ))
        item.state, item.ticket_id, item.error = "done", ticket_ids[0], ""

    def _watchers(self, session: Session, ticket: Ticket, d: Decision, now: dt.datetime) -> None:
        current = set(repo.watchers(session, ticket.id))
        notes = []
        for addr in d.watch:
            if addr not in current:
                session.add(Watcher(ticket_id=ticket.id, address=addr))
                current.add(addr)
                notes.append(f"Observador añadido: {addr}")
        for addr in d.unwatch:
            if addr in current:
                session.delete(session.get(Watcher, (ticket.id, addr)))
                current.discard(addr)
                notes.append(f"Observador retirado: {addr}")
        if notes:
            session.add(Journal(ticket_id=ticket.id, at=now, author=d.author, note="; ".join(notes)))
            session.flush()

    def _attachments(self, session: Session, message: Message, parsed: Parsed) -> list[str]:
        dropped = []
        stored: set[str] = set()
        limit = self.settings.limits.max_attachment_bytes
        for att in parsed.attachments:
            name = safe_filename(att.filename)
            if len(att.data) > limit:
                dropped.append(name)
                session.add(Attachment(message_id=message.id, filename=name, content_type=att.content_type,
                                       size=len(att.data), dropped=f"larger than {limit} bytes"))
                continue
            if att.sha256 not in stored:  # the same bytes twice in one message: one blob
                repo.store_blob(session, att.sha256, att.data)
                stored.add(att.sha256)
            session.add(Attachment(message_id=message.id, filename=name, content_type=att.content_type,
                                   size=len(att.data), sha256=att.sha256))
        return dropped

    # -- notices ----------------------------------------------------------------
    def _recipients(self, session: Session, ticket: Ticket, audience: str, source: Message) -> list[str]:
        if audience == "sender":
            addr = source.from_addr
            return [] if addresses.never_send_to(addr) or addresses.is_own(self.settings, addr) else [addr]
        if audience == "group":
            group = self.settings.group(ticket.assignee)
            if group is not None and group.address:
                return [group.address]
            key = fold(ticket.assignee)
            return sorted(a for a, s in self._staff.items() if fold(s.group) == key)
        requester = session.get(Contact, ticket.requester_id)
        people = [requester, *(repo.contact(session, a) for a in repo.watchers(session, ticket.id))]
        out = []
        for contact in people:
            addr = contact.address if contact else ""
            if not addr or addr in out or addresses.never_send_to(addr) or addresses.is_own(self.settings, addr):
                continue
            if contact.bounce == "permanent":
                # Held until the address writes again (SPEC §6); journaled, never silent.
                self.metrics.held.inc()
                session.add(Journal(ticket_id=ticket.id, at=self.clock(), author="maild",
                                    note=f"Aviso retenido: {addr} rebota permanentemente"))
                continue
            out.append(addr)
        return out

    def _notify(self, session: Session, ticket: Ticket, notify: Notify, source: Message, dropped: list[str],
                d: Decision, now: dt.datetime, auto_submitted: str = "auto-replied") -> None:
        settings = self.settings
        recipients = self._recipients(session, ticket, notify.audience, source)
        if notify.template in NOTICE_KINDS:
            recipients = [r for r in recipients if not self._held(session, ticket, notify.template, r, now)]
        if not recipients:
            session.add(Journal(ticket_id=ticket.id, at=now, author="maild",
                                note=f"Aviso '{notify.template}' sin destinatarios"))
            return
        lang = ticket.language if notify.audience == "requester" else settings.tickets.default_language
        cat = settings.category(ticket.category)
        group = settings.group(ticket.assignee)
        group_name = group.shown_name if group else ticket.assignee
        with_files = notify.template in ("answer", "group_new", "group_reply")
        source_atts = self._source_attachments(session, source) if with_files else []
        att_names = [a.filename for a in source_atts]
        context = dict(
            ticket=ticket, state=STATE_LABELS[ticket.state][lang], category=f"{cat.code}. {cat.name.get(lang)}"
            if cat else ticket.category, subcategory=ticket.subcategory, group=group_name,
            requester=self._requester(session, ticket), text=source.text,
            sender=self._person(session, source.from_addr) if notify.audience == "group" else source.from_addr,
            previous_ticket_id=ticket.previous_ticket_id, dropped=dropped, reopen_days=settings.tickets.reopen_days,
            note=d.note, attachments=att_names, support_address=settings.mail.support_address, errors=d.errors,
        )
        subject, body = self.renderer.mail(notify.template, lang, **context)
        subject = tagged_subject(settings, ticket.id, subject)

        kind = "notice"
        if notify.template == "answer":
            from_name, from_addr, auto = group_name, settings.mail.support_address, None
            kind = "staff"
        elif notify.audience == "group":
            from_name, from_addr, auto = f"{source.from_addr} ({settings.tickets.subject_tag} #{ticket.id})", \
                settings.mail.noreply_address, "auto-generated"
        else:
            from_name, from_addr, auto = group_name, settings.mail.noreply_address, auto_submitted

        files = self._outgoing_files(session, source_atts)
        message_id = new_message_id(settings)
        reply_to = addresses.reply_address(settings, ticket.id)
        in_reply_to = source.message_id if notify.audience in ("group", "sender") else ticket.last_inbound_message_id
        refs = tuple(ticket.references)
        for rcpt in recipients:
            raw = compose(
                from_name=from_name, from_addr=from_addr, to=rcpt, subject=subject, body=body,
                message_id=message_id, reply_to=reply_to, in_reply_to=in_reply_to, references=refs,
                auto_submitted=auto, language=lang, attachments=files,
                extra={"X-Maild-Ticket": str(ticket.id), "X-Maild-Notice": notify.template,
                       "X-Maild-Loop": settings.mail.domain},
            )
            session.add(OutboxItem(ticket_id=ticket.id, kind=notify.template, recipient=rcpt,
                                   message_id=message_id, raw=raw, created_at=now, next_attempt_at=now))
        session.add(Message(
            ticket_id=ticket.id, message_id=message_id, direction="out", kind=kind, from_addr=from_addr,
            to_addrs=recipients, subject=subject, text=body, template=notify.template, created_at=now,
        ))
        self.metrics.notices.labels(notify.template).inc(len(recipients))

    def _source_attachments(self, session: Session, source: Message) -> list[Attachment]:
        return list(session.exec(select(Attachment).where(Attachment.message_id == source.id)))

    def _held(self, session: Session, ticket: Ticket, template: str, rcpt: str, now: dt.datetime) -> bool:
        """Rate limits on notices, per recipient and per ticket, in sliding windows (SPEC §6)."""
        tiers = notice_tiers(self.settings.limits.notices_per_hour)
        widest = now - dt.timedelta(seconds=max(s for s, _ in tiers))
        # One read per scope over the widest window; the tiers are counted from it.
        recent = {
            "recipient": repo.notice_times(session, NOTICE_KINDS, widest, recipient=rcpt),
            "ticket": repo.notice_times(session, NOTICE_KINDS, widest, ticket_id=ticket.id),
        }
        for seconds, limit in tiers:
            since = now - dt.timedelta(seconds=seconds)
            for scope, times in recent.items():
                count = sum(1 for t in times if t >= since)
                if count >= limit:
                    self.metrics.held.inc()
                    window = f"{seconds // 60} min" if seconds < 3600 else f"{seconds // 3600} h"
                    note = (f"Aviso '{template}' a {rcpt} retenido: {count} avisos por {scope} en {window} "
                            f"(límite {limit}, limits.notices_per_hour)")
                    session.add(Journal(ticket_id=ticket.id, at=now, author="maild", note=note))
                    log.warning("ticket %s: %s", ticket.id, note)
                    return True
        return False

    def _outgoing_files(self, session: Session, atts: list[Attachment]) -> tuple[OutAttachment, ...]:
        files = []
        for att in atts:
            if att.sha256:
                blob = session.get(Blob, att.sha256)
                if blob is not None:
                    files.append(OutAttachment(att.filename, att.content_type, blob.data))
        return tuple(files)


def safe_filename(name: str) -> str:
    """A display name for an attachment: no path, no control characters, bounded length."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*').strip(" .")
    return (name or "attachment")[:120]


NOTICE_KINDS = ("opened", "in_progress", "closed", "command_error")


def notice_tiers(per_hour: int) -> tuple[tuple[int, int], ...]:
    """(window seconds, most notices) tiers: a burst of 10 in 10 minutes must not become 100 in an hour."""
    return ((600, max(2, -(-per_hour // 3))), (3600, per_hour), (86400, per_hour * 4))


def spam_verdict(settings: Settings, parsed: Parsed) -> str:
    """The upstream filter's verdict, when it says spam (X-Spam-Flag: YES, or a score over the threshold)."""
    sec = settings.security
    flag = parsed.headers.get(sec.spam_flag_header.lower(), "")
    if flag.strip().upper().startswith("YES"):
        return f"{sec.spam_flag_header}: {flag}"
    if sec.spam_score_threshold > 0:
        raw_score = parsed.headers.get(sec.spam_score_header.lower(), "")
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", raw_score)
        if match and float(match.group(1)) >= sec.spam_score_threshold:
            return f"{sec.spam_score_header}: {raw_score.strip()} >= {sec.spam_score_threshold}"
    return ""


def own_message_ids(settings: Settings, raw: bytes) -> list[str]:
    """Message-IDs at our domain quoted in a bounce (the returned headers name the original message)."""
    pattern = re.compile(rb"<([^<>\s@]+@" + re.escape(settings.mail.domain.encode()) + rb")>", re.IGNORECASE)
    out: list[str] = []
    for m in pattern.finditer(raw[:200_000]):
        mid = m.group(1).decode("ascii", "replace")
        if mid not in out:
            out.append(mid)
    return out[:20]
