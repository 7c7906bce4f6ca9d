"""Whole-pipeline properties: every message ends somewhere an operator can see; loops stay bounded;
a SIGKILL while a client sends loses nothing that got a 250."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import Session, func, select

from maild.process import Processor
from maild.storage.db import transaction
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import InboxItem, Message, OutboxItem
from tests.conftest import Capture, free_port, make_mail, send, serve_config

END_STATES = {"done", "ignored", "quarantined"}


def run_to_the_end(settings, engine, raws: list[bytes]) -> list[InboxItem]:
    store_now(engine, [inbox_row(r, "smtp", "x@cliente.es", ["consultas@example.org"]) for r in raws])
    p = Processor(settings, engine)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not p.run_batch():
            with Session(engine) as s:
                waiting = s.exec(select(InboxItem).where(InboxItem.state == "new")).all()
            if not waiting:
                break
            time.sleep(0.05)  # a retry's backoff (limits.retry_base_seconds is small in tests)
    with Session(engine) as s:
        return list(s.exec(select(InboxItem).order_by(InboxItem.id)))


def check_ends(engine, items: list[InboxItem]) -> None:
    with Session(engine) as s:
        for item in items:
            assert item.state in END_STATES, (item.id, item.state, item.error)
            stored = s.exec(select(func.count()).select_from(Message).where(Message.inbox_id == item.id)).one()
            if item.state == "done" and not item.error.startswith("duplicate"):
                assert stored == 1, item.id  # exactly one stored ticket message
            else:
                assert stored == 0, item.id
            if item.state == "quarantined":
                assert item.error  # says why


mangle = st.sampled_from([
    lambda b: b,
    lambda b: b.replace(b"\r\n", b"\n"),
    lambda b: b[: len(b) // 2],
    lambda b: b.replace(b"Content-Type: text/plain", b"Content-Type: multipart/mixed; boundary=zz"),
    lambda b: b.replace(b"charset=\"utf-8\"", b"charset=\"x-broken\""),
    lambda b: b.replace(b"From:", b"Frm:"),
    lambda b: b"\xff\xfe" + b,
    lambda b: b.replace(b"\r\n\r\n", b"\r\n", 1),
    lambda b: b.replace(b"Subject:", b"Subject: =?utf-8?B?!!!?="),
])


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.lists(st.tuples(st.text(max_size=80), st.text(max_size=400), mangle, st.booleans()),
                     min_size=1, max_size=6))
def test_every_generated_message_ends_visible(make_settings, db_url, data):
    from maild.storage.db import make_engine, upgrade

    settings = make_settings()
    engine = make_engine(settings.database.url, settings.base_dir)
    upgrade(engine)
    with transaction(engine) as s:  # hypothesis reuses the fixture's database: start empty
        for table in ("attachment", "message", "journal", "watcher", "outbox", "ticket", "contact", "inbox",
                      "blob"):
            s.execute(text(f'DELETE FROM "{table}"'))
    raws = []
    for i, (subject, body, fn, auto) in enumerate(data):
        extra = {"Auto-Submitted": "auto-replied"} if auto else None
        try:
            raw = make_mail(subject=subject.replace("\r", " ").replace("\n", " ") or "x", body=body,
                            message_id=f"h{i}-{abs(hash((subject, body)))}@x", extra=extra)
        except (ValueError, TypeError):
            continue
        raws.append(fn(raw))
    if raws:
        check_ends(engine, run_to_the_end(settings, engine, raws))


def cpython_email_corpus() -> list[Path]:
    import test.test_email as corpus

    return sorted((Path(corpus.__file__).parent / "data").glob("msg_*.txt"))


def test_cpythons_email_test_corpus_goes_through(settings, engine):
    files = cpython_email_corpus()
    assert len(files) > 40
    items = run_to_the_end(settings, engine, [f.read_bytes() for f in files])
    assert len(items) == len({f.read_bytes() for f in files}) or len(items) <= len(files)
    check_ends(engine, items)
    assert sum(i.state == "done" for i in items) > len(items) // 2


async def test_an_autoresponder_answering_everything_does_not_start_a_storm(settings, engine, daemon_factory):
    """The smarthost's other side replies to every message maild sends, as a careless autoresponder
    would (without Auto-Submitted): the conversation must die out, not ping-pong."""
    replies: list[bytes] = []
    maild_port: list[int] = []

    class Autoresponder(Capture):
        async def handle_DATA(self, server, session, envelope):
            status = await super().handle_DATA(server, session, envelope)
            msg = self.messages[-1].msg
            reply = make_mail(frm="ana@cliente.es", to=msg["Reply-To"] or "consultas@example.org",
                              subject="Re: " + (msg["Subject"] or ""), body="Estoy de vacaciones.",
                              message_id=f"ooo{len(replies)}@cliente.es", in_reply_to=msg["Message-ID"])
            replies.append(reply)
            asyncio.get_running_loop().create_task(send(maild_port[0], reply, rcpts=[msg["Reply-To"]]))
            return status

    host = await Autoresponder().start()
    try:
        s = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": host.port})})
        d = await daemon_factory(s)
        maild_port.append(d.smtp_port)
        await send(d.smtp_port, make_mail(message_id="start@cliente.es"))
        await asyncio.sleep(6)
        sent = len(host.messages)
        await asyncio.sleep(3)
        assert len(host.messages) == sent  # it stopped
        limit = settings.limits.notices_per_hour
        assert sent <= max(2, -(-limit // 3)) + 1, sent  # bounded by the 10-minute notice tier
    finally:
        await host.stop()


def test_sigkill_while_a_client_sends_500_messages(tmp_path, db_url):
    port = free_port()
    serve_config(tmp_path / "config.toml", db_url, smtp_port=port, secret_file=False,
                 extra={"max_attempts = 5": "max_attempts = 5\nclaim_timeout_seconds = 2"})
    env = {**os.environ, "MAILD_CONFIG": str(tmp_path / "config.toml"), "MAILD_SECRET": "k" * 32}
    subprocess.run([sys.executable, "-m", "maild", "db", "upgrade"], env=env, check=True, capture_output=True)

    def serve() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "maild", "serve"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                return p
            except OSError:
                time.sleep(0.05)
        raise AssertionError("maild did not start")

    proc = serve()
    accepted: list[str] = []
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        for n in range(500):
            mid = f"k{n}@cliente.es"
            if n == 250:
                workers = [int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                           for c in (t / "children").read_text().split()]
                proc.send_signal(signal.SIGKILL)  # no goodbye, mid-stream
            try:
                client.sendmail(f"u{n}@cliente.es", ["consultas@example.org"],
                                make_mail(frm=f"u{n}@cliente.es", message_id=mid))
                accepted.append(mid)
            except (OSError, smtplib.SMTPException):
                pass  # not told 250: the client would retry; maild owes it nothing
    finally:
        try:
            client.close()
        except OSError:
            pass
    assert 200 <= len(accepted) < 500
    proc.wait()
    assert workers  # the processor's worker process ...
    deadline = time.monotonic() + 15
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(w) for w in workers)  # ... does not outlive a killed daemon
    proc = serve()
    try:
        from maild.storage.db import make_engine

        engine = make_engine(db_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with Session(engine) as s:
                if not s.exec(select(InboxItem).where(InboxItem.state != "done")).all():
                    break
            time.sleep(0.2)
        with Session(engine) as s:
            stored = s.exec(select(InboxItem.message_id)).all()
            inbound = s.exec(select(Message.message_id).where(Message.direction == "in")).all()
            opened = s.exec(select(func.count()).select_from(OutboxItem).where(OutboxItem.kind == "opened")).one()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert set(accepted) <= set(stored)  # every 250 is stored
    assert len(stored) == len(set(stored)) and len(inbound) == len(set(inbound))  # exactly once
    assert set(inbound) == set(stored)
    assert opened == len(set(stored))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" not in fh.read()
    except FileNotFoundError:
        return False
