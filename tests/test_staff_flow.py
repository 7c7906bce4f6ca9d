"""Staff work from their mail client: the portal's whole cycle, and forgeries that change nothing."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from maild.addresses import reply_address
from maild.storage.models import Journal, Message, Staff, Ticket
from tests.conftest import make_mail, send, wait_until
from tests.dkimkeys import dns_for, sign

REQ = "ana@cliente.es"


def add_staff(engine, address, group, name="Staff"):
    with Session(engine) as s:
        s.add(Staff(address=address, name=name, group=group))
        s.commit()


def ticket(engine, tid=1) -> Ticket:
    with Session(engine) as s:
        return s.get(Ticket, tid)


@pytest.fixture
async def staffed(settings, engine, capture, daemon_factory):
    add_staff(engine, "drim@example.org", "DRIM", "Dolores")
    add_staff(engine, "tec@example.org", "SOPORTE DE TECNOLOGÍA", "Tomás")
    s = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    return await daemon_factory(s, dnsfunc=dns_for("example.org", "evil.org"))


def staff_mail(settings, tid, body, frm="Dolores <drim@example.org>", in_reply_to=None, domain="example.org",
               extra=None, signed=True, mid=None):
    addr = reply_address(settings, tid)
    raw = make_mail(frm=frm, to=addr, subject=f"RE: [OMIE #{tid}] Problema", body=body, in_reply_to=in_reply_to,
                    extra=extra, message_id=mid)
    return (sign(raw, domain) if signed else raw), addr


async def test_the_portals_cycle(settings, engine, capture, staffed):
    d = staffed
    # 1. an anonymous consulta in 01
    await send(d.smtp_port, make_mail(message_id="q@cliente.es", subject="Problema con el certificado"))
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    copy = capture.to("drim@example.org", "group_new")[0]
    assert not capture.to("tec@example.org")  # 01 belongs to DRIM

    # 2. DRIM re-files it to technology and answers, from a mail client that quotes the history
    body = ("#category 04\n#subcategoria otras cuestiones de tecnologia\n#assign SOPORTE DE TECNOLOGÍA\n\n"
            "Buenos días, Ana. Instale el certificado en el navegador y vuelva a entrar.\n\n"
            "El lun, 24 nov 2026 a las 10:00, Consultas OMIE (<no-reply@example.org>) escribió:\n"
            "> Hola, no puedo acceder a la plataforma\n")
    raw, addr = staff_mail(settings, 1, body, in_reply_to=copy.msg["Message-ID"], mid="s1@example.org")
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "answer") and c.to(REQ, "in_progress"))
    answer = capture.to(REQ, "answer")[0]
    assert answer.msg["From"] == "SOPORTE DE TECNOLOGÍA <consultas@example.org>"
    assert "drim@example.org" not in answer.raw.decode("utf-8", "replace")
    assert answer.msg["Reply-To"] == reply_address(settings, 1)
    assert answer.msg["In-Reply-To"] == "<q@cliente.es>"
    assert answer.msg["Auto-Submitted"] is None  # a person's answer, not a notice
    text = answer.body()
    assert "Instale el certificado" in text
    assert "#category" not in text and "escribió" not in text and "no puedo acceder" not in text
    t = ticket(engine)
    assert (t.state, t.category, t.assignee) == ("en_curso", "04", "SOPORTE DE TECNOLOGÍA")
    assert t.subcategory == "(...) Otras cuestiones de tecnología"
    with Session(engine) as s:
        entry = s.exec(select(Journal).where(Journal.author == "drim@example.org")).one()
    assert {(c["field"], c["old"], c["new"]) for c in entry.changes} == {
        ("category", "01", "04"),
        ("subcategory", "(...) Otras cuestiones", "(...) Otras cuestiones de tecnología"),
        ("assignee", "DRIM", "SOPORTE DE TECNOLOGÍA"),
        ("state", "nueva", "en_curso"),
    }

    # 3. the requester thanks; it reaches the group the ticket is assigned to now
    await send(d.smtp_port, make_mail(body="Duda solucionada, muchas gracias.", in_reply_to=answer.msg["Message-ID"],
                                      message_id="thanks@cliente.es", subject="Re: Problema"))
    await capture.wait_for(lambda c: c.to("tec@example.org", "group_reply"))
    fwd = capture.to("tec@example.org", "group_reply")[0]
    assert "Duda solucionada, muchas gracias." in fwd.body() and "En curso" in fwd.body()

    # 4. technology closes it with a last word
    raw, addr = staff_mail(settings, 1, "#close\nPerfecto. Cerramos la consulta.", frm="Tomás <tec@example.org>",
                           in_reply_to=fwd.msg["Message-ID"])
    await send(d.smtp_port, raw, mail_from="tec@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "closed") and len(c.to(REQ, "answer")) == 2)
    last = capture.to(REQ, "answer")[1]
    assert "Perfecto. Cerramos la consulta." in last.body() and "#close" not in last.body()
    assert "Cerrada" in capture.to(REQ, "closed")[0].body()
    assert len(capture.to(REQ, "in_progress")) == 1
    t = ticket(engine)
    assert t.state == "cerrada" and t.closed_at is not None and t.first_response_at is not None


FORGERIES = {
    "no signature": dict(signed=False),
    "signed by another domain": dict(domain="evil.org"),
    "untrusted Authentication-Results": dict(
        signed=False, extra={"Authentication-Results": "mx.evil.org; dkim=pass header.d=example.org"}),
}


@pytest.mark.parametrize("case", [*FORGERIES, "body altered after signing", "trusted header below the real one"])
async def test_forged_staff_mail_changes_nothing(settings, engine, capture, staffed, case):
    d = staffed
    await send(d.smtp_port, make_mail(message_id="q@cliente.es"))
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    body = "#close\n#priority urgente\nCerrada por mí."
    if case == "body altered after signing":
        raw, addr = staff_mail(settings, 1, body)
        raw = raw.replace(b"Cerrada por m", b"Cerrada por M")
    elif case == "trusted header below the real one":
        raw, addr = staff_mail(settings, 1, body, signed=False)
        # our border MTA prepends its verdict; the sender's own "pass" sits below it
        raw = (b"Authentication-Results: mx.example.org; dkim=none; auth=none\r\n"
               + raw.replace(b"Subject:", b"Authentication-Results: mx.example.org; dkim=pass "
                                          b"header.d=example.org\r\nSubject:", 1))
    else:
        raw, addr = staff_mail(settings, 1, body, **FORGERIES[case])
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_reply"))
    t = ticket(engine)
    assert (t.state, t.priority) == ("nueva", "normal")
    with Session(engine) as s:
        msg = s.exec(select(Message).where(Message.direction == "in", Message.from_addr == "drim@example.org")).one()
    assert msg.kind == "requester" and "#close" in msg.text  # plain text, not commands
    assert d.metrics.registry.get_sample_value("maild_forged_staff_total") == 1
    assert not capture.to(REQ, "closed") and not capture.to(REQ, "answer")


async def test_trusted_relay_authenticates_staff(settings, engine, capture, staffed):
    d = staffed
    await send(d.smtp_port, make_mail(message_id="q@cliente.es"))
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    raw, addr = staff_mail(settings, 1, "#priority alta\nLo miramos.", signed=False)
    raw = b"Authentication-Results: mx.example.org; auth=pass smtp.auth=drim@example.org\r\n" + raw
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "answer"))
    assert ticket(engine).priority == "alta"


async def test_wrong_command_changes_nothing_and_tells_the_sender(settings, engine, capture, staffed):
    d = staffed
    await send(d.smtp_port, make_mail(message_id="q@cliente.es"))
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    raw, addr = staff_mail(settings, 1, "#priority alta\n#assign NADIE\nRespuesta que no debe salir.")
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to("drim@example.org", "command_error"))
    err = capture.to("drim@example.org", "command_error")[0]
    body = err.body()
    assert "line 2: '#assign NADIE'" in body and "SOPORTE DE TECNOLOGÍA" in body
    assert err.msg["Auto-Submitted"] == "auto-replied"
    t = ticket(engine)
    assert (t.priority, t.assignee, t.state) == ("normal", "DRIM", "nueva")
    assert not capture.to(REQ, "answer")


async def test_internal_note_goes_to_the_group_only_and_watchers_get_copies(settings, engine, capture, staffed):
    d = staffed
    await send(d.smtp_port, make_mail(message_id="q@cliente.es"))
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    raw, addr = staff_mail(settings, 1, "#interna\n#observar jefe@cliente.es\nOjo: cliente importante.")
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await wait_until(lambda: _kinds(engine).count("internal") == 1)
    assert not capture.to(REQ, "answer")
    raw, addr = staff_mail(settings, 1, "Le respondemos en breve.", mid="s2@example.org")
    await send(d.smtp_port, raw, mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "answer") and c.to("jefe@cliente.es", "answer"))
    assert "Ojo" not in capture.to(REQ, "answer")[0].body()
    assert ticket(engine).state == "en_curso"


def _kinds(engine):
    with Session(engine) as s:
        return [m.kind for m in s.exec(select(Message).where(Message.direction == "in"))]


async def test_attachments_travel_with_answers_and_group_copies(settings, engine, capture, staffed):
    from email.message import EmailMessage
    from email.policy import SMTP

    d = staffed
    q = EmailMessage(policy=SMTP)
    q["From"], q["To"], q["Subject"], q["Message-ID"] = REQ, "consultas@example.org", "Error", "<att@cliente.es>"
    q.set_content("Adjunto captura del error.")
    q.add_attachment(b"\x89PNG fake image", maintype="image", subtype="png", filename="../../etc/captura.png")
    await send(d.smtp_port, q.as_bytes())
    await capture.wait_for(lambda c: c.to("drim@example.org", "group_new"))
    copy = capture.to("drim@example.org", "group_new")[0].msg
    files = [(p.get_filename(), p.get_content()) for p in copy.iter_attachments()]
    assert files == [("captura.png", b"\x89PNG fake image")]  # the name is sanitised, the bytes kept

    a = EmailMessage(policy=SMTP)
    addr = reply_address(settings, 1)
    a["From"], a["To"], a["Subject"], a["Message-ID"] = "drim@example.org", addr, "RE: Error", "<sa@example.org>"
    a.set_content("Le envío el manual.")
    a.add_attachment("Manual del Centro de Descargas".encode(), maintype="application", subtype="pdf",
                     filename="manual.pdf")
    await send(d.smtp_port, sign(a.as_bytes(), "example.org"), mail_from="drim@example.org", rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "answer"))
    answer = capture.to(REQ, "answer")[0].msg
    assert [(p.get_filename(), p.get_content()) for p in answer.iter_attachments()] == [
        ("manual.pdf", "Manual del Centro de Descargas".encode())]
    assert "Le envío el manual." in capture.to(REQ, "answer")[0].body()
