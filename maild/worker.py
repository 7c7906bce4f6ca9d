"""The processor in a process of its own (`maild serve`).

Receivers (SMTP/LMTP, IMAP) and the processor then run on their own
interpreters: the processor's CPU-bound work (parsing, deciding, composing)
no longer takes the GIL from the event loop that answers SMTP clients, and it
runs at a lower CPU priority (`nice`), so a burst is taken at the protocol's
speed while the second core processes it.

The parent keeps everything else (receivers, sender, web, jobs) and starts
this module as a plain child, `python -m maild.worker`, with the settings
pickled on its stdin. They talk through pipes, signals and one shared
integer, nothing that a killed process could leave locked (a multiprocessing
Event held by a SIGKILLed process blocks the other side for ever):

- `wake` (pipe, parent → worker): a byte when new inbox rows are committed;
  the parent writes without blocking (a full pipe already means "work").
- SIGTERM: drain (process what is new, for up to `grace` seconds) and exit.
  SIGHUP: read the templates again.
- `waiting` (two ints in a shared mapping, no lock): a receiver waits to commit (SQLite's one
  writer): the worker commits between two messages and lets it; the sender waits: after a slice.
- `conn` (pipe, worker → parent): "ready", then after each batch how many
  messages it took and the metric bumps it made, which the parent applies to
  its own registry (so /metrics stays one view), and "stopped".

If the parent dies, the worker notices (its parent pid changes) and exits
after the batch in hand; claims it leaves are recovered as a crash's are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("maild.worker")

NICE = 19  # below the receivers: they get the CPU first when both want it


class _Bump:
    """One metric of the worker: `.labels(...)`, `.inc()` and `.observe()` as prometheus_client's."""

    def __init__(self, events: list, name: str, label_values: tuple = ()) -> None:
        self.events, self.name, self.label_values = events, name, label_values

    def labels(self, *values: str) -> _Bump:
        return _Bump(self.events, self.name, values)

    def inc(self, amount: float = 1) -> None:
        self.events.append((self.name, self.label_values, "inc", amount))

    def observe(self, value: float) -> None:
        self.events.append((self.name, self.label_values, "observe", value))


@dataclass
class Recorder:
    """Stands in for `Metrics` in the worker: records each bump for the parent to replay."""

    events: list = field(default_factory=list)

    def __getattr__(self, name: str) -> _Bump:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Bump(self.events, name)

    def take(self) -> list:
        taken, self.events[:] = list(self.events), []
        return taken


def replay(metrics: Any, events: list) -> None:
    """Apply a worker's bumps to the parent's registry."""
    for name, labels, op, value in events:
        metric = getattr(metrics, name, None)
        if metric is None:
            continue
        if labels:
            metric = metric.labels(*labels)
        getattr(metric, op)(value)


class _Flags:
    stop = False
    reload = False


def cli() -> None:
    """`python -m maild.worker RESULT_FD WAKE_FD SHM_FD`, the spec pickled on stdin (by maild.daemon)."""
    import ctypes
    import mmap
    import pickle
    import sys
    from multiprocessing.connection import Connection

    result_fd, wake_fd, shm_fd = (int(a) for a in sys.argv[1:4])
    settings, instance, poll_seconds, grace, log_format, log_level = pickle.loads(sys.stdin.buffer.read())
    shared = mmap.mmap(shm_fd, 8)
    waiting = (ctypes.c_int * 2).from_buffer(shared)  # WriteGate.shared, as the parent maps it
    main(settings, instance, Connection(result_fd, readable=False), Connection(wake_fd, writable=False), waiting,
         poll_seconds, grace, log_format, log_level)


def main(settings, instance: str, conn, wake, waiting, poll_seconds: float, grace: float,
         log_format: str, log_level: str) -> None:
    """The worker process's work: process the inbox until told to stop or orphaned."""
    from maild import logs

    flags = _Flags()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, lambda *_: setattr(flags, "stop", True))
    signal.signal(signal.SIGHUP, lambda *_: setattr(flags, "reload", True))
    logs.setup(log_format, log_level)
    try:
        os.nice(NICE)
    except OSError:
        pass
    from maild.process import Processor
    from maild.render import Renderer
    from maild.storage.db import dispose_all, gate, make_engine

    parent = os.getppid()
    engine = make_engine(settings.database.url, settings.base_dir, synchronous="NORMAL")
    gate(engine).shared = waiting  # read the parent's counts (share() would reset them to ours)
    gate(engine).give_up = lambda: os.getppid() != parent  # killed mid-write, it cannot lower its count
    recorder = Recorder()
    processor = Processor(settings, engine, Renderer(), metrics=recorder)
    processor.instance = instance
    processor.warm_up()
    processor.rehearse()
    recorder.take()  # the rehearsal's bumps are not real work
    conn.send(("ready", os.getpid()))
    try:
        _loop(processor, recorder, conn, wake, flags, poll_seconds, lambda: os.getppid() != parent)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _batch(processor, recorder, conn):
            pass
    finally:
        dispose_all()
        with contextlib.suppress(OSError):
            conn.send(("stopped", 0))
        conn.close()


def _batch(processor, recorder: Recorder, conn) -> int:
    from maild.errors import TransientError

    try:
        taken = processor.run_batch()
    except TransientError as exc:
        log.warning("processing batch not done: %s", exc)
        taken = 0
    except Exception:
        log.exception("processing batch failed; retrying")
        taken = 0
    events = recorder.take()
    if taken or events:
        conn.send(("batch", taken, events))
    return taken


def _loop(processor, recorder: Recorder, conn, wake, flags: _Flags, poll_seconds: float,
          orphaned: Callable[[], bool]) -> None:
    from maild.render import Renderer

    while not flags.stop:
        if orphaned():
            log.warning("maild serve (the parent) is gone: the worker stops")
            return
        if flags.reload:
            flags.reload = False
            processor.renderer = Renderer()
        _drain(wake)
        if _batch(processor, recorder, conn):
            continue
        try:
            wake.poll(poll_seconds)
        except (EOFError, OSError):
            return  # the parent closed its end: it is gone


def _drain(wake) -> None:
    """Read every pending wake-up byte (they only say "look again")."""
    try:
        while wake.poll():
            wake.recv_bytes()
    except (EOFError, OSError):
        pass


def send_wake(conn) -> None:
    """The parent's side: one wake-up, never blocking (a full pipe already says it)."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
        conn.send_bytes(b"w")


if __name__ == "__main__":
    cli()
