"""Operating maild: privacy, auto-close, metrics, stats, check, operator commands, signals."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import signal
import urllib.request
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from maild import privacy
from maild.addresses import reply_address
from maild.cli.main import app, normalize_args
from maild.process import Processor
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import InboxItem, Journal, OutboxItem, Staff, Ticket, utcnow
from tests.conftest import ROOT, free_port, make_mail, send, serve_config, start_serve, wait_until

REQ = "ana.secreta@cliente.es"
SECRET_BODY = "Mi número de cuenta es ES9121000418450200051332"


def add_staff(engine, address="drim@example.org", group="DRIM"):
    with Session(engine) as s:
        s.add(Staff(address=address, name="Dolores", group=group))
        s.commit()


def staff_raw(settings, tid, body, mid):
    return (b"Authentication-Results: mx.example.org; auth=pass smtp.auth=drim@example.org\r\n"
            + make_mail(frm="drim@example.org", to=reply_address(settings, tid), body=body, message_id=mid))


def conversation(settings, engine, clock=utcnow) -> Processor:
    """A consulta with an attachment, a staff answer, a requester reply."""
    add_staff(engine)
    m = EmailMessage(policy=SMTP)
    m["From"], m["To"], m["Subject"], m["Message-ID"] = f"Ana Secreta <{REQ}>", "consultas@example.org", \
        "Cuenta bancaria", "<c1@cliente.es>"
    m.set_content(SECRET_BODY)
    m.add_attachment(b"PDF-SECRETO-1234", maintype="application", subtype="pdf", filename="extracto.pdf")
    p = Processor(settings, engine, clock=clock)
    store_now(engine, [inbox_row(m.as_bytes(), "smtp", REQ, ["consultas@example.org"])])
    p.run_batch()
    store_now(engine, [inbox_row(staff_raw(settings, 1, "Recibido, lo revisamos.", "s1@example.org"), "smtp",
                                 "drim@example.org", [reply_address(settings, 1)])])
    p.run_batch()
    store_now(engine, [inbox_row(make_mail(frm=REQ, body="Gracias, " + SECRET_BODY, message_id="c2@cliente.es",
                                           in_reply_to="<c1@cliente.es>"), "smtp", REQ, ["consultas@example.org"])])
    p.run_batch()
    return p


def test_export_then_forget_leaves_no_byte_behind(settings, engine, tmp_path):
    conversation(settings, engine)
    data = privacy.export(engine, REQ)
    assert data["address"] == REQ and data["name"] == "Ana Secreta"
    ticket = data["tickets"][0]
    assert any(SECRET_BODY in m["text"] for m in ticket["messages"])
    att = next(a for m in ticket["messages"] for a in m["attachments"])
    assert base64.b64decode(att["data"]) == b"PDF-SECRETO-1234"
    assert any(m["raw"] for m in ticket["messages"])

    report = privacy.forget(engine, REQ)
    assert report["tickets"] == 1 and report["blobs_deleted"] == 1
    with Session(engine) as s:
        t = s.exec(select(Ticket)).one()
        assert (t.state, t.category) == ("en_curso", "01")  # anonymous statistics stay
        assert any("borrados" in j.note for j in s.exec(select(Journal)))
    engine.dispose()
    db = settings.database.url.removeprefix("sqlite:///")
    if not settings.database.url.startswith("sqlite"):
        pytest.skip("file-level check is for SQLite; PostgreSQL is VACUUMed")
    from pathlib import Path

    blob = b"".join(Path(p).read_bytes() for p in (db, db + "-wal") if os.path.exists(p))
    for needle in (REQ.encode(), b"ana.secreta", SECRET_BODY.encode(), b"ES9121000418450200051332",
                   b"PDF-SECRETO-1234", base64.b64encode(b"PDF-SECRETO-1234"), b"Ana Secreta"):
        assert needle not in blob, needle
    with pytest.raises(Exception, match="nothing is held"):
        privacy.export(engine, REQ)


def test_contacts_cli_round_trip(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", "s" * 32)
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{db_url}"'))
    runner = CliRunner()

    def cli(*args, **kw):
        return runner.invoke(app, normalize_args(["--config", str(cfg), *args]), **kw)

    assert cli("db", "upgrade").exit_code == 0
    from maild import config
    from maild.storage.db import make_engine

    settings = config.load(cfg)
    engine = make_engine(settings.database.url, settings.base_dir)
    store_now(engine, [inbox_row(make_mail(frm=REQ, body=SECRET_BODY), "pipe", REQ, ["consultas@example.org"])])
    Processor(settings, engine).run_batch()
    out = cli("contacts", "export", REQ)
    assert out.exit_code == 0 and json.loads(out.stdout)["tickets"][0]["messages"][0]["text"] == SECRET_BODY
    no = cli("contacts", "forget", REQ, input="n\n")
    assert no.exit_code == 1 and "Nothing erased" in no.stderr
    yes = cli("contacts", "forget", REQ, "--yes")
    assert yes.exit_code == 0 and "forgotten: 1 ticket(s)" in yes.stdout
    again = cli("contacts", "export", REQ)
    assert again.exit_code == 1 and again.stderr.startswith("Error: nothing is held")


def test_auto_close_with_a_moved_clock(make_settings, engine):
    settings = make_settings(tickets={"auto_close_days": 7})
    add_staff(engine)
    p = Processor(settings, engine)
    store_now(engine, [inbox_row(make_mail(message_id="q@cliente.es"), "smtp", "ana@cliente.es",
                                 ["consultas@example.org"])])
    p.run_batch()
    store_now(engine, [inbox_row(staff_raw(settings, 1, "Pruebe esto.", "s@example.org"), "smtp",
                                 "drim@example.org", [reply_address(settings, 1)])])
    p.run_batch()
    assert p.auto_close() == []  # not yet
    later = Processor(settings, engine, clock=lambda: utcnow() + dt.timedelta(days=8))
    assert later.auto_close() == [1]
    with Session(engine) as s:
        t = s.get(Ticket, 1)
        assert t.state == "cerrada"
        closed = s.exec(select(OutboxItem).where(OutboxItem.kind == "closed")).one()
        entry = s.exec(select(Journal).where(Journal.author == "maild").order_by(Journal.id.desc())).first()
    assert b"Auto-Submitted: auto-generated" in closed.raw
    assert "automáticamente" in entry.note and {"field": "state", "old": "en_curso", "new": "cerrada"} in entry.changes
    assert later.auto_close() == []  # once


def test_auto_close_leaves_tickets_waiting_on_staff(make_settings, engine):
    settings = make_settings(tickets={"auto_close_days": 7})
    p = conversation(settings, engine)  # the requester wrote last
    later = Processor(settings, engine, clock=lambda: utcnow() + dt.timedelta(days=30))
    assert later.auto_close() == []
    del p


async def test_metrics_count_a_scripted_conversation(settings, engine, capture, daemon_factory):
    add_staff(engine)
    s = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    d = await daemon_factory(s)
    await send(d.smtp_port, make_mail(message_id="m1@cliente.es"))
    await send(d.smtp_port, staff_raw(settings, 1, "Respuesta.", "m2@example.org"), mail_from="drim@example.org",
               rcpts=[reply_address(settings, 1)])
    await send(d.smtp_port, make_mail(frm="drim@example.org", to=reply_address(settings, 1), body="#close",
                                      message_id="forged@x"), mail_from="drim@example.org",
               rcpts=[reply_address(settings, 1)])
    await capture.wait_for(lambda c: c.to("ana@cliente.es", "answer") and c.to("drim@example.org", "group_reply"))
    await wait_until(lambda: d.metrics.registry.get_sample_value("maild_sent_total", {}) >= 4)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/metrics", timeout=5).read().decode())
    def value(name, **labels):
        lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
        line = next(x for x in body.splitlines() if x.startswith(f"{name}{{{lab}}} " if lab else f"{name} "))
        return float(line.split()[-1])

    assert value("maild_received_total", channel="smtp") == 3
    assert value("maild_forged_staff_total") == 1
    assert value("maild_processed_total", outcome="opened") == 1
    assert value("maild_notices_total", kind="opened") == 1
    assert value("maild_notices_total", kind="answer") == 1
    assert value("maild_queue_depth", queue="inbox", state="done") == 3
    assert "maild_processing_seconds_bucket" in body and "maild_queue_oldest_seconds" in body


def test_tickets_apply_runs_the_staff_engine_as_that_member(cfg_and_engine):
    cfg, engine, settings = cfg_and_engine
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, normalize_args(["--config", str(cfg), *args]))

    store_now(engine, [inbox_row(make_mail(message_id="q@cliente.es"), "pipe", "ana@cliente.es",
                                 ["consultas@example.org"])])
    Processor(settings, engine).run_batch()
    assert cli("staff", "add", "drim@example.org", "--name", "D", "--group", "DRIM").exit_code == 0
    r = cli("tickets", "apply", "1", "#priority alta\n#close", "--as", "drim@example.org")
    assert r.exit_code == 0, r.output
    assert "state: nueva → cerrada" in r.stdout and "closed" in r.stdout
    with Session(engine) as s:
        t = s.get(Ticket, 1)
        assert (t.state, t.priority) == ("cerrada", "alta")
        entry = s.exec(select(Journal).where(Journal.author == "drim@example.org")).one()
        assert {c["field"] for c in entry.changes} == {"state", "priority"}
        assert s.exec(select(OutboxItem).where(OutboxItem.kind == "closed")).one()
    bad = cli("tickets", "apply", "1", "#assign NADIE", "--as", "drim@example.org")
    assert bad.exit_code == 1 and "no such group" in bad.stderr
    assert cli("tickets", "apply", "9", "#close", "--as", "drim@example.org").exit_code == 1
    who = cli("tickets", "apply", "1", "#reopen", "--as", "eve@example.org")
    assert who.exit_code == 1 and "not active staff" in who.stderr


@pytest.fixture
def cfg_and_engine(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", "s" * 32)
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{db_url}"'))
    from maild import config
    from maild.storage.db import make_engine, upgrade

    settings = config.load(cfg)
    engine = make_engine(settings.database.url, settings.base_dir)
    upgrade(engine)
    yield cfg, engine, settings
    engine.dispose()


def test_stats_by_state_and_category(cfg_and_engine):
    cfg, engine, settings = cfg_and_engine
    add_staff(engine)
    p = Processor(settings, engine)
    for i, to in enumerate(("consultas@example.org", "consultas+04@example.org", "consultas+04@example.org")):
        store_now(engine, [inbox_row(make_mail(message_id=f"st{i}@x", frm=f"u{i}@x.es", to=to), "pipe",
                                     f"u{i}@x.es", [to])])
    p.run_batch()
    p.operator_command(1, "Respuesta", "drim@example.org")
    r = CliRunner().invoke(app, normalize_args(["--config", str(cfg), "stats", "--json"]))
    data = json.loads(r.stdout)
    assert data["tickets"] == 3 and data["by_state"] == {"nueva": 2, "en_curso": 1}
    assert data["by_category"]["04"]["tickets"] == 2
    assert data["by_category"]["01"]["first_response_p50_h"] is not None
    table = CliRunner().invoke(app, normalize_args(["--config", str(cfg), "stats"]), env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "3 ticket(s)" in table.stdout
    assert CliRunner().invoke(app, normalize_args(["--config", str(cfg), "stats", "--period", "x"])).exit_code == 1


async def test_check_gives_a_verdict_per_part(cfg_and_engine, capture):
    from maild import config
    from maild.check import run_checks

    cfg, engine, settings = cfg_and_engine
    s = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    results = {n: (ok, d) for n, ok, d in await asyncio.to_thread(run_checks, s)}
    assert results["config"][0] and results["database"][0] and results["smarthost"][0]
    assert results["imap"][0] is None and results["dkim"][0] is None
    down = s.model_copy(update={"outbound": s.outbound.model_copy(update={"port": free_port()})})
    assert (await asyncio.to_thread(run_checks, down))[3][1] is False
    # a DKIM key and the record DNS publishes for it
    key_out = cfg.parent / "k.pem"
    r = CliRunner().invoke(app, normalize_args(["--config", str(cfg), "dkim", "keygen", "--selector", "s1",
                                                "--out", str(key_out)]))
    record = r.stdout.strip().splitlines()[-1]
    signed = s.model_copy(update={"outbound": s.outbound.model_copy(update={"dkim_selector": "s1",
                                                                             "dkim_key_file": str(key_out)})})
    good = dict((n, ok) for n, ok, _ in await asyncio.to_thread(run_checks, signed, lambda name: [record]))
    assert good["dkim key"] and good["dkim dns"]
    other = dict((n, ok) for n, ok, _ in await asyncio.to_thread(run_checks, signed, lambda name: ["v=DKIM1; p=AAAA"]))
    assert other["dkim dns"] is False
    del config


def test_check_cli_exits_1_when_a_part_fails(cfg_and_engine):
    cfg, _, _ = cfg_and_engine
    cfg.write_text(cfg.read_text().replace("port = 2526", f"port = {free_port()}"))
    r = CliRunner().invoke(app, normalize_args(["--config", str(cfg), "check"]))
    assert r.exit_code == 1 and "FAIL  smarthost" in r.stdout and "ok    database" in r.stdout


async def test_sigterm_during_an_smtp_transaction_loses_nothing(tmp_path, db_url, capture):
    port = free_port()
    serve_config(tmp_path / "config.toml", db_url, smtp_port=port, smarthost=capture.port)
    proc = await start_serve(tmp_path / "config.toml")
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)

        async def say(line: bytes) -> bytes:
            writer.write(line)
            await writer.drain()
            return await reader.readline()

        await reader.readline()
        for cmd in (b"EHLO t\r\n",):
            writer.write(cmd)
            await writer.drain()
            while (await reader.readline())[3:4] == b"-":
                pass
        assert (await say(b"MAIL FROM:<ana@cliente.es>\r\n")).startswith(b"250")
        assert (await say(b"RCPT TO:<consultas@example.org>\r\n")).startswith(b"250")
        assert (await say(b"DATA\r\n")).startswith(b"354")
        raw = make_mail(message_id="sigterm@cliente.es")
        writer.write(raw[: len(raw) // 2])
        await writer.drain()
        proc.send_signal(signal.SIGTERM)  # mid-DATA
        await asyncio.sleep(0.3)
        # a new client is no longer taken
        with pytest.raises(OSError):
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.close()
            raise OSError("connected")  # pragma: no cover - only if the listener stayed open
        final = await say(raw[len(raw) // 2:] + b".\r\n")
        assert final.startswith(b"250"), final
        writer.close()
    finally:
        _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    from maild.storage.db import make_engine

    e = make_engine(db_url, tmp_path)
    with Session(e) as s:
        item = s.exec(select(InboxItem)).one()
        assert item.message_id == "sigterm@cliente.es" and item.state == "done"
    e.dispose()
    assert capture.to("ana@cliente.es", "opened")  # even the outbox was flushed before exit


def test_json_logs_carry_ticket_and_message_id(settings, engine, capsys):
    import logging

    from maild import logs

    logs.setup("json", "INFO")
    try:
        store_now(engine, [inbox_row(make_mail(message_id="log@cliente.es"), "smtp", "ana@cliente.es",
                                     ["consultas@example.org"])])
        Processor(settings, engine).run_batch()
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    opened = next(x for x in lines if "opened" in x["message"])
    assert opened["ticket"] == 1 and opened["message_id"] == "log@cliente.es" and opened["level"] == "INFO"


async def test_sighup_reload_picks_up_the_knowledge_base(make_settings, engine, daemon_factory, tmp_path):
    import shutil

    from maild.storage.models import Article

    kb_dir = tmp_path / "kb"
    shutil.copytree(ROOT / "kb", kb_dir)
    d = await daemon_factory(make_settings(web={"listen": "127.0.0.1:0", "kb_dir": str(kb_dir)}))
    with Session(engine) as s:  # synced at start
        assert s.exec(select(Article).where(Article.slug == "app-omie", Article.language == "es")).one()
    page = kb_dir / "es" / "app-omie.md"
    page.write_text(page.read_text().replace('title = "La APP OMIE"', 'title = "La aplicación móvil"'))
    # serve_forever wires SIGHUP to reload(); this runs what the signal runs
    await d.reload()
    with Session(engine) as s:
        assert s.exec(select(Article).where(Article.slug == "app-omie", Article.language == "es")).one().title \
            == "La aplicación móvil"
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/a/app-omie", timeout=5).read().decode())
    assert "La aplicación móvil" in body
