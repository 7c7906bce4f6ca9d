"""The durable inbox: raw bytes committed before anyone is told "accepted" (SPEC §6).

`InboxWriter` is a group commit: receivers `await put(...)`; one writer
thread takes everything queued since its last COMMIT and inserts it in one
transaction, then resolves every waiter. With synchronous=FULL each COMMIT
costs an fsync, so under a burst many messages share one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from maild.errors import TransientError
from maild.parse import dedup_key
from maild.storage import repo
from maild.storage.db import write_connection
from maild.storage.models import utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 256


def inbox_row(raw: bytes, channel: str, mail_from: str | None, rcpt_tos: list[str]) -> dict:
    key, mid = dedup_key(raw)
    now = utcnow()
    return {
        "dedup_key": key,
        "message_id": mid,
        "channel": channel,
        "mail_from": mail_from,
        "rcpt_tos": [r.lower() for r in rcpt_tos],
        "raw": raw,
        "state": "new",
        "attempts": 0,
        "error": "",
        "received_at": now,
        "next_attempt_at": now,
    }


def store_now(engine: Engine, rows: list[dict]) -> None:
    """Insert and commit synchronously (the pipe receiver, and the writer thread)."""
    try:
        with write_connection(engine, urgent=True) as conn:
            repo.insert_inbox(conn, rows)
    except Exception as exc:  # the database is down, locked or full: the sender must retry
        raise TransientError(f"cannot store the message: {exc}") from exc


class InboxWriter:
    def __init__(self, engine: Engine, on_commit: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.on_commit = on_commit
        self._queue: list[tuple[dict, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maild-inbox")
        self._closed = False

    async def put(self, raw: bytes, channel: str, mail_from: str | None, rcpt_tos: list[str]) -> None:
        """Returns once the message is committed; raises TransientError when it could not be."""
        if self._closed:
            raise TransientError("maild is shutting down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((inbox_row(raw, channel, mail_from, rcpt_tos), fut))
        self._wake.set()
        await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    rows = [row for row, _ in batch]
                    try:
                        await loop.run_in_executor(self._executor, store_now, self.engine, rows)
                    except Exception as exc:
                        log.error("inbox commit of %d message(s) failed: %s", len(rows), exc)
                        for _, fut in batch:
                            if not fut.done():
                                fut.set_exception(exc if isinstance(exc, TransientError) else TransientError(str(exc)))
                        continue
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
                    if self.on_commit:
                        self.on_commit()
        finally:
            self._closed = True
            for _, fut in self._queue:
                if not fut.done():
                    fut.set_exception(TransientError("maild is shutting down"))
            self._executor.shutdown(wait=True)
