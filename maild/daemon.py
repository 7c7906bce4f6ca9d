"""The daemon: receivers, sender, web and jobs as tasks of one event loop; the processor
in a worker process (`maild serve`, see maild.worker) or in a thread of this one (tests).

`Daemon` is used by `maild serve` and, as an async context manager, by the
tests (which read back the bound port). SIGTERM: stop taking mail, finish
what is in flight, flush the outbox for a grace period, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from maild import smtp
from maild.auth import DnsFunc
from maild.config import Settings
from maild.errors import ConfigError
from maild.metrics import Metrics
from maild.process import Processor
from maild.render import Renderer
from maild.sender import Sender
from maild.storage import repo
from maild.storage.db import check_current, transaction
from maild.storage.inbox import InboxWriter
from maild.storage.models import utcnow

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        smtp_port: int | None = None,
        dnsfunc: DnsFunc | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        grace_seconds: float = 10.0,
        poll_seconds: float = 1.0,
        with_web: bool = True,
        job_seconds: float = 60.0,
        processor_process: bool = False,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.grace_seconds = grace_seconds
        self.with_web = with_web
        self.job_seconds = job_seconds
        self.poll_seconds = poll_seconds
        self._smtp_port_override = smtp_port
        # maild serve runs the processor in a worker process (maild.worker); tests that inject a DNS
        # or a clock keep it in this process.
        self.processor_process = processor_process
        self._worker = None
        self.metrics = Metrics(engine)
        self.processor = Processor(settings, engine, Renderer(), dnsfunc=dnsfunc, clock=clock, metrics=self.metrics)
        self.sender: Sender | None = None
        self.imap = None
        self.web = None
        self.web_port: int | None = None
        self.writer: InboxWriter | None = None
        self.smtp_port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._server: asyncio.base_events.Server | None = None
        self._handler: smtp.Handler | None = None
        self._work = asyncio.Event()
        self._stopping = False
        self._proc_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maild-process")

    # -- life-cycle -------------------------------------------------------------
    async def start(self) -> None:
        # The processor thread is CPU-bound; a shorter GIL switch interval keeps the
        # event loop (SMTP replies) responsive while it runs.
        sys.setswitchinterval(0.001)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, check_current, self.engine)
        recovered = await loop.run_in_executor(None, self._recover)
        if self.processor_process:
            await self._start_worker()
        else:
            await loop.run_in_executor(self._proc_executor, self.processor.warm_up)
        if recovered:
            log.info("recovered %d inbox message(s) left in processing by a previous run", recovered)
        self.sender = Sender(self.settings, self.engine, clock=self.clock, metrics=self.metrics)
        self.writer = InboxWriter(self.engine, on_commit=self._work.set)
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="inbox-writer"),
            asyncio.create_task(self._worker_loop() if self._worker else self._process_loop(), name="processor"),
            asyncio.create_task(self.sender.run(idle_seconds=self.poll_seconds), name="sender"),
            asyncio.create_task(self._jobs_loop(), name="jobs"),
        ]
        if self.settings.web.kb_dir:
            await loop.run_in_executor(None, self._sync_kb)
        if self.settings.imap.enabled:
            from maild.imap import ImapReader

            def stored(n: int) -> None:
                self.metrics.received.labels("imap").inc(n)
                loop.call_soon_threadsafe(self._work.set)

            self.imap = ImapReader(self.settings, self.engine, on_stored=stored)
            self._tasks.append(asyncio.create_task(self.imap.run(), name="imap"))
        if self.with_web:
            await self._start_web()
        self._server, self._handler = await smtp.start(self.settings, self.writer, port=self._smtp_port_override,
                                                       metrics=self.metrics)
        handler = self._handler
        # Read from the processor's thread: a len() of a set the event loop changes is atomic under the GIL.
        self.processor.receivers_busy = lambda: len(handler.in_flight) > 0 and handler.accepting
        if self.sender is not None:
            self.sender.receivers_busy = self.processor.receivers_busy
        self.smtp_port = self._server.sockets[0].getsockname()[1]
        log.info("listening for %s on %s:%s", "LMTP" if self.settings.smtp.lmtp else "SMTP",
                 self._server.sockets[0].getsockname()[0], self.smtp_port)

    async def _start_web(self) -> None:
        import uvicorn

        from maild.web import Site

        class Embedded(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # the daemon owns SIGTERM and SIGINT
                yield

        host, _, port = self.settings.web.listen.rpartition(":")
        config = uvicorn.Config(Site(self.settings, self.engine, metrics=self.metrics.render).app, host=host, port=int(port),
                                log_level="warning", lifespan="off", server_header=False, access_log=False)
        self.web = Embedded(config)
        self._tasks.append(asyncio.create_task(self.web.serve(), name="web"))
        while not self.web.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()  # startup failed (port taken): raise it
                raise OSError(f"web: cannot listen on {self.settings.web.listen}")
            await asyncio.sleep(0.01)
        self.web_port = self.web.servers[0].sockets[0].getsockname()[1]
        log.info("knowledge base on http://%s:%s/", host, self.web_port)

    async def reload(self) -> None:
        """SIGHUP: templates and the knowledge base are read again; nothing in flight is touched."""
        from maild import web

        self.processor.renderer = Renderer()
        if self._worker is not None and self._worker.alive():
            os.kill(self._worker.pid, signal.SIGHUP)  # it reads the templates again
        web.rendered.cache_clear()
        if self.settings.web.kb_dir:
            await asyncio.get_running_loop().run_in_executor(None, self._sync_kb)
        log.info("reloaded templates%s", " and the knowledge base" if self.settings.web.kb_dir else "")

    def _sync_kb(self) -> None:
        from maild import kb

        directory = self.settings.path(self.settings.web.kb_dir)
        if not directory.is_dir():
            raise ConfigError(f"web.kb_dir = {self.settings.web.kb_dir!r}: {directory} is not a directory")
        report = kb.sync(self.settings, self.engine, directory)
        log.info("knowledge base %s: %d added, %d updated, %d removed", self.settings.web.kb_dir, report.added,
                 report.updated, report.removed)

    async def _jobs_loop(self) -> None:
        """Scheduled jobs (auto-close); on PostgreSQL one instance at a time runs each."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._proc_executor, self.processor.auto_close)
                recovered = await loop.run_in_executor(self._proc_executor, self._recover, False)
                if recovered:
                    log.warning("%d inbox message(s) claimed by an instance that stopped answering were "
                                "put back in the queue", recovered)
                    self._work.set()
            except Exception:
                log.exception("scheduled jobs failed; trying again later")
            await asyncio.sleep(min(self.job_seconds, self.settings.limits.claim_timeout_seconds / 2))

    def _recover(self, at_start: bool = True) -> int:
        # One SQLite process owns its database: at start, whatever is 'processing' was left by a
        # crash. With PostgreSQL other instances may be working: only claims older than the timeout.
        single = self.engine.dialect.name == "sqlite"
        timeout = dt.timedelta(seconds=self.settings.limits.claim_timeout_seconds)
        with transaction(self.engine) as session:
            return repo.recover_stale(session, dt.timedelta(0) if (single and at_start) else timeout)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_seconds
        if self._handler is not None:
            # Stop taking new mail, but let transactions already past MAIL FROM finish: a client
            # told 250 must have its message stored, one told 421 retries elsewhere or later.
            self._handler.draining = True
        if self.web is not None:
            self.web.should_exit = True
        if self.imap is not None:
            self.imap.stop()  # its thread leaves within a second, after the batch in hand is committed
        if self._server is not None:
            self._server.close()
        if self._handler is not None:
            while self._handler.in_flight and loop.time() < deadline - self.grace_seconds / 2:
                await asyncio.sleep(0.05)
            self._handler.accepting = False
        await asyncio.sleep(0.05)  # let the last commits resolve their waiters
        if self._worker is not None:
            await self._stop_worker(deadline)
        else:
            while loop.time() < deadline and await loop.run_in_executor(self._proc_executor,
                                                                        self.processor.run_batch):
                pass
        if self.sender is not None:
            # Let the sender's own loop finish the batch it holds (its rows are claimed), then drain.
            self.sender.stopping = True
            self.sender.wake.set()
            sender_task = next((t for t in self._tasks if t.get_name() == "sender"), None)
            if sender_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(sender_task), max(0.1, deadline - loop.time()))
            with contextlib.suppress(Exception):
                while loop.time() < deadline and await asyncio.wait_for(
                    self.sender.send_due(), max(0.1, deadline - loop.time())
                ):
                    pass
        for task in self._tasks:
            if task.get_name() in ("imap", "web"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 5)
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._proc_executor.shutdown(wait=True)
        if self.sender is not None:
            self.sender.close()

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        try:
            await done.wait()
            log.info("signal received: stopping (grace %.0fs)", self.grace_seconds)
        finally:
            await self.stop()

    # -- the processor in its worker process ------------------------------------------
    async def _start_worker(self) -> None:
        from maild import logs
        from maild.storage.db import gate

        w = self._worker = _WorkerHandle()
        gate(self.engine).share(w.waiting)
        w.start((self.settings, self.processor.instance, self.poll_seconds, self.grace_seconds,
                 logs.current_format(), logs.current_level()))
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, w.conn.poll, 120)
        message = None
        with contextlib.suppress(EOFError, OSError):
            message = w.conn.recv() if ready else None
        if not message or message[0] != "ready":
            w.kill()
            raise RuntimeError("the processor's worker process did not start: see the log above")
        log.info("processor running in its own process (pid %s)", message[1])

    async def _worker_loop(self) -> None:
        """Forward wake-ups to the worker; replay its metric bumps; wake the sender after its batches."""
        from maild import worker

        w = self._worker
        assert w is not None
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(w.conn.fileno(), readable.set)
        try:
            while True:
                waits = [asyncio.ensure_future(self._work.wait()), asyncio.ensure_future(readable.wait())]
                await asyncio.wait(waits, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
                for fut in waits:
                    fut.cancel()
                if self._work.is_set():
                    self._work.clear()
                    worker.send_wake(w.wake_w)
                readable.clear()
                state = self._drain_worker_messages(worker)
                if state == "stopped" or self._stopping:
                    return
                if state == "gone" or not w.alive():
                    loop.remove_reader(w.conn.fileno())
                    await loop.run_in_executor(None, w.join, 5)
                    log.error("the processor's worker process died (exit %s): restarting it", w.exitcode)
                    w.close()
                    await self._start_worker()
                    w = self._worker
                    loop.add_reader(w.conn.fileno(), readable.set)
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(w.conn.fileno())

    def _drain_worker_messages(self, worker) -> str:
        """Handle what the worker sent: 'running', 'stopped' (it said so) or 'gone' (its pipe closed)."""
        w = self._worker
        assert w is not None
        try:
            while w.conn.poll():
                kind, *rest = w.conn.recv()
                if kind == "batch":
                    taken, events = rest
                    worker.replay(self.metrics, events)
                    if taken and self.sender is not None:
                        self.sender.wake.set()
                elif kind == "stopped":
                    return "stopped"
        except (EOFError, OSError):
            return "gone"
        return "running"

    async def _stop_worker(self, deadline: float) -> None:
        from maild import worker

        w = self._worker
        assert w is not None
        loop = asyncio.get_running_loop()
        if w.alive():
            os.kill(w.pid, signal.SIGTERM)  # it drains what is new, then exits
            worker.send_wake(w.wake_w)
        await loop.run_in_executor(None, w.join, max(0.5, deadline - loop.time()))
        if w.alive():
            log.warning("the processor's worker did not stop within the grace period: killed; its claims are "
                        "recovered at the next start")
            w.kill()
            await loop.run_in_executor(None, w.join, 5)
        with contextlib.suppress(Exception):
            self._drain_worker_messages(worker)
        w.close()

    # -- the processor task ------------------------------------------------------
    async def _process_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                taken = await loop.run_in_executor(self._proc_executor, self.processor.run_batch)
            except Exception:
                log.exception("processing batch failed; retrying")
                taken = 0
                await asyncio.sleep(self.poll_seconds)
            if taken:
                assert self.sender is not None
                self.sender.wake.set()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), self.poll_seconds)
            self._work.clear()


class _WorkerHandle:
    """The parent's side of the processor's worker process (see maild.worker).

    A plain child process (`python -m maild.worker`), not a multiprocessing one: no resource
    tracker process beside it, and nothing shared but two pipes and one mapped integer.
    """

    def __init__(self) -> None:
        import ctypes
        import mmap
        import tempfile
        from multiprocessing.connection import Connection

        result_r, self._result_w = os.pipe()  # worker → parent
        self._wake_r, wake_w = os.pipe()  # parent → worker
        os.set_blocking(wake_w, False)
        self.conn = Connection(result_r, writable=False)
        self.wake_w = Connection(wake_w, readable=False)
        self._shm = tempfile.TemporaryFile()  # unlinked: only the two processes can reach it
        self._shm.write(b"\0" * 8)
        self._shm.flush()
        self._map = mmap.mmap(self._shm.fileno(), 8)
        self.waiting = (ctypes.c_int * 2).from_buffer(self._map)  # WriteGate.shared: [urgent, priority]
        self.process: subprocess.Popen | None = None

    def start(self, spec: tuple) -> None:
        import pickle

        fds = (self._result_w, self._wake_r, self._shm.fileno())
        self.process = subprocess.Popen([sys.executable, "-m", "maild.worker", *map(str, fds)],
                                        stdin=subprocess.PIPE, pass_fds=fds)
        assert self.process.stdin is not None
        self.process.stdin.write(pickle.dumps(spec))  # the settings (with the secret) never touch a disk
        self.process.stdin.close()
        os.close(self._result_w)
        os.close(self._wake_r)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def join(self, timeout: float) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        for c in (self.conn, self.wake_w):
            with contextlib.suppress(OSError):
                c.close()
        del self.waiting  # the mapping cannot close while a ctypes view holds it
        with contextlib.suppress(Exception):
            self._map.close()
        self._shm.close()
