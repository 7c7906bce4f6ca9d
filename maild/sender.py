"""Send: the outbox to the smarthost (aiosmtplib), with retries, backoff and DKIM.

Each row is one message to one recipient with its own VERP envelope sender
(SPEC §6). A 4xx answer or a connection error is retried at
base * 2**attempts (capped); a 5xx answer, or `give_up_hours` of failures,
marks the row failed with the reason. DKIM signing happens here, at send
time, so a rotated key signs everything still queued.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiosmtplib
import dkim
from sqlalchemy import Engine

from maild.addresses import bounce_address
from maild.config import Settings
from maild.errors import ConfigError
from maild.metrics import Metrics
from maild.storage import repo
from maild.storage.db import transaction
from maild.storage.models import Journal, OutboxItem, utcnow

log = logging.getLogger(__name__)

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
                  b"references", b"content-type", b"mime-version", b"auto-submitted", b"content-language"]


@dataclass(frozen=True)
class Job:
    id: int
    recipient: str
    raw: bytes
    attempts: int
    created_at: dt.datetime


class DkimSigner:
    def __init__(self, settings: Settings) -> None:
        self.selector = settings.outbound.dkim_selector.encode()
        self.domain = settings.mail.domain.encode()
        path = settings.path(settings.outbound.dkim_key_file)
        try:
            self.key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"outbound.dkim_key_file = {str(path)!r}: cannot read it ({exc.strerror}); "
                              "run 'maild dkim keygen --selector S'") from None

    def sign(self, raw: bytes) -> bytes:
        sig = dkim.sign(raw, self.selector, self.domain, self.key, include_headers=SIGNED_HEADERS,
                        canonicalize=(b"relaxed", b"relaxed"))
        return sig + raw


def signer_for(settings: Settings) -> DkimSigner | None:
    ob = settings.outbound
    if ob.dkim_selector and ob.dkim_key_file:
        return DkimSigner(settings)
    return None


class Sender:
    def __init__(self, settings: Settings, engine: Engine, *, clock: Callable[[], dt.datetime] = utcnow,
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.signer = signer_for(settings)
        self.wake = asyncio.Event()
        self.sent = 0
        self.failures = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maild-outbox")
        self._outage_logged = False
        self.stopping = False  # the run loop ends after the batch in hand (the daemon drains the rest)
        self.receivers_busy: Callable[[], bool] = lambda: False  # set by the daemon (SMTP transactions open)

    def _claim(self, limit: int) -> list[Job]:
        now = self.clock()
        with transaction(self.engine, priority=True) as session:
            rows = repo.due_outbox(session, limit, now)
            jobs = [Job(r.id, r.recipient, r.raw, r.attempts, r.created_at) for r in rows]
            # Push them out of the window while we send, so another instance does not take them too.
            for r in rows:
                r.next_attempt_at = now + dt.timedelta(seconds=self.settings.outbound.timeout_seconds * 4)
                session.add(r)
        return jobs

    def _record(self, results: list[tuple[Job, str | None, bool]]) -> None:
        """results: (job, error or None, permanent)."""
        ob = self.settings.outbound
        now = self.clock()
        with transaction(self.engine, priority=True) as session:
            for job, error, permanent in results:
                row = session.get(OutboxItem, job.id)
                if row is None:
                    continue
                if error is None:
                    row.state, row.sent_at, row.last_error = "sent", now, ""
                    row.attempts += 1
                else:
                    row.attempts += 1
                    row.last_error = error[:1000]
                    too_old = now - row.created_at > dt.timedelta(hours=ob.give_up_hours)
                    if permanent or too_old:
                        row.state = "failed"
                        log.error("outbox %s to %s failed for good: %s", row.id, row.recipient, error)
                        if permanent:
                            repo.mark_bounce(session, row.recipient, "permanent")
                        if row.ticket_id:
                            session.add(Journal(ticket_id=row.ticket_id, at=now, author="maild",
                                                note=f"Entrega fallida a {row.recipient}: {error[:300]}"))
                    else:
                        delay = min(ob.retry_base_seconds * 2 ** (row.attempts - 1), ob.retry_max_seconds)
                        row.next_attempt_at = now + dt.timedelta(seconds=delay)
                session.add(row)

    def _count_failure(self, permanent: bool) -> None:
        self.failures += 1
        self.metrics.send_failures.labels("yes" if permanent else "no").inc()

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def send_due(self, limit: int = 100) -> int:
        """Send what is due now over one connection; returns how many rows were tried."""
        jobs = await self._db(self._claim, limit)
        if not jobs:
            return 0
        ob = self.settings.outbound
        results: list[tuple[Job, str | None, bool]] = []
        recorded: list[int] = []
        client = aiosmtplib.SMTP(hostname=ob.smarthost, port=ob.port, timeout=ob.timeout_seconds,
                                 start_tls=ob.starttls, use_tls=False)
        try:
            await client.connect()
            if ob.user:
                await client.login(ob.user, os.environ.get(ob.password_env, ""))
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = f"smarthost {ob.smarthost}:{ob.port} unreachable: {exc}"
            if not self._outage_logged:
                log.warning("%s; %d message(s) stay queued", error, len(jobs))
                self._outage_logged = True
            results = [(job, error, False) for job in jobs]
            self.failures += len(jobs)
            self.metrics.send_failures.labels("no").inc(len(jobs))
            await self._db(self._record, results)
            return len(jobs)
        if self._outage_logged:
            log.info("smarthost %s:%s reachable again", ob.smarthost, ob.port)
            self._outage_logged = False
        try:
            for n, job in enumerate(jobs):
                if n and self.receivers_busy():
                    # Receivers first: while a burst comes in, one delivery per 10 x limits.processor_yield_ms
                    # (each costs a commit, and CPU on the loop that answers SMTP); the rest right after.
                    await asyncio.sleep(10 * self.settings.limits.processor_yield_ms / 1000)
                raw = self.signer.sign(job.raw) if self.signer else job.raw
                try:
                    await client.sendmail(bounce_address(self.settings, job.id), [job.recipient], raw)
                    self.sent += 1
                    self.metrics.sent.inc()
                    # Record the delivery before sending the next one: a crash can resend at most this message.
                    recorded.append(job.id)
                    await self._db(self._record, [(job, None, False)])
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    code = exc.recipients[0].code if exc.recipients else 450
                    results.append((job, f"{code} {exc}", 500 <= code < 600))
                    self._count_failure(results[-1][2])
                except aiosmtplib.SMTPResponseException as exc:
                    results.append((job, f"{exc.code} {exc.message}", 500 <= exc.code < 600))
                    self._count_failure(results[-1][2])
                    if exc.code in (421,):
                        break
                except (aiosmtplib.SMTPException, OSError) as exc:
                    results.append((job, f"connection lost: {exc}", False))
                    self._count_failure(results[-1][2])
                    break
        finally:
            done = {j.id for j, _, _ in results} | set(recorded)
            results += [(j, "not tried: connection closed", False) for j in jobs if j.id not in done]
            await self._db(self._record, results)
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        return len(jobs)

    async def run(self, idle_seconds: float = 5.0) -> None:
        """Send forever: wake on new rows or at the next due retry."""
        while not self.stopping:
            tried = await self.send_due()
            if tried:
                continue
            due = await self._db(self._next_due)
            wait = idle_seconds
            if due is not None:
                wait = max(0.05, min(idle_seconds, (due - self.clock()).total_seconds()))
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except TimeoutError:
                pass
            self.wake.clear()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _next_due(self) -> dt.datetime | None:
        with transaction(self.engine) as session:
            return repo.next_outbox_due(session)
