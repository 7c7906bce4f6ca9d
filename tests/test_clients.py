"""Real mail clients' replies (tests/data/clients/): each threads into the right ticket, its journal
text is exactly the new text, and it reaches the group's copy without mojibake.

A fixture is a reply as the client writes it (Gmail web, Outlook desktop and web with Thread-Index,
Thunderbird, Apple Mail, K-9, FairEmail; plain and HTML; top-posted and inline; RE:/RES:/RV:/AW:
prefixes; a changed subject; ISO-8859-1, Windows-1252, ISO-2022-JP, RFC 2231 file names, RFC 2047
names). The ids a reply carries are maild's own, so the fixture names them with placeholders
(@@NOTICE_ID@@, @@REPLY_TO@@, @@SUBJECT@@, @@QUERY_ID@@), filled in from the opened notice.
`<name>.expected` is the new text; the file name ends in the language of the consulta.

The requester has two tickets: the reply answers the second, so threading into the first (or a new
third) fails.
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.utils import getaddresses, parseaddr
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from maild.process import Processor
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import Attachment, Contact, Message, OutboxItem, Staff, Ticket
from tests.conftest import make_mail

DATA = Path(__file__).parent / "data" / "clients"
CASES = sorted(DATA.glob("*.eml"))

CONSULTAS = {
    "es": ("Problema con el certificado",
           "Hola, no puedo acceder a la plataforma con mi certificado. ¿Qué puedo hacer? Gracias."),
    "pt": ("Problema com o certificado",
           "Olá, não consigo aceder à plataforma com o meu certificado. O que posso fazer? Obrigado."),
    "en": ("Problem with the certificate",
           "Hello, I cannot log in to the platform with my certificate. What can I do? Thanks."),
}


def test_the_fixtures_cover_the_clients_and_charsets():
    names = {p.stem for p in CASES}
    for client in ("gmail_web_html", "gmail_web_plain", "outlook_desktop", "outlook_web_html", "thunderbird_inline",
                   "applemail", "k9", "fairemail", "charset_latin1", "charset_cp1252", "charset_iso2022jp",
                   "charset_rfc2231"):
        assert any(n.startswith(client) for n in names), client
    assert all(p.with_suffix(".expected").exists() for p in CASES)


def _process(settings, engine, raw: bytes, sender: str, rcpts: list[str]) -> None:
    store_now(engine, [inbox_row(raw, "smtp", sender, rcpts)])
    Processor(settings, engine).run_batch()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_reply_threads_and_keeps_only_the_new_text(path: Path, settings, engine):
    lang = path.stem.rsplit("_", 1)[1]
    template = path.read_bytes()
    head = message_from_bytes(template, policy=policy.default)
    name, requester = parseaddr(str(head["From"]))
    requester = requester.lower()
    with Session(engine) as s:
        s.add(Staff(address="drim@example.org", name="Dolores", group="DRIM"))
        s.commit()

    subject, body = CONSULTAS[lang]
    query_id = f"q1@{requester.split('@')[1]}"
    _process(settings, engine, make_mail(frm=requester, subject="Otra consulta anterior", body=body,
                                         message_id=f"q0@{requester.split('@')[1]}"), requester,
             ["consultas@example.org"])
    _process(settings, engine, make_mail(frm=requester, subject=subject, body=body, message_id=query_id), requester,
             ["consultas@example.org"])
    with Session(engine) as s:
        opened = s.exec(select(OutboxItem).where(OutboxItem.ticket_id == 2, OutboxItem.kind == "opened")).one()
    notice = message_from_bytes(opened.raw, policy=policy.default)
    assert "[OMIE #2]" in notice["Subject"]

    raw = (template.replace(b"@@NOTICE_ID@@", notice["Message-ID"].strip("<>").encode())
           .replace(b"@@REPLY_TO@@", notice["Reply-To"].encode())
           .replace(b"@@SUBJECT@@", notice["Subject"].encode())
           .replace(b"@@QUERY_ID@@", query_id.encode()))
    reply = message_from_bytes(raw, policy=policy.default)
    rcpts = [a for _, a in getaddresses([str(v) for v in reply.get_all("To", [])])]
    _process(settings, engine, raw, requester, rcpts)

    expected = path.with_suffix(".expected").read_text(encoding="utf-8").strip()
    with Session(engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 2, "the reply opened a new ticket"
        stored = s.exec(select(Message).where(Message.message_id == reply["Message-ID"].strip("<>"))).one()
        assert stored.ticket_id == 2, f"threaded into ticket {stored.ticket_id}"
        assert stored.text == expected
        copy = s.exec(select(OutboxItem).where(OutboxItem.ticket_id == 2, OutboxItem.kind == "group_reply")).one()
        contact = s.exec(select(Contact).where(Contact.address == requester)).one()
        files = s.exec(select(Attachment).where(Attachment.message_id == stored.id)).all()
        assert s.get(Ticket, 2).language == lang

    # The group's copy carries the same text, the name and the file names, re-encoded in UTF-8.
    group_copy = message_from_bytes(copy.raw, policy=policy.default)
    text = group_copy.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert expected in text
    assert contact.name == name
    assert f"{name} <{requester}>" in text
    for f in files:
        assert f.filename in text
        assert f.filename in [p.get_filename() for p in group_copy.iter_attachments()]


def test_rfc2231_file_name_and_rfc2047_name_round_trip(settings, engine):
    """The charset fixtures' names, spelled out (so a fixture decoded wrongly on both sides cannot pass)."""
    path = DATA / "charset_rfc2231_gmail_pt.eml"
    test_reply_threads_and_keeps_only_the_new_text(path, settings, engine)
    with Session(engine) as s:
        assert [a.filename for a in s.exec(select(Attachment))] == ["relatório faturação 2026 – março.pdf"]
        assert s.exec(select(Contact.name).where(Contact.address == "joao@cliente.pt")).one() == "João Gonçalves"


@pytest.mark.parametrize(("fixture", "name", "fragment"), [
    ("charset_iso2022jp_thunderbird_en.eml", "山田 太郎", "証明書を再インストールしましたが"),
    ("charset_latin1_thunderbird_es.eml", "José Núñez", "Añado que el año pasado"),
    ("charset_cp1252_outlook_es.eml", "Ana Pérez", "1.250 € y no 1.520 €, como indica la “factura rectificativa”"),
])
def test_legacy_charsets_decode_exactly(fixture, name, fragment, settings, engine):
    test_reply_threads_and_keeps_only_the_new_text(DATA / fixture, settings, engine)
    with Session(engine) as s:
        texts = [m.text for m in s.exec(select(Message).where(Message.direction == "in").order_by(col(Message.id)))]
        assert fragment in texts[-1]
        assert s.exec(select(Contact.name)).first() == name


@pytest.mark.parametrize("prefix", ["RE:", "Re:", "RV:", "Res:", "RES:", "AW:", "Antw:", "SV:", "Fwd:", "RE: RE:"])
def test_any_client_prefix_keeps_the_thread_by_the_subject_tag(prefix, settings, engine):
    """No In-Reply-To, no References, the plain address: only the tag ties it (Outlook's forwards do this)."""
    for i in range(2):
        _process(settings, engine, make_mail(frm="ana@cliente.es", subject=f"Consulta {i}", message_id=f"p{i}@cliente.es"),
                 "ana@cliente.es", ["consultas@example.org"])
    raw = make_mail(frm="Ana Pérez <ana@cliente.es>", subject=f"{prefix} [OMIE #2] Consulta 1 recibida: Consulta 1",
                    body="Sigue igual.", message_id="tagged@cliente.es",
                    extra={"Thread-Index": "AQHbPq3xY0cG4r1v0UqkZ3n8sV2h1A=="})
    _process(settings, engine, raw, "ana@cliente.es", ["consultas@example.org"])
    with Session(engine) as s:
        stored = s.exec(select(Message).where(Message.message_id == "tagged@cliente.es")).one()
        assert stored.ticket_id == 2 and len(s.exec(select(Ticket)).all()) == 2
