"""Nothing is lost: restart recovery, smarthost outages, refusals, LMTP, the pipe."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys

from sqlmodel import Session, select

from maild.storage.db import transaction
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import InboxItem, OutboxItem, Ticket
from tests.conftest import Capture, free_port, make_mail, send, wait_until


def _states(engine) -> list[str]:
    with Session(engine) as s:
        return [i.state for i in s.exec(select(InboxItem).order_by(InboxItem.id))]


async def test_unprocessed_inbox_rows_are_processed_after_restart(settings, engine, capture, daemon_factory):
    # Messages committed by a receiver of a run that died before processing them,
    # and one it was processing when it died.
    store_now(engine, [inbox_row(make_mail(message_id=f"r{i}@cliente.es", frm=f"u{i}@cliente.es"), "smtp",
                                 f"u{i}@cliente.es", ["consultas@example.org"]) for i in range(3)])
    with transaction(engine) as s:
        item = s.exec(select(InboxItem).order_by(InboxItem.id)).first()
        # claimed by an instance that died a while ago (older than limits.claim_timeout_seconds)
        item.state, item.claimed_at = "processing", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        item.claimed_by = "dead-host:1234:abcdef"
    assert _states(engine) == ["processing", "new", "new"]
    s2 = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    await daemon_factory(s2)
    await wait_until(lambda: _states(engine) == ["done"] * 3)
    await capture.wait_for(lambda c: len([m for m in c.messages if m.msg["X-Maild-Notice"] == "opened"]) == 3)
    with Session(engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 3


async def test_unreachable_smarthost_keeps_notice_queued_until_it_is_back(settings, engine, daemon_factory):
    port = free_port()
    s2 = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": port})})
    d = await daemon_factory(s2)
    await send(d.smtp_port, make_mail(message_id="wait@cliente.es"))

    def tried_and_queued():
        with Session(engine) as s:
            rows = s.exec(select(OutboxItem).where(OutboxItem.kind == "opened")).all()
            return rows and all(r.state == "queued" and r.attempts >= 2 for r in rows) and rows

    rows = await wait_until(tried_and_queued)
    assert "unreachable" in rows[0].last_error
    capture = await Capture().start(port)
    try:
        await capture.wait_for(lambda c: c.to("ana@cliente.es", "opened"))
        await wait_until(lambda: _outbox_states(engine, "opened") == ["sent"])
    finally:
        await capture.stop()


async def test_permanent_refusal_is_recorded_and_temporary_one_retried(settings, engine, capture, daemon_factory):
    capture.reply["ana@cliente.es"] = "550 5.1.1 no such user"
    capture.reply["rui@cliente.pt"] = "451 4.7.1 greylisted, try later"
    s2 = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    d = await daemon_factory(s2)
    await send(d.smtp_port, make_mail(message_id="a@cliente.es"))
    await send(d.smtp_port, make_mail(frm="rui@cliente.pt", message_id="b@cliente.pt"), mail_from="rui@cliente.pt")

    def rows():
        with Session(engine) as s:
            return {r.recipient: r for r in s.exec(select(OutboxItem).where(OutboxItem.kind == "opened"))}

    await wait_until(lambda: rows().get("ana@cliente.es") is not None and rows()["ana@cliente.es"].state == "failed")
    assert rows()["ana@cliente.es"].last_error.startswith("550")
    await wait_until(lambda: rows().get("rui@cliente.pt") is not None and rows()["rui@cliente.pt"].attempts >= 2)
    assert rows()["rui@cliente.pt"].state == "queued"
    del capture.reply["rui@cliente.pt"]  # greylisting over
    await capture.wait_for(lambda c: c.to("rui@cliente.pt", "opened"))
    await wait_until(lambda: rows()["rui@cliente.pt"].state == "sent")


def _outbox_states(engine, kind):
    with Session(engine) as s:
        return [r.state for r in s.exec(select(OutboxItem).where(OutboxItem.kind == kind))]


async def test_smtp_refuses_declared_oversize_and_foreign_recipients(make_settings, engine, daemon_factory):
    import smtplib

    settings = make_settings(limits={"max_message_bytes": 2000})
    d = await daemon_factory(settings)

    def talk():
        with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10) as c:
            c.ehlo()
            assert c.has_extn("size") and int(c.esmtp_features["size"]) == 2000
            code, _ = c.mail("ana@cliente.es", ["SIZE=5000"])
            assert code == 552
            c.rset()
            c.mail("ana@cliente.es")
            code, _ = c.rcpt("someone@elsewhere.org")
            assert code == 550
            return True

    assert await asyncio.to_thread(talk)


async def test_lmtp_answers_once_per_recipient_and_stores_once(make_settings, engine, daemon_factory):
    settings = make_settings(smtp={"lmtp": True})
    d = await daemon_factory(settings)
    raw = make_mail(message_id="lmtp@cliente.es")

    async def converse():
        reader, writer = await asyncio.open_connection("127.0.0.1", d.smtp_port)

        async def reply():
            lines = []
            while True:
                line = (await reader.readline()).decode()
                lines.append(line)
                if line[3:4] != "-":
                    return lines

        await reply()
        for cmd in ("LHLO test", "MAIL FROM:<ana@cliente.es>", "RCPT TO:<consultas@example.org>",
                    "RCPT TO:<consultas+04@example.org>", "RCPT TO:<nobody@else.org>", "DATA"):
            writer.write(cmd.encode() + b"\r\n")
            out = await reply()
            if cmd.startswith("RCPT TO:<nobody"):
                assert out[-1].startswith("550")
        writer.write(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        first = await reply()
        second = await reply()
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()
        return first, second

    first, second = await converse()
    assert first[-1].startswith("250") and second[-1].startswith("250")
    await wait_until(lambda: _states(engine) == ["done"])
    with Session(engine) as s:
        item = s.exec(select(InboxItem)).one()
        assert item.channel == "lmtp"
        assert item.rcpt_tos == ["consultas@example.org", "consultas+04@example.org"]
        assert s.exec(select(Ticket)).one().category == "04"


def _maild(args, cfg, stdin=b"", env_extra=None):
    env = {**os.environ, "MAILD_SECRET": "s" * 32, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "maild", "--config", str(cfg), *args], input=stdin,
                          capture_output=True, env=env, timeout=60)


def test_ingest_exit_codes(tmp_path, db_url):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n[limits]\nmax_message_bytes = 5000\n')
    assert _maild(["db", "upgrade"], cfg).returncode == 0
    raw = make_mail(message_id="pipe@cliente.es")
    r = _maild(["ingest", "-", "--recipient", "consultas+04@example.org", "--sender", "ana@cliente.es"], cfg, raw)
    assert r.returncode == 0, r.stderr
    # the same message again: stored once, still exit 0
    assert _maild(["ingest", "-"], cfg, raw).returncode == 0
    f = tmp_path / "m.eml"
    f.write_bytes(raw)
    assert _maild(["ingest", str(f)], cfg).returncode == 0
    out = _maild(["inbox", "list", "--json"], cfg)
    import json

    rows = json.loads(out.stdout)
    assert len(rows) == 1 and rows[0]["channel"] == "pipe" and rows[0]["state"] == "new"
    assert set(rows[0]) >= {"id", "message_id", "channel", "state", "attempts", "error", "received_at"}
    # never takeable: garbage, oversize
    bad = _maild(["ingest", "-"], cfg, b"\x00\x01 not mail")
    assert bad.returncode == 65 and bad.stderr.decode().startswith("Error: ")
    big = _maild(["ingest", "-"], cfg, make_mail(body="x" * 6000))
    assert big.returncode == 65 and "max_message_bytes" in big.stderr.decode()
    # the database cannot be reached: the MTA must retry
    if db_url.startswith("sqlite"):
        broken = tmp_path / "broken.toml"
        (tmp_path / "adir.db").mkdir()
        broken.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "adir.db"}"\n')
        r = _maild(["ingest", "-"], broken, raw)
        assert r.returncode == 75, r.stderr
        assert "Traceback" not in r.stderr.decode()
    # a missing config must not bounce mail either
    r = _maild(["ingest", "-"], tmp_path / "missing.toml", raw)
    assert r.returncode == 75


def test_reply_committed_before_its_parent_still_threads(settings, engine):
    from maild.process import Processor

    parent = make_mail(message_id="parent@cliente.es")
    child = make_mail(message_id="child@cliente.es", in_reply_to="<parent@cliente.es>",
                      references="<parent@cliente.es>", subject="Re: Problema")
    store_now(engine, [inbox_row(child, "smtp", "ana@cliente.es", ["consultas@example.org"])])
    store_now(engine, [inbox_row(parent, "smtp", "ana@cliente.es", ["consultas@example.org"])])
    Processor(settings, engine).run_batch()
    assert _states(engine) == ["done", "done"]
    with Session(engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 1


def test_migrations_match_the_models(engine):
    from alembic import command

    from maild.storage.db import alembic_config

    command.check(alembic_config(engine))  # raises when autogenerate would find a difference


def test_a_message_that_keeps_failing_is_retried_then_quarantined_and_can_be_retried(settings, engine):
    import time

    from maild.process import Processor

    class Flaky(Processor):
        broken = True

        def process(self, session, item):
            if self.broken and item.message_id == "boom@cliente.es":
                raise RuntimeError("disk on fire")
            return super().process(session, item)

    store_now(engine, [inbox_row(make_mail(message_id="boom@cliente.es"), "smtp", "a@b.c", ["consultas@example.org"]),
                       inbox_row(make_mail(message_id="fine@cliente.es"), "smtp", "a@b.c", ["consultas@example.org"])])
    p = Flaky(settings, engine)
    deadline = time.monotonic() + 20
    while _states(engine)[0] != "quarantined" and time.monotonic() < deadline:
        p.run_batch()
        time.sleep(0.05)
    with Session(engine) as s:
        boom, fine = s.exec(select(InboxItem).order_by(InboxItem.id)).all()
    assert (boom.state, boom.attempts) == ("quarantined", settings.limits.max_attempts)
    assert "disk on fire" in boom.error and boom.raw  # kept, never dropped
    assert fine.state == "done"  # one bad message does not hold up the others
    # the operator fixes the cause and replays it (`maild inbox retry`, tested in test_cli)
    with transaction(engine) as s:
        item = s.get(InboxItem, boom.id)
        item.state, item.attempts = "new", 0
    p.broken = False
    p.run_batch()
    assert _states(engine) == ["done", "done"]
