"""DKIM against a verifier and a signer that are not dkimpy: Perl's Mail::DKIM (Debian's libmail-dkim-perl).

Every kind of message maild sends (opened, in_progress and closed notices, the
group's copy, a relayed answer with an attachment, a command-error reply; with
non-ASCII subjects, names and file names) must verify with Mail::DKIM::Verifier
fed the record `maild dkim keygen` printed; and staff mail signed by
Mail::DKIM::Signer (relaxed and simple canonicalization) must authenticate in
maild, or no answer would be relayed.
"""

from __future__ import annotations

import os
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from sqlmodel import Session

from maild.addresses import reply_address
from maild.storage.models import Staff, Ticket
from tests.conftest import send
from tests.dkimkeys import dns_for, keypair
from tests.test_dkim_out import keygen

PERL = Path(__file__).parent / "perl"
REQ = "joao@cliente.pt"


def perl_verify(raw: bytes, keys: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DKIM_KEYS=";;".join(f"{k}={v}" for k, v in keys.items()))
    return subprocess.run(["perl", str(PERL / "dkim_verify.pl")], input=raw, capture_output=True, env=env,
                          timeout=30)


def perl_sign(raw: bytes, keyfile: Path, domain: str, selector: str, canon: str) -> bytes:
    out = subprocess.run(["perl", str(PERL / "dkim_sign.pl"), str(keyfile), domain, selector, canon], input=raw,
                         capture_output=True, timeout=30, check=True)
    return out.stdout


def staff_answer(settings, body: str, mid: str, attachment: tuple[str, bytes] | None = None) -> tuple[bytes, str]:
    addr = reply_address(settings, 1)
    m = EmailMessage(policy=SMTP)
    m["From"], m["To"] = "Tomás Núñez <tec@example.org>", addr
    m["Subject"], m["Message-ID"] = "RE: [OMIE #1] Certificação expirada", f"<{mid}>"
    m["Date"] = "Tue, 24 Nov 2026 11:00:00 +0000"
    m.set_content(body)
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return m.as_bytes(), addr


@pytest.fixture
def staff_key(tmp_path) -> Path:
    path = tmp_path / "staff.pem"
    path.write_bytes(keypair("example.org")[0])
    return path


async def test_every_kind_of_outgoing_mail_verifies_with_mail_dkim(tmp_path, make_settings, engine, capture,
                                                                  daemon_factory, staff_key):
    key, record = keygen(tmp_path)
    with Session(engine) as s:
        s.add(Staff(address="tec@example.org", name="Tomás Núñez", group="SOPORTE DE TECNOLOGÍA"))
        s.commit()
    settings = make_settings(outbound={"port": capture.port, "dkim_selector": "s2026", "dkim_key_file": key})
    # maild reads the staff domain's key (selector "sel") from its injectable DNS; Mail::DKIM signs with it.
    d = await daemon_factory(settings, dnsfunc=dns_for("example.org"))

    q = EmailMessage(policy=SMTP)
    q["From"], q["To"] = "João Gonçalves <joao@cliente.pt>", "consultas+04@example.org"
    q["Subject"], q["Message-ID"] = "Certificação expirada — não consigo entrar", "<q1@cliente.pt>"
    q.set_content("Olá, o meu certificado expirou e não consigo aceder à plataforma.")
    q.add_attachment(b"%PDF-1.4 erro", maintype="application", subtype="pdf", filename="relatório de erro ç.pdf")
    await send(d.smtp_port, q.as_bytes(), mail_from=REQ)
    await capture.wait_for(lambda c: c.to(REQ, "opened") and c.to("tec@example.org", "group_new"))

    # Staff mail signed by Mail::DKIM::Signer authenticates: the answer is relayed (relaxed), a command works (simple).
    raw, addr = staff_answer(settings, "Bom dia, João. Envio-lhe o manual de instalação.", "s1@example.org",
                             ("manual de instalação.pdf", b"%PDF-1.4 manual"))
    await send(d.smtp_port, perl_sign(raw, staff_key, "example.org", "sel", "relaxed"), mail_from="tec@example.org",
               rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "answer") and c.to(REQ, "in_progress"))
    raw, addr = staff_answer(settings, "#assign NINGUÉM\nIsto não deve sair.", "s2@example.org")
    await send(d.smtp_port, perl_sign(raw, staff_key, "example.org", "sel", "simple"), mail_from="tec@example.org",
               rcpts=[addr])
    await capture.wait_for(lambda c: c.to("tec@example.org", "command_error"))
    raw, addr = staff_answer(settings, "#fechar\nResolvido.", "s3@example.org")
    await send(d.smtp_port, perl_sign(raw, staff_key, "example.org", "sel", "simple"), mail_from="tec@example.org",
               rcpts=[addr])
    await capture.wait_for(lambda c: c.to(REQ, "closed"))
    with Session(engine) as s:
        assert s.get(Ticket, 1).state == "cerrada"

    kinds = {
        "opened": capture.to(REQ, "opened"),
        "group_new": capture.to("tec@example.org", "group_new"),
        "answer": capture.to(REQ, "answer"),
        "in_progress": capture.to(REQ, "in_progress"),
        "command_error": capture.to("tec@example.org", "command_error"),
        "closed": capture.to(REQ, "closed"),
    }
    # two answers: the one with the manual, and "Resolvido." that came with #fechar
    assert {k: len(v) for k, v in kinds.items()} == {"opened": 1, "group_new": 1, "answer": 2, "in_progress": 1,
                                                     "command_error": 1, "closed": 1}
    assert [p.get_filename() for p in kinds["answer"][0].msg.iter_attachments()] == ["manual de instalação.pdf"]
    assert [p.get_filename() for p in kinds["group_new"][0].msg.iter_attachments()] == ["relatório de erro ç.pdf"]
    assert "Certificação" in kinds["opened"][0].msg["Subject"]
    assert kinds["answer"][0].msg["From"] == "SOPORTE DE TECNOLOGÍA <consultas@example.org>"
    published = {"s2026._domainkey.example.org": record}
    for kind, mails in kinds.items():
        for mail in mails:
            result = perl_verify(mail.raw, published)
            assert result.returncode == 0 and result.stdout.startswith(b"pass d=example.org s=s2026"), (kind, result)

    # The verifier is not a rubber stamp: an altered body, a changed subject or another key fail.
    answer = kinds["answer"][0].raw
    assert perl_verify(answer.replace(b"Bom dia", b"Bom diA", 1), published).returncode == 1
    assert perl_verify(answer.replace(b"Subject: ", b"Subject: x", 1), published).returncode == 1
    other = {"s2026._domainkey.example.org": keypair("other.example")[1]}
    assert perl_verify(answer, other).returncode == 1
    assert perl_verify(answer, {}).returncode == 1


async def test_forged_mail_dkim_signature_does_not_authenticate_staff(tmp_path, make_settings, engine, capture,
                                                                      daemon_factory):
    """Mail signed by Mail::DKIM::Signer with a key that is not the domain's published one is a requester's."""
    with Session(engine) as s:
        s.add(Staff(address="tec@example.org", name="Tomás", group="SOPORTE DE TECNOLOGÍA"))
        s.commit()
    settings = make_settings(outbound={"port": capture.port})
    d = await daemon_factory(settings, dnsfunc=dns_for("example.org"))
    await send(d.smtp_port, _consulta(), mail_from=REQ)
    await capture.wait_for(lambda c: c.to("tec@example.org", "group_new"))
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(keypair("evil.example")[0])
    raw, addr = staff_answer(settings, "#fechar\nFechado por um impostor.", "f1@example.org")
    await send(d.smtp_port, perl_sign(raw, wrong, "example.org", "sel", "relaxed"), mail_from="tec@example.org",
               rcpts=[addr])
    await capture.wait_for(lambda c: c.to("tec@example.org", "group_reply"))  # kept as a requester's reply
    with Session(engine) as s:
        assert s.get(Ticket, 1).state != "cerrada"
    assert not capture.to(REQ, "closed") and not capture.to(REQ, "answer")


def _consulta() -> bytes:
    q = EmailMessage(policy=SMTP)
    q["From"], q["To"] = REQ, "consultas+04@example.org"
    q["Subject"], q["Message-ID"] = "Certificação", "<q2@cliente.pt>"
    q.set_content("Olá.")
    return q.as_bytes()
