"""Receivers first: while SMTP transactions are open the processor pauses between messages."""

from __future__ import annotations

import time

from sqlmodel import Session, select

from maild.process import Processor
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import InboxItem, Ticket
from tests.conftest import make_mail


def _store(engine, n):
    store_now(engine, [inbox_row(make_mail(message_id=f"b{i}@cliente.es", frm=f"u{i}@cliente.es"), "smtp",
                                 f"u{i}@cliente.es", ["consultas@example.org"]) for i in range(n)])


def test_processor_pauses_while_receivers_are_busy_but_never_starves(make_settings, engine):
    settings = make_settings(limits={"processor_yield_ms": 60})
    _store(engine, 3)
    p = Processor(settings, engine)
    busy_checks = []
    p.receivers_busy = lambda: busy_checks.append(1) or True
    t0 = time.monotonic()
    assert p.run_batch() == 3
    elapsed = time.monotonic() - t0
    with Session(engine) as s:
        assert {i.state for i in s.exec(select(InboxItem))} == {"done"}  # every message moved on
        assert len(s.exec(select(Ticket)).all()) == 3
    assert p.yielded == 2 and elapsed >= 0.12  # a pause between each two messages, none after the last


def test_no_pause_when_receivers_are_idle_or_the_pause_is_off(make_settings, engine):
    _store(engine, 3)
    p = Processor(make_settings(), engine)
    p.receivers_busy = lambda: False
    assert p.run_batch() == 3 and p.yielded == 0
    _store_more = [inbox_row(make_mail(message_id=f"c{i}@cliente.es", frm=f"v{i}@cliente.es"), "smtp",
                             f"v{i}@cliente.es", ["consultas@example.org"]) for i in range(3)]
    store_now(engine, _store_more)
    off = Processor(make_settings(limits={"processor_yield_ms": 0}), engine)
    off.receivers_busy = lambda: True
    assert off.run_batch() == 3 and off.yielded == 0


async def test_the_daemon_tells_the_processor_when_smtp_transactions_are_open(daemon):
    import asyncio
    import smtplib

    assert daemon.processor.receivers_busy() is False
    client = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", daemon.smtp_port)
    try:
        await asyncio.to_thread(client.ehlo)
        await asyncio.to_thread(client.mail, "ana@cliente.es")
        assert daemon.processor.receivers_busy() is True  # between MAIL FROM and the end of DATA
        await asyncio.to_thread(client.rset)
        assert daemon.processor.receivers_busy() is False
    finally:
        await asyncio.to_thread(client.quit)
