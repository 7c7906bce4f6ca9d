"""Several `maild serve` processes on one PostgreSQL: one SIGKILLed half-way; nothing lost or doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from maild.storage.db import make_engine
from maild.storage.models import InboxItem, Message, Ticket
from tests.conftest import free_port, make_mail, serve_config, wait_until

N = 1000


def write_config(path, db_url: str, smtp_port: int, smarthost: int):
    return serve_config(path, db_url, smtp_port=smtp_port, smarthost=smarthost, secret_file=False, extra={
        "starttls = false": "starttls = false\ntimeout_seconds = 2\nretry_base_seconds = 0.5",
        "max_attempts = 5": "max_attempts = 5\nclaim_timeout_seconds = 3",
        "new_tickets_per_hour = 20": "new_tickets_per_hour = 100000",
    })


async def test_three_instances_one_killed_half_way(db_url, tmp_path, capture):
    if not db_url.startswith("postgresql"):
        pytest.skip("several instances need PostgreSQL: this runs in the PostgreSQL pass of make test")
    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "MAILD_SECRET": "m" * 32}
    configs = []
    for i, port in enumerate(ports):
        configs.append(write_config(tmp_path / f"c{i}.toml", db_url, port, capture.port))
    subprocess.run([sys.executable, "-m", "maild", "--config", str(configs[0]), "db", "upgrade"], env=env,
                   check=True, capture_output=True, timeout=60)

    def serve(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "maild", "--config", str(configs[i]), "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [serve(i) for i in range(3)]
    accepted: list[str] = []
    killed = threading.Event()
    try:
        def wait_listening(port: int) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                    return
                except OSError:
                    time.sleep(0.1)
            raise AssertionError(f"instance on {port} did not start")

        for port in ports:
            await asyncio.to_thread(wait_listening, port)

        def sender(worker: int) -> list[str]:
            """Like an MTA: a refused or broken connection is retried on the next instance."""
            ok: list[str] = []
            clients: dict[int, smtplib.SMTP] = {}
            for n in range(worker, N, 8):
                mid = f"scale{n}@cliente.es"
                raw = make_mail(frm=f"user{n}@cliente.es", message_id=mid, subject=f"Consulta {n}")
                for attempt in range(30):
                    port = ports[(n + attempt) % 3]
                    try:
                        if port not in clients:
                            clients[port] = smtplib.SMTP("127.0.0.1", port, timeout=10)
                        clients[port].sendmail(f"user{n}@cliente.es", ["consultas@example.org"], raw)
                        ok.append(mid)
                        break
                    except (OSError, smtplib.SMTPException):
                        clients.pop(port, None)
                        time.sleep(0.05)
                if n >= N // 2 and worker == 0 and not killed.is_set():
                    killed.set()
                    procs[1].send_signal(signal.SIGKILL)  # half-way, with its queues in hand
            for c in clients.values():
                try:
                    c.quit()
                except (OSError, smtplib.SMTPException):
                    pass
            return ok

        async def restart_killed() -> None:
            deadline = time.monotonic() + 120
            while procs[1].poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert killed.is_set(), "the kill did not happen"
            await asyncio.sleep(1)
            procs[1] = serve(1)

        results, _ = await asyncio.gather(asyncio.gather(*(asyncio.to_thread(sender, w) for w in range(8))),
                                          restart_killed())
        accepted = [m for r in results for m in r]
        assert len(accepted) == N  # every message got a 250 from some instance
        engine = make_engine(db_url)

        def settled() -> bool:
            with Session(engine) as s:
                waiting = s.exec(select(func.count()).select_from(InboxItem)
                                 .where(InboxItem.state != "done")).one()
            opened = {m.msg["X-Maild-Ticket"] for m in capture.messages if m.msg["X-Maild-Notice"] == "opened"}
            return waiting == 0 and len(opened) >= N

        await wait_until(settled, timeout=180, interval=0.5)
        await asyncio.sleep(3)  # anything sent twice would arrive now
        with Session(engine) as s:
            inbound = s.exec(select(Message.message_id).where(Message.direction == "in")).all()
            tickets = s.exec(select(func.count()).select_from(Ticket)).one()
            inbox = s.exec(select(func.count()).select_from(InboxItem)).one()
        assert sorted(inbound) == sorted(accepted)  # every accepted message stored, once
        assert inbox == N and tickets == N
        opened = Counter(m.msg["X-Maild-Ticket"] for m in capture.messages if m.msg["X-Maild-Notice"] == "opened")
        assert len(opened) == N and set(opened.values()) == {1}  # exactly one opened notice per ticket
        deliveries = Counter((m.msg["Message-ID"], tuple(m.rcpt_tos)) for m in capture.messages)
        assert max(deliveries.values()) == 1  # no notice went out twice
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
