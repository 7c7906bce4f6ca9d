"""Two processors on one database (two instances, or maild serve's worker and another instance):
a reply whose parent the other one holds waits for it, instead of opening a second ticket."""

from __future__ import annotations

import time

from sqlmodel import Session, select

from maild.process import PARENT_RETRY_SECONDS, Processor
from maild.storage import repo
from maild.storage.db import transaction
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import InboxItem, Message, Ticket
from tests.conftest import make_mail


def test_a_reply_waits_for_its_parent_held_by_another_instance(settings, engine):
    parent = make_mail(message_id="p@cliente.es", subject="Consulta", frm="ana@cliente.es")
    reply = make_mail(message_id="r@cliente.es", subject="Re: Consulta", frm="ana@cliente.es",
                      in_reply_to="<p@cliente.es>", references="<p@cliente.es>", body="Y otra cosa.")
    store_now(engine, [inbox_row(parent, "smtp", "ana@cliente.es", ["consultas@example.org"]),
                       inbox_row(reply, "smtp", "ana@cliente.es", ["consultas@example.org"])])
    a, b = Processor(settings, engine), Processor(settings, engine)
    a.instance, b.instance = "instance-a", "instance-b"
    with transaction(engine) as s:
        (held,) = repo.claim_inbox(s, 1, settings.limits.max_attempts, a.instance)  # A took the parent
    assert held.message_id == "p@cliente.es"

    assert b.run_batch() == 1  # B takes the reply while A still holds the parent
    with Session(engine) as s:
        r = s.exec(select(InboxItem).where(InboxItem.message_id == "r@cliente.es")).one()
        assert (r.state, r.attempts, r.claimed_by) == ("new", 0, "")
        assert "waiting for the message it answers" in r.error
        assert s.exec(select(Ticket)).all() == []  # no ticket opened for the reply alone

    with transaction(engine) as s:  # A processes its parent
        a._staff, a._bouncing = repo.active_staff_map(s), repo.bouncing_addresses(s)
        a._process_guarded(s, s.get(InboxItem, held.id))
    time.sleep(PARENT_RETRY_SECONDS + 0.1)
    assert b.run_batch() == 1
    with Session(engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 1
        stored = {m.message_id: m.ticket_id for m in s.exec(select(Message).where(Message.direction == "in"))}
        assert stored == {"p@cliente.es": 1, "r@cliente.es": 1}


def test_a_parent_claimed_by_an_instance_that_never_comes_back_stops_the_wait(settings, engine, monkeypatch):
    import maild.process as process

    monkeypatch.setattr(process, "PARENT_WAIT_SECONDS", 0.0)
    store_now(engine, [
        inbox_row(make_mail(message_id="p2@cliente.es", frm="ana@cliente.es"), "smtp", "ana@cliente.es",
                  ["consultas@example.org"]),
        inbox_row(make_mail(message_id="r2@cliente.es", frm="ana@cliente.es", in_reply_to="<p2@cliente.es>"),
                  "smtp", "ana@cliente.es", ["consultas@example.org"]),
    ])
    with transaction(engine) as s:
        repo.claim_inbox(s, 1, settings.limits.max_attempts, "gone-instance")
    b = Processor(settings, engine)
    assert b.run_batch() == 1
    with Session(engine) as s:  # past the wait, the reply is threaded as it stands (a ticket of its own)
        r = s.exec(select(InboxItem).where(InboxItem.message_id == "r2@cliente.es")).one()
        assert r.state == "done" and len(s.exec(select(Ticket)).all()) == 1
