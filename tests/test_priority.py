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


def test_a_rehearsal_warms_up_and_leaves_nothing(make_settings, engine):
    from sqlalchemy import func

    from maild.storage.models import Contact, Message, OutboxItem

    p = Processor(make_settings(), engine)
    p.rehearse()
    with Session(engine) as s:
        for model in (InboxItem, Ticket, Message, OutboxItem, Contact):
            assert s.exec(select(func.count()).select_from(model)).one() == 0, model
    _store(engine, 1)
    assert p.run_batch() == 1
    with Session(engine) as s:
        assert [t.id for t in s.exec(select(Ticket))] == [1]  # no ticket number was spent


def test_worker_metric_bumps_replay_into_the_daemons_registry():
    from maild import worker
    from maild.metrics import Metrics

    rec = worker.Recorder()
    rec.processed.labels("done").inc()
    rec.notices.labels("opened").inc(2)
    rec.held.inc()
    rec.latency.observe(0.3)
    m = Metrics()
    worker.replay(m, rec.take())
    assert rec.take() == []
    assert m.registry.get_sample_value("maild_processed_total", {"outcome": "done"}) == 1
    assert m.registry.get_sample_value("maild_notices_total", {"kind": "opened"}) == 2
    assert m.registry.get_sample_value("maild_held_total") == 1
    assert m.registry.get_sample_value("maild_processing_seconds_count") == 1
    assert m.registry.get_sample_value("maild_processing_seconds_sum") == 0.3


def test_the_write_gate_sees_a_waiting_writer_of_another_process():
    import ctypes
    import threading

    from maild.storage.db import WriteGate

    shared = (ctypes.c_int * 2)()  # as maild.daemon maps it for the worker: [urgent, priority]
    g = WriteGate(enabled=True)
    g.shared = shared
    assert g.waiting == 0 and g.urgent == 0
    shared[0] = 1  # the other process's receiver waits
    assert g.waiting == 1 and g.urgent == 1
    entered = threading.Event()

    def worker_writer():
        with g.hold():
            entered.set()

    t = threading.Thread(target=worker_writer)
    t.start()
    assert not entered.wait(0.2)  # the processor's write waits while a receiver does
    shared[0] = 0
    shared[1] = 1  # the other process's sender waits: not urgent, but the processor still lets it in
    assert g.urgent == 0 and g.waiting == 1
    assert not entered.wait(0.2)
    shared[1] = 0
    assert entered.wait(2)
    t.join()
    with g.hold(urgent=True):
        assert shared[0] == 1 and g.urgent == 1  # ours are seen by the other process
    assert shared[0] == 0


async def test_the_sender_pauses_between_deliveries_while_receivers_are_busy(make_settings, engine, capture):
    from maild.sender import Sender

    settings = make_settings(outbound={"port": capture.port}, limits={"processor_yield_ms": 10})
    _store(engine, 3)
    Processor(settings, engine).run_batch()  # three opened notices (and no group: no staff) queued
    sender = Sender(settings, engine)
    try:
        sender.receivers_busy = lambda: True
        t0 = time.monotonic()
        assert await sender.send_due() == 3
        assert time.monotonic() - t0 >= 0.2  # 10 x 10 ms before the second and before the third
        assert len(capture.messages) == 3
    finally:
        sender.close()


def test_a_new_workers_mapping_starts_with_the_writers_holding_now():
    import ctypes

    from maild.storage.db import WriteGate

    g = WriteGate(enabled=True)
    g.share((ctypes.c_int * 2)())
    with g.hold(urgent=True):
        fresh = (ctypes.c_int * 2)()  # the worker died and was restarted while a receiver held the gate
        g.share(fresh)
        assert list(fresh) == [1, 0]
    assert list(fresh) == [0, 0] and g.waiting == 0  # released into the new mapping: never below zero


def test_an_orphaned_worker_gives_up_a_count_its_dead_parent_left():
    import ctypes

    import pytest

    from maild.errors import TransientError
    from maild.storage.db import WriteGate

    g = WriteGate(enabled=True)
    g.shared = (ctypes.c_int * 2)(1, 0)  # the parent was killed while a receiver held the gate
    g.give_up = lambda: True  # its parent pid changed
    with pytest.raises(TransientError, match="is gone"):
        with g.hold():
            pass


def test_a_writer_waits_for_sqlites_lock_and_gets_it_when_freed(tmp_path):
    import sqlite3
    import threading

    from sqlalchemy import text

    from maild.storage.db import make_engine, upgrade, write_connection

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock ...
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()  # ... for 0.3 s
    t0 = time.monotonic()
    with write_connection(engine, urgent=True) as conn:  # retried, not refused at once
        conn.execute(text("UPDATE imap_state SET uidvalidity = 0 WHERE 0"))
        assert time.monotonic() - t0 >= 0.25
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000  # restored for the others
    other.close()
    engine.dispose()


def test_the_workers_engine_skips_its_own_fsync_but_receivers_do_not(tmp_path):
    from maild.storage.db import make_engine

    url = f"sqlite:///{tmp_path / 'm.db'}"
    worker, receivers = make_engine(url, synchronous="NORMAL"), make_engine(url)
    with worker.connect() as a, receivers.connect() as b:
        assert a.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert b.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    worker.dispose()
    receivers.dispose()
