"""Bounces name the message and the recipient; nothing is sent back; bouncing addresses are held."""

from __future__ import annotations

from sqlmodel import Session, select

from maild.addresses import bounce_address, reply_address
from maild.process import Processor
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import Contact, InboxItem, Journal, OutboxItem
from tests.conftest import make_mail


def run(settings, engine, raw, rcpt="consultas@example.org", mail_from="", p=None):
    p = p or Processor(settings, engine)
    store_now(engine, [inbox_row(raw, "smtp", mail_from, [rcpt])])
    while p.run_batch():
        pass
    return p


def opened(settings, engine, frm="ana@cliente.es", mid="q@cliente.es") -> OutboxItem:
    run(settings, engine, make_mail(frm=frm, message_id=mid), mail_from=frm)
    with Session(engine) as s:
        rows = s.exec(select(OutboxItem).where(OutboxItem.kind == "opened", OutboxItem.recipient == frm)
                      .order_by(OutboxItem.id)).all()
        return rows[-1]


def state(engine, address):
    with Session(engine) as s:
        return s.exec(select(Contact).where(Contact.address == address)).one().bounce


def outbox_count(engine):
    with Session(engine) as s:
        return len(s.exec(select(OutboxItem)).all())


def notes(engine):
    with Session(engine) as s:
        return [j.note for j in s.exec(select(Journal).order_by(Journal.id))]


DSN = """From: MAILER-DAEMON@mx.cliente.es
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-{n}@mx.cliente.es>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.cliente.es.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.cliente.es

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {code}

--B
Content-Type: text/rfc822-headers

From: no-reply@example.org
To: {rcpt}
Message-ID: <{orig}>
Subject: [OMIE #1] Consulta 1 recibida

--B--
""".replace("\n", "\r\n")


def test_verp_bounce_with_unreadable_body_names_message_and_recipient(settings, engine):
    row = opened(settings, engine)
    before = outbox_count(engine)
    garbage = b"From: MAILER-DAEMON@mx.cliente.es\r\nSubject: ???\r\n\r\n\x00\x01 unreadable \xff\r\n"
    run(settings, engine, garbage, rcpt=bounce_address(settings, row.id))
    assert state(engine, "ana@cliente.es") == "permanent"
    assert any(n.startswith("Rebote: ana@cliente.es (permanente)") for n in notes(engine))
    assert outbox_count(engine) == before  # nothing sent back
    with Session(engine) as s:
        assert s.exec(select(InboxItem).order_by(InboxItem.id.desc())).first().state == "done"


def test_forged_verp_signature_is_not_a_bounce(settings, engine):
    row = opened(settings, engine)
    forged = bounce_address(settings, row.id).replace(f"+b{row.id}.", f"+b{row.id}.zz")
    run(settings, engine, b"From: MAILER-DAEMON@x.es\r\nSubject: ?\r\n\r\nnothing\r\n", rcpt=forged)
    assert state(engine, "ana@cliente.es") == ""


def test_rfc3464_dsn_without_verp_finds_the_ticket_by_the_returned_message_id(settings, engine):
    row = opened(settings, engine)
    dsn = DSN.format(to="consultas@example.org", rcpt="ana@cliente.es", action="failed", status="5.1.1",
                     code="550 5.1.1 user unknown", orig=row.message_id, n=1).encode()
    run(settings, engine, dsn)
    assert state(engine, "ana@cliente.es") == "permanent"
    assert any("Rebote" in n for n in notes(engine))


def test_delayed_dsn_is_transient_and_does_not_hold_notices(settings, engine):
    row = opened(settings, engine)
    dsn = DSN.format(to=bounce_address(settings, row.id), rcpt="ana@cliente.es", action="delayed", status="4.4.1",
                     code="451 4.4.1 try later", orig=row.message_id, n=2).encode()
    run(settings, engine, dsn, rcpt=bounce_address(settings, row.id))
    assert state(engine, "ana@cliente.es") == "transient"


def test_permanent_bouncer_gets_no_notice_until_it_writes_again(settings, engine):
    row = opened(settings, engine)
    dsn = DSN.format(to=bounce_address(settings, row.id), rcpt="ana@cliente.es", action="failed", status="5.1.1",
                     code="550 no such user", orig=row.message_id, n=3).encode()
    p = run(settings, engine, dsn, rcpt=bounce_address(settings, row.id))
    # staff close the ticket: the closed notice is held, and the journal says so
    with Session(engine) as s:
        from maild.storage.models import Staff

        s.add(Staff(address="drim@example.org", name="D", group="DRIM"))
        s.commit()
    close = (b"Authentication-Results: mx.example.org; auth=pass smtp.auth=drim@example.org\r\n"
             + make_mail(frm="drim@example.org", to=reply_address(settings, 1), body="#close",
                         message_id="close@example.org"))
    before = outbox_count(engine)
    run(settings, engine, close, rcpt=reply_address(settings, 1), mail_from="drim@example.org", p=p)
    assert outbox_count(engine) == before
    assert any("Aviso retenido: ana@cliente.es rebota permanentemente" in n for n in notes(engine))
    # she writes again: the mark is cleared and notices flow
    run(settings, engine, make_mail(message_id="again@cliente.es", subject="otra"), mail_from="ana@cliente.es", p=p)
    assert state(engine, "ana@cliente.es") == ""
    with Session(engine) as s:
        assert s.exec(select(OutboxItem).where(OutboxItem.recipient == "ana@cliente.es")).all()[-1].kind == "opened"


QMAIL = """From: MAILER-DAEMON@mail.cliente.es
To: {to}
Subject: failure notice
Message-ID: <qmail-1@mail.cliente.es>

Hi. This is the qmail-send program at mail.cliente.es.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<ana@cliente.es>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Message-ID: <{orig}>
""".replace("\n", "\r\n")

POSTFIX = """From: MAILER-DAEMON@mail.cliente.es (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <pf-1@mail.cliente.es>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="PF"

This is a MIME-encapsulated message.

--PF
Content-Description: Notification
Content-Type: text/plain

This is the Postfix program at host mail.cliente.es.

I'm sorry to have to inform you that the message returned
below could not be delivered to one or more destinations.

                        The Postfix program

<ana@cliente.es>: host mx.cliente.es[192.0.2.1] said: 550 5.1.1 <ana@cliente.es>:
    Recipient address rejected: User unknown in local recipient table (in reply
    to RCPT TO command)

--PF
Content-Description: Undelivered Message
Content-Type: message/rfc822

Message-ID: <{orig}>
Subject: x

x
--PF--
""".replace("\n", "\r\n")


EXCHANGE = """From: System Administrator <postmaster@cliente.es>
To: {to}
Subject: Undeliverable: [OMIE #1] Consulta 1 recibida
Message-ID: <ex-1@cliente.es>
In-Reply-To: <{orig}>

Your message

  Subject: [OMIE #1] Consulta 1 recibida

did not reach the following recipient(s):

ana@cliente.es on Tue, 24 Nov 2026 10:00:00 +0100
    The e-mail account does not exist at the organization this message was sent to.
    <mx.cliente.es #5.1.1 smtp;550 5.1.1 User unknown>

MSEXCH:IMS:Cliente:Madrid:MX01 0 (000C05A6) Unknown Recipient
""".replace("\n", "\r\n")


def test_non_standard_bounces_are_read(settings, engine):
    for i, template in enumerate((QMAIL, POSTFIX, EXCHANGE)):
        row = opened(settings, engine, mid=f"q{i}@cliente.es")
        with Session(engine) as s:
            c = s.exec(select(Contact).where(Contact.address == "ana@cliente.es")).one()
            c.bounce = ""
            s.add(c)
            s.commit()
        raw = template.format(to="consultas@example.org", orig=row.message_id).encode()
        run(settings, engine, raw)
        assert state(engine, "ana@cliente.es") == "permanent", template[:40]
