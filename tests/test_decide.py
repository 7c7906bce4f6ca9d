"""Decide is a pure function over plain data."""

import datetime as dt

from maild.decide import Envelope, TicketView, decide
from maild.parse import parse
from maild.thread import Thread
from tests.conftest import make_mail

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
ENV = Envelope("ana@cliente.es", ("consultas@example.org",), "smtp")


def view(**kw) -> TicketView:
    base = dict(id=7, state="en_curso", category="01", subcategory="(...) Otras cuestiones", assignee="DRIM",
                priority="normal", language="es", requester="ana@cliente.es", subject="x")
    base.update(kw)
    return TicketView(**base)


def run(settings, raw, ticket=None, staff=False, category=None, env=ENV):
    p = parse(raw)
    th = Thread(ticket.id if ticket else None, "message-id" if ticket else "new")
    return decide(settings, p, env, th, ticket, category=category, sender_is_staff=staff, now=NOW)


def test_new_consulta_opens_in_category_with_its_group_and_other_subcategory(settings):
    d = run(settings, make_mail(), category="04")
    assert d.verb == "open"
    assert d.new_ticket.category == "04"
    assert d.new_ticket.assignee == "SOPORTE DE TECNOLOGÍA"
    assert d.new_ticket.subcategory == "(...) Otras cuestiones de tecnología"
    assert d.new_ticket.language == "es"
    assert [n.template for n in d.notify] == ["opened", "group_new"]


def test_default_category_and_language_detection(settings):
    d = run(settings, make_mail(body="Bom dia, não consigo aceder à plataforma. Obrigado pela ajuda."))
    assert d.new_ticket.category == "01" and d.new_ticket.language == "pt"
    d = run(settings, make_mail(body="Hello, I cannot log in to the platform, could you help me please?"))
    assert d.new_ticket.language == "en"
    d = run(settings, make_mail(body="Hola", extra={"Content-Language": "en-GB"}))
    assert d.new_ticket.language == "en"


def test_requester_reply_is_appended_and_forwarded_to_group(settings):
    d = run(settings, make_mail(), ticket=view())
    assert (d.verb, d.ticket_id, d.changes) == ("append", 7, ())
    assert [(n.template, n.audience) for n in d.notify] == [("group_reply", "group")]


def test_reply_to_closed_ticket_reopens_within_window(settings):
    closed = view(state="cerrada", closed_at=NOW - dt.timedelta(days=29), entered_en_curso=True)
    d = run(settings, make_mail(), ticket=closed)
    assert d.verb == "append"
    assert [(c.field, c.old, c.new) for c in d.changes] == [("state", "cerrada", "en_curso")]
    assert "in_progress" not in [n.template for n in d.notify]


def test_reply_after_window_opens_new_ticket_naming_old(settings):
    closed = view(state="cerrada", closed_at=NOW - dt.timedelta(days=31), category="04")
    d = run(settings, make_mail(), ticket=closed)
    assert d.verb == "open"
    assert d.new_ticket.previous_ticket_id == 7
    assert d.new_ticket.category == "04"


def test_staff_reply_moves_nueva_to_en_curso_and_sends_in_progress_once(settings):
    d = run(settings, make_mail(frm="tec@example.org"), ticket=view(state="nueva"), staff=True)
    assert d.kind == "staff"
    assert [(c.field, c.new) for c in d.changes] == [("state", "en_curso")]
    assert [n.template for n in d.notify] == ["answer", "in_progress"]
    d = run(settings, make_mail(frm="tec@example.org"), ticket=view(state="en_curso", entered_en_curso=True),
            staff=True)
    assert [n.template for n in d.notify] == ["answer"]


def test_autoresponder_opens_nothing_but_is_recorded_on_its_ticket(settings):
    auto = make_mail(extra={"Auto-Submitted": "auto-replied"})
    assert run(settings, auto).verb == "ignore"
    d = run(settings, auto, ticket=view())
    assert d.verb == "append" and d.notify == ()
    for extra in ({"Precedence": "bulk"}, {"List-Id": "<x.lists.example>"}):
        assert run(settings, make_mail(extra=extra)).verb == "ignore"
    assert run(settings, make_mail(), env=Envelope("", ("consultas@example.org",), "smtp")).verb == "ignore"
    assert run(settings, make_mail(frm="no-reply@example.org")).verb == "ignore"
    assert run(settings, make_mail(extra={"Auto-Submitted": "no"})).verb == "open"
