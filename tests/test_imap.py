"""IMAP ingestion against a real Dovecot that the suite starts itself on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import tracemalloc

import pytest
from sqlmodel import Session, func, select

from maild.imap import KEYWORD, ImapReader
from maild.storage.models import ImapState, InboxItem, Message, Ticket
from tests.conftest import make_mail, serve_config, wait_until
from tests.servers import Dovecot

PW_ENV = "MAILD_TEST_IMAP_PASSWORD"


@pytest.fixture
def dovecot():
    d = Dovecot()
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def imap_settings(make_settings, dovecot, monkeypatch):
    monkeypatch.setenv(PW_ENV, dovecot.password)

    def make(**imap):
        return make_settings(imap={"enabled": True, "host": "127.0.0.1", "port": dovecot.port, "tls": "none",
                                   "user": dovecot.user, "password_env": PW_ENV, "folder": "INBOX",
                                   "processed_folder": "Processed", "idle": True, "poll_seconds": 1, **imap})

    return make


def count(engine, model=InboxItem) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()


def folder_count(dovecot, folder) -> int:
    c = dovecot.client()
    try:
        if not c.folder_exists(folder):
            return 0
        return c.select_folder(folder, readonly=True)[b"EXISTS"]
    finally:
        c.logout()


def consulta(i: int, size: int = 0) -> bytes:
    return make_mail(frm=f"user{i}@cliente.es", message_id=f"imap{i}@cliente.es", subject=f"Consulta {i}",
                     body=f"Consulta número {i}. " + "x" * size)


async def test_message_in_inbox_becomes_a_ticket_and_is_moved(imap_settings, engine, capture, daemon_factory,
                                                              dovecot):
    dovecot.deliver(consulta(1))
    s = imap_settings()
    s = s.model_copy(update={"outbound": s.outbound.model_copy(update={"port": capture.port})})
    await daemon_factory(s)
    await capture.wait_for(lambda c: c.to("user1@cliente.es", "opened"))
    assert count(engine, Ticket) == 1
    with Session(engine) as ses:
        assert ses.exec(select(InboxItem)).one().channel == "imap"
    assert folder_count(dovecot, "INBOX") == 0
    assert folder_count(dovecot, "Processed") == 1  # created when missing


async def test_idle_picks_up_a_new_message_within_seconds(imap_settings, engine, dovecot):
    reader = ImapReader(imap_settings(), engine, backoff_max=1)
    task = asyncio.create_task(reader.run())
    try:
        await wait_until(reader.connected.is_set)
        await asyncio.sleep(0.5)  # in IDLE now
        c = dovecot.client()
        t0 = time.monotonic()
        c.append("INBOX", consulta(2))
        c.logout()
        await wait_until(lambda: count(engine) == 1, timeout=10)
        assert time.monotonic() - t0 < 5  # loosely: IDLE, not the 1 s poll fallback or worse
    finally:
        reader.stop()
        await asyncio.wait_for(task, 10)


async def test_dovecot_stopped_and_started_mid_run_loses_and_doubles_nothing(imap_settings, engine, dovecot,
                                                                            caplog):
    caplog.set_level(logging.INFO, logger="maild.imap")
    reader = ImapReader(imap_settings(), engine, backoff_max=0.5)
    task = asyncio.create_task(reader.run())
    try:
        for i in range(3):
            dovecot.deliver(consulta(i))
        await wait_until(lambda: count(engine) == 3)
        dovecot.stop()
        for i in range(3, 6):
            dovecot.deliver(consulta(i))
        await asyncio.sleep(2)  # several reconnect attempts while it is down
        dovecot.start()
        await wait_until(lambda: count(engine) == 6, timeout=45)
        await wait_until(lambda: folder_count(dovecot, "INBOX") == 0)
    finally:
        reader.stop()
        await asyncio.wait_for(task, 10)
    assert count(engine) == 6
    assert folder_count(dovecot, "Processed") == 6
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1  # once per outage, not once per try
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_maild_killed_between_commit_and_move_stores_nothing_twice(imap_settings, engine, dovecot, tmp_path,
                                                                  db_url):
    n = 300
    for i in range(n):
        dovecot.deliver(consulta(i))
    serve_config(tmp_path / "config.toml", db_url, secret_file=False, extra={
        "[imap]\nenabled = false": "[imap]\nenabled = true",
        "port = 993": f"port = {dovecot.port}",
        'tls = "tls"': 'tls = "none"',
        'user = ""\npassword_env = "MAILD_IMAP_PASSWORD"': f'user = "{dovecot.user}"\npassword_env = "{PW_ENV}"',
        # on PostgreSQL the dead instance's claims come back after this lease, not at restart
        "max_attempts = 5": "max_attempts = 5\nclaim_timeout_seconds = 2",
    })
    env = {**os.environ, "MAILD_CONFIG": str(tmp_path / "config.toml"), "MAILD_SECRET": "k" * 32,
           PW_ENV: dovecot.password}

    def serve():
        import subprocess

        return subprocess.Popen([sys.executable, "-m", "maild", "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    proc = serve()
    deadline = time.monotonic() + 60
    while count(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-sync: some batches committed, some moved, some neither
    proc.wait()
    partial = count(engine)
    assert 0 < partial
    proc = serve()
    try:
        deadline = time.monotonic() + 120
        while (count(engine, Ticket) < n or folder_count(dovecot, "INBOX")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert count(engine) == n
    assert count(engine, Ticket) == n
    with Session(engine) as s:
        assert s.exec(select(func.count(func.distinct(Message.message_id))).where(Message.direction == "in")).one() == n
    assert folder_count(dovecot, "maild-processed") == n  # the shipped config's processed_folder


class CrashBeforeMove(ImapReader):
    def take(self, client, uids):
        raise RuntimeError("killed between commit and move")


def test_uidvalidity_reset_is_noticed_and_doubles_nothing(imap_settings, engine, dovecot, caplog):
    settings = imap_settings(folder="support")
    for i in range(5):
        dovecot.deliver(consulta(i), folder="support")
    first = CrashBeforeMove(settings, engine)
    c = first.connect()
    first.select(c)
    with pytest.raises(RuntimeError):
        first.sync(c)
    c.logout()
    assert count(engine) == 5 and folder_count(dovecot, "support") == 5
    # the folder is recreated: same messages, new UIDs and UIDVALIDITY, plus two new ones
    admin = dovecot.client()
    admin.select_folder("support")
    raws = [d[b"BODY[]"] for d in admin.fetch(admin.search("ALL"), ["BODY[]"]).values()]
    admin.close_folder()
    admin.delete_folder("support")
    time.sleep(1.1)  # Dovecot's UIDVALIDITY is time based
    admin.create_folder("support")
    for raw in [*raws, consulta(5), consulta(6)]:
        admin.append("support", raw)
    admin.logout()
    with Session(engine) as s:
        before = s.get(ImapState, first.mailbox).uidvalidity
    caplog.set_level(logging.WARNING, logger="maild.imap")
    second = ImapReader(settings, engine)
    c = second.connect()
    second.select(c)
    assert second.sync(c) == 7
    c.logout()
    assert count(engine) == 7  # the five already stored are recognised
    with Session(engine) as s:
        assert s.get(ImapState, first.mailbox).uidvalidity != before
    assert any("UIDVALIDITY changed" in r.getMessage() for r in caplog.records)
    assert folder_count(dovecot, "support") == 0


def test_big_mailbox_syncs_in_bounded_memory(imap_settings, engine, dovecot, caplog):
    n, size = 2000, 20_000
    for i in range(n):
        dovecot.deliver(consulta(i, size))  # ≈ 40 MB in all
    caplog.set_level(logging.INFO, logger="maild.imap")
    reader = ImapReader(imap_settings(), engine)
    c = reader.connect()
    reader.select(c)
    tracemalloc.start()
    try:
        assert reader.sync(c) == n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        c.logout()
    assert count(engine) == n
    assert peak < 16 * 1024 * 1024 + 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a 40 MB mailbox"
    assert any(f"{n}/{n} read" in r.getMessage() for r in caplog.records)  # progress is logged


@pytest.fixture
def dovecot_without_move():
    d = Dovecot()
    d.write_config()
    d.conf.write_text(d.conf.read_text() + "\nimap_capability = IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ UIDPLUS\n")
    d.start()
    yield d
    d.cleanup()


def test_without_move_messages_are_flagged_seen_and_keyword(make_settings, engine, dovecot_without_move,
                                                            monkeypatch):
    d = dovecot_without_move
    monkeypatch.setenv(PW_ENV, d.password)
    settings = make_settings(imap={"enabled": True, "port": d.port, "tls": "none", "user": d.user,
                                   "password_env": PW_ENV})
    for i in range(3):
        d.deliver(consulta(i))
    reader = ImapReader(settings, engine)
    c = reader.connect()
    assert b"MOVE" not in c.capabilities()
    reader.select(c)
    assert reader.sync(c) == 3
    assert reader.sync(c) == 0  # flagged ones are not read again
    c.logout()
    admin = d.client()
    admin.select_folder("INBOX", readonly=True)
    flags = admin.get_flags(admin.search("ALL"))
    admin.logout()
    assert len(flags) == 3 and all(b"\\Seen" in f and KEYWORD in f for f in flags.values())
    assert count(engine) == 3


def test_missing_password_is_a_config_error(make_settings, engine, monkeypatch):
    from maild.errors import ConfigError

    monkeypatch.delenv("NOPE_PW", raising=False)
    settings = make_settings(imap={"enabled": True, "tls": "none", "password_env": "NOPE_PW"})
    with pytest.raises(ConfigError, match="imap: no password"):
        ImapReader(settings, engine)


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_tls_and_starttls_with_a_private_ca(make_settings, engine, monkeypatch, mode):
    d = Dovecot(tls=True)
    d.start()
    try:
        monkeypatch.setenv(PW_ENV, d.password)
        port = d.tls_port if mode == "tls" else d.port
        settings = make_settings(imap={"enabled": True, "port": port, "tls": mode, "user": d.user,
                                       "password_env": PW_ENV, "ca_file": str(d.ca_file)})
        d.deliver(consulta(1))
        reader = ImapReader(settings, engine)
        c = reader.connect()
        reader.select(c)
        assert reader.sync(c) == 1
        c.logout()
        # without the CA the certificate is refused: no silent downgrade
        import ssl

        untrusted = make_settings(imap={"enabled": True, "port": port, "tls": mode, "user": d.user,
                                        "password_env": PW_ENV})
        with pytest.raises(ssl.SSLError):
            ImapReader(untrusted, engine).connect()
    finally:
        d.cleanup()


async def test_poll_fallback_and_password_file(imap_settings, engine, dovecot, tmp_path):
    pw = tmp_path / "imap.password"
    pw.write_text(dovecot.password + "\n")
    reader = ImapReader(imap_settings(idle=False, poll_seconds=1, password_env="", password_file=str(pw)), engine)
    task = asyncio.create_task(reader.run())
    try:
        await wait_until(reader.connected.is_set)
        dovecot.deliver(consulta(9))
        await wait_until(lambda: count(engine) == 1, timeout=10)
    finally:
        reader.stop()
        await asyncio.wait_for(task, 10)
