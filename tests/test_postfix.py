"""Postfix in front of maild, end to end: the recipes of contrib/postfix/ run by a real Postfix.

A throwaway Postfix instance (its own config, queue and data directories, on
127.0.0.1) takes mail for example.org and hands it to maild, by LMTP or by
piping to `maild ingest`; it is also maild's smarthost, relaying everything
else to the test's capture server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from maild.process import Processor
from maild.storage.db import make_engine
from maild.storage.models import InboxItem, Message, Ticket
from tests.conftest import ROOT, SECRET, make_mail, wait_until
from tests.servers import POSTFIX_RECIPE, Postfix


@pytest.fixture
def postfix_for(capture):
    made: list[Postfix] = []

    def make() -> Postfix:
        pf = Postfix(relay_port=capture.port)
        made.append(pf)
        return pf

    yield make
    for pf in made:
        pf.cleanup()


def inject(port: int, raw: bytes, sender: str, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(sender, rcpts, raw)


async def test_lmtp_recipe_consulta_in_and_notice_out_through_postfix(make_settings, engine, capture, postfix_for,
                                                                     daemon_factory):
    pf = postfix_for()
    # maild listens for LMTP and sends through the Postfix instance
    settings = make_settings(smtp={"lmtp": True}, outbound={"port": pf.port})
    d = await daemon_factory(settings)
    transport = (POSTFIX_RECIPE / "transport.example").read_text().replace("127.0.0.1:2424",
                                                                            f"127.0.0.1:{d.smtp_port}")
    pf.configure(transport=transport).start()

    raw = make_mail(frm="Ana Pérez <ana@cliente.es>", subject="Problema con el certificado",
                    message_id="pf1@cliente.es")
    inject(pf.port, raw, "ana@cliente.es", ["consultas@example.org"])
    await capture.wait_for(lambda c: c.to("ana@cliente.es", "opened"), timeout=30)
    notice = capture.to("ana@cliente.es", "opened")[0]
    # It left through Postfix: Postfix's Received header is on top, maild's headers intact.
    assert notice.raw.startswith(b"Received: from ") and b"by mx.example.org (Postfix)" in notice.raw
    assert notice.msg["X-Maild-Ticket"] == "1" and notice.msg["In-Reply-To"] == "<pf1@cliente.es>"

    with Session(engine) as s:
        items = s.exec(select(InboxItem)).all()
        assert [(i.channel, i.message_id) for i in items] == [("lmtp", "pf1@cliente.es")]
        assert s.get(Ticket, 1).subject == "Problema con el certificado"
    log = pf.log()
    assert f"relay=127.0.0.1[127.0.0.1]:{d.smtp_port}" in log and "status=sent (250 2." in log
    assert f"relay=127.0.0.1[127.0.0.1]:{capture.port}" in log

    # The requester's reply, through Postfix again, threads into the ticket.
    reply = make_mail(frm="ana@cliente.es", subject="Re: " + notice.msg["Subject"], message_id="pf2@cliente.es",
                      in_reply_to=notice.msg["Message-ID"], references=notice.msg["Message-ID"],
                      body="Sigo sin poder entrar.")
    inject(pf.port, reply, "ana@cliente.es", [notice.msg["Reply-To"]])
    await wait_until(lambda: _inbound(engine) == [("pf1@cliente.es", 1), ("pf2@cliente.es", 1)], timeout=30)

    # A recipient maild does not know is refused at LMTP (550 5.1.1), and Postfix bounces it to the sender.
    inject(pf.port, make_mail(message_id="pf3@cliente.es"), "ana@cliente.es", ["nadie@example.org"])
    await wait_until(lambda: "nadie@example.org" in pf.log() and "status=bounced" in pf.log(), timeout=30)
    assert "550 5.1.1" in pf.log()


def _inbound(engine):
    with Session(engine) as s:
        return [(m.message_id, m.ticket_id) for m in s.exec(select(Message).where(Message.direction == "in")
                                                             .order_by(Message.id))]


def _nobody_python(root: Path) -> Path:
    """A Python that the pipe's unprivileged user can run.

    Postfix's pipe never runs a command as root, and this machine's interpreter may sit under a
    directory only root can enter (pyenv under /root). A venv on Debian's /usr/bin/python3 (the same
    3.11 ABI) that adds this venv's site-packages is enough; in production maild has its own venv.
    """
    base = Path("/usr/bin/python3")
    venv = root / "venv"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths()["purelib"])
    (next((venv / "lib").glob("python3*/site-packages")) / "maild-test.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    return venv / "bin" / "python"


def test_pipe_recipe_exit_75_defers_then_postfix_delivers_once(tmp_path, db_url, capture, postfix_for):
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="maild-pipe-"))
    try:
        os.chmod(work, 0o755)
        python = _nobody_python(work)
        url = db_url if db_url.startswith("postgresql") else f"sqlite:///{work / 'db' / 'maild.db'}"
        (work / "db").mkdir()
        os.chown(work / "db", nobody.pw_uid, nobody.pw_gid)
        config = work / "config.toml"  # not written yet: maild ingest exits 75
        pf = postfix_for()
        master = (POSTFIX_RECIPE / "master.cf.example").read_text()
        master = (master.replace("/opt/maild/.venv/bin/maild", f"{python} -m maild")
                  .replace("/etc/maild/config.toml", str(config)).replace("user=maild", "user=nobody"))
        pf.configure(master=master, transport=(POSTFIX_RECIPE / "transport-pipe.example").read_text()).start()

        inject(pf.port, make_mail(message_id="pipe1@cliente.es", subject="Consulta por tubería"), "ana@cliente.es",
               ["consultas@example.org"])
        deadline = time.monotonic() + 30
        while "status=deferred" not in pf.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = pf.log()
        assert "relay=maild" in log and "status=deferred" in log, log[-3000:]
        assert "Error: " in log and "Traceback" not in log  # maild's one line reached Postfix's log
        queued = pf.queue()
        assert len(queued) == 1 and queued[0]["recipients"][0]["address"] == "consultas@example.org"

        # maild becomes usable: Postfix's next try delivers it, once.
        text = (ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{url}"')
        config.write_text(text.replace('secret_file = "var/maild.secret"', 'secret_file = "maild.secret"'))
        (work / "maild.secret").write_text(SECRET.decode() + "\n")
        os.chmod(work / "maild.secret", 0o600)
        os.chown(work / "maild.secret", nobody.pw_uid, nobody.pw_gid)
        subprocess.run([sys.executable, "-m", "maild", "--config", str(config), "db", "upgrade"], check=True,
                       capture_output=True, timeout=120)
        if url.startswith("sqlite"):
            for f in (work / "db").iterdir():
                os.chown(f, nobody.pw_uid, nobody.pw_gid)
        pf.flush()
        deadline = time.monotonic() + 30
        while not ("status=sent (delivered via maild service)" in pf.log() and not pf.queue()):
            assert time.monotonic() < deadline, pf.log()[-3000:]
            time.sleep(0.2)

        from maild import config as config_mod

        settings = config_mod.load(config)
        engine = make_engine(settings.database.url, settings.base_dir)
        with Session(engine) as s:
            items = s.exec(select(InboxItem)).all()
            assert [(i.channel, i.message_id, i.mail_from, i.rcpt_tos) for i in items] == [
                ("pipe", "pipe1@cliente.es", "ana@cliente.es", ["consultas@example.org"])]
        Processor(settings, engine).run_batch()
        with Session(engine) as s:
            assert s.get(Ticket, 1).subject == "Consulta por tubería"
        engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
