"""End to end through the running daemon: smtplib → maild's SMTP listener → capture smarthost."""

from __future__ import annotations

import datetime as dt
import re

from sqlmodel import Session, select

from maild.addresses import classify, reply_address
from maild.storage.models import InboxItem, Journal, Message, OutboxItem, Staff, Ticket
from tests.conftest import make_mail, send, wait_until

REQ = "ana@cliente.es"


def tickets(engine) -> list[Ticket]:
    with Session(engine) as s:
        return list(s.exec(select(Ticket).order_by(Ticket.id)))


def add_staff(engine, address="tec@example.org", group="SOPORTE DE TECNOLOGÍA"):
    with Session(engine) as s:
        s.add(Staff(address=address, name="Técnico", group=group))
        s.commit()


async def open_ticket(daemon, capture, **kw) -> tuple[Ticket, object]:
    mid = kw.pop("message_id", None) or f"c{len(capture.messages)}-{id(kw)}@cliente.es"
    await send(daemon.smtp_port, make_mail(message_id=mid, **kw), rcpts=[kw.get("to", "consultas@example.org")])
    frm = re.search(r"<(.+)>", kw.get("frm", "<ana@cliente.es>")).group(1)
    await capture.wait_for(lambda c: any(m.msg["In-Reply-To"] == f"<{mid}>" for m in c.to(frm, "opened")))
    notice = next(m for m in capture.to(frm, "opened") if m.msg["In-Reply-To"] == f"<{mid}>")
    ticket_id = int(notice.msg["X-Maild-Ticket"])
    t = next(t for t in tickets(daemon.engine) if t.id == ticket_id)
    return t, notice


async def test_consulta_gets_opened_notice_with_the_headers_of_spec(settings, engine, daemon, capture):
    add_staff(engine, "drim1@example.org", "DRIM")
    t, notice = await open_ticket(daemon, capture, message_id="first@cliente.es")
    msg = notice.msg
    assert t.state == "nueva" and t.category == "01" and t.assignee == "DRIM" and t.priority == "normal"
    assert t.subcategory == "(...) Otras cuestiones"
    assert notice.rcpt_tos == [REQ]
    assert msg["From"] == "DRIM - OMIE <no-reply@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Reply-To"] == reply_address(settings, t.id)
    assert msg["In-Reply-To"] == "<first@cliente.es>"
    assert "<first@cliente.es>" in msg["References"]
    assert re.fullmatch(r"<[^@<>]+@example\.org>", msg["Message-ID"])
    assert msg["Subject"].startswith(f"[OMIE #{t.id}] ")
    assert f"{t.id}" in notice.body()
    # VERP envelope sender naming that outbox row
    local = classify(settings, notice.mail_from)
    assert local is not None and local.kind == "bounce"
    with Session(engine) as s:
        assert s.get(OutboxItem, local.number).recipient == REQ
    # the group's staff get the ticket, threaded under the consulta
    await capture.wait_for(lambda c: c.to("drim1@example.org", "group_new"))
    copy = capture.to("drim1@example.org", "group_new")[0]
    assert copy.msg["Reply-To"] == reply_address(settings, t.id)
    assert "no puedo acceder" in copy.body()
    # every outgoing message has its own Message-ID
    assert copy.msg["Message-ID"] != msg["Message-ID"]


async def test_plus_address_opens_in_its_category(engine, daemon, capture):
    t, _ = await open_ticket(daemon, capture, to="consultas+04@example.org")
    assert (t.category, t.assignee) == ("04", "SOPORTE DE TECNOLOGÍA")
    assert t.subcategory == "(...) Otras cuestiones de tecnología"


async def test_language_of_notice_follows_the_requester(engine, daemon, capture):
    _, notice = await open_ticket(daemon, capture, frm="Rui <rui@cliente.pt>",
                                  body="Bom dia, não consigo aceder à plataforma. Obrigado.")
    assert "Recebemos a sua consulta" in notice.body()


async def test_reply_by_references_threads_and_reaches_the_group(engine, daemon, capture):
    add_staff(engine, "drim1@example.org", "DRIM")
    t, notice = await open_ticket(daemon, capture, message_id="q1@cliente.es")
    reply = make_mail(subject="Re: otra cosa", message_id="q2@cliente.es", in_reply_to=notice.msg["Message-ID"],
                      references=f"<q1@cliente.es> {notice.msg['Message-ID']}", body="Adjunto más datos.")
    await send(daemon.smtp_port, reply)
    await capture.wait_for(lambda c: c.to("drim1@example.org", "group_reply"))
    assert len(tickets(engine)) == 1
    fwd = capture.to("drim1@example.org", "group_reply")[0]
    assert "Adjunto más datos." in fwd.body()
    assert fwd.msg["In-Reply-To"] == "<q2@cliente.es>"


async def test_reply_by_signed_address_alone(settings, engine, daemon, capture):
    t, _ = await open_ticket(daemon, capture)
    addr = reply_address(settings, t.id)
    await send(daemon.smtp_port, make_mail(to=addr, subject="nada que ver", message_id="solo@cliente.es"),
               rcpts=[addr])
    await wait_until(lambda: _message(engine, "solo@cliente.es"))
    assert _message(engine, "solo@cliente.es").ticket_id == t.id
    assert len(tickets(engine)) == 1


async def test_subject_tag_threads_from_requester_but_not_from_a_stranger(engine, daemon, capture):
    t, _ = await open_ticket(daemon, capture)
    await send(daemon.smtp_port, make_mail(subject=f"[OMIE #{t.id}] más", message_id="tag1@cliente.es"))
    await wait_until(lambda: _message(engine, "tag1@cliente.es"))
    assert _message(engine, "tag1@cliente.es").ticket_id == t.id
    await send(daemon.smtp_port, make_mail(frm="Eve <eve@malo.com>", subject=f"[OMIE #{t.id}] hola",
                                           message_id="eve@malo.com"), mail_from="eve@malo.com")
    await wait_until(lambda: _message(engine, "eve@malo.com"))
    stranger = _message(engine, "eve@malo.com")
    assert stranger.ticket_id != t.id
    assert len(tickets(engine)) == 2
    # the stranger got their own opened notice, and nothing of Ana's ticket reached them
    await capture.wait_for(lambda c: c.to("eve@malo.com", "opened"))
    assert all(f"#{t.id}]" not in m.msg["Subject"] for m in capture.to("eve@malo.com"))


async def test_tampered_signature_threads_nothing(settings, engine, daemon, capture):
    t, _ = await open_ticket(daemon, capture)
    forged = reply_address(settings, t.id).replace(f"+t{t.id}.", f"+t{t.id}.x")
    await send(daemon.smtp_port, make_mail(to=forged, subject="hola", message_id="forged@cliente.es"),
               rcpts=[forged])
    await wait_until(lambda: _message(engine, "forged@cliente.es"))
    assert _message(engine, "forged@cliente.es").ticket_id != t.id


async def test_duplicate_delivery_is_stored_once(engine, daemon, capture):
    raw = make_mail(message_id="dup@cliente.es")
    await send(daemon.smtp_port, raw)
    await send(daemon.smtp_port, raw)
    await capture.wait_for(lambda c: c.to(REQ, "opened"))
    await wait_until(lambda: _inbox_done(engine))
    with Session(engine) as s:
        assert len(s.exec(select(Message).where(Message.message_id == "dup@cliente.es")).all()) == 1
        assert len(s.exec(select(InboxItem)).all()) == 1
    assert len(tickets(engine)) == 1
    assert len(capture.to(REQ, "opened")) == 1


async def test_reply_after_reopen_window_opens_new_ticket_naming_old(settings, engine, daemon, capture):
    t, notice = await open_ticket(daemon, capture, message_id="old@cliente.es")
    _close(engine, t.id, days_ago=settings.tickets.reopen_days + 1)
    await send(daemon.smtp_port, make_mail(in_reply_to=notice.msg["Message-ID"], message_id="late@cliente.es",
                                           subject="Re: vuelvo"))
    await capture.wait_for(lambda c: any(m.msg["In-Reply-To"] == "<late@cliente.es>" for m in c.to(REQ, "opened")))
    new = tickets(engine)[-1]
    assert new.id != t.id and new.previous_ticket_id == t.id and new.state == "nueva"
    assert tickets(engine)[0].state == "cerrada"
    with Session(engine) as s:
        notes = [j.note for j in s.exec(select(Journal).where(Journal.ticket_id == new.id))]
    assert any(f"consulta {t.id}" in n for n in notes)
    late_notice = next(m for m in capture.to(REQ, "opened") if m.msg["In-Reply-To"] == "<late@cliente.es>")
    assert str(t.id) in late_notice.body()


async def test_reply_within_reopen_window_reopens(settings, engine, daemon, capture):
    t, notice = await open_ticket(daemon, capture)
    _close(engine, t.id, days_ago=1)
    await send(daemon.smtp_port, make_mail(in_reply_to=notice.msg["Message-ID"], message_id="back@cliente.es"))
    await wait_until(lambda: _message(engine, "back@cliente.es"))
    assert [x.state for x in tickets(engine)] == ["en_curso"]
    with Session(engine) as s:
        changes = [j.changes for j in s.exec(select(Journal).where(Journal.ticket_id == t.id).order_by(Journal.id))
                   if j.changes]
    assert changes[-1] == [{"field": "state", "old": "cerrada", "new": "en_curso"}]


async def test_autoreply_to_nothing_is_ignored_and_visible(engine, daemon, capture):
    await send(daemon.smtp_port, make_mail(message_id="ooo@cliente.es", extra={"Auto-Submitted": "auto-replied"}))
    await wait_until(lambda: _inbox_state(engine, "ooo@cliente.es") == "ignored")
    assert tickets(engine) == []


def _close(engine, ticket_id: int, days_ago: int) -> None:
    with Session(engine) as s:
        t = s.get(Ticket, ticket_id)
        t.state, t.closed_at = "cerrada", dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
        s.add(t)
        s.commit()


def _message(engine, message_id: str) -> Message | None:
    with Session(engine) as s:
        return s.exec(select(Message).where(Message.message_id == message_id, Message.direction == "in")).first()


def _inbox_state(engine, message_id: str) -> str | None:
    with Session(engine) as s:
        item = s.exec(select(InboxItem).where(InboxItem.message_id == message_id)).first()
        return item.state if item else None


def _inbox_done(engine) -> bool:
    with Session(engine) as s:
        return all(i.state == "done" for i in s.exec(select(InboxItem)))
