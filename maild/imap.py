"""IMAP receiver (imapclient): a mailbox instead of an MTA.

At-least-once with de-duplication: a message is moved to
`imap.processed_folder` (or flagged `\\Seen` + `$MaildProcessed` where the
server lacks MOVE, RFC 6851) only after its raw bytes are committed to the
inbox; a crash between the two re-reads it, and the inbox's dedup key stores
nothing twice. Nothing here depends on UIDs surviving a session, so a
UIDVALIDITY change (RFC 3501 §2.3.1.1) only needs noting. IDLE (RFC 2177)
when offered, re-issued before the 29-minute limit; polling otherwise.
Reconnects back off exponentially (capped) and are logged once per outage.

imapclient is blocking: the session runs in a thread (`asyncio.to_thread`),
checking a stop flag at least once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError
from sqlalchemy import Engine, text

from maild.config import Settings
from maild.errors import ConfigError
from maild.storage.db import transaction
from maild.storage.inbox import inbox_row, store_now
from maild.storage.models import ImapState, utcnow

log = logging.getLogger(__name__)

KEYWORD = b"$MaildProcessed"
BATCH_MESSAGES = 100
BATCH_BYTES = 16 * 1024 * 1024
NETWORK_ERRORS = (IMAPClientError, imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError, socket.timeout, ssl.SSLError)


class Stopped(Exception):
    pass


def read_password(settings: Settings) -> str:
    imap = settings.imap
    if imap.password_env and os.environ.get(imap.password_env):
        return os.environ[imap.password_env]
    if imap.password_file:
        try:
            return settings.path(imap.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"imap.password_file = {imap.password_file!r}: cannot read it ({exc.strerror})") from None
    raise ConfigError(f"imap: no password in ${imap.password_env or '(imap.password_env unset)'} "
                      "nor in imap.password_file")


def lock_key(settings: Settings) -> int:
    """A 63-bit advisory-lock key naming this mailbox, the same on every instance."""
    name = f"maild-imap:{settings.imap.host}:{settings.imap.port}:{settings.imap.user}:{settings.imap.folder}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


class ImapReader:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        on_stored: Callable[[int], None] | None = None,
        *,
        backoff_max: float = 300.0,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.on_stored = on_stored or (lambda n: None)
        self.password = read_password(settings)
        self.backoff_max = backoff_max
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.stored = 0  # messages committed by this reader (duplicates included)
        self.moved = 0
        self.mailbox = f"{settings.imap.user}@{settings.imap.host}/{settings.imap.folder}"
        self.down_since: float | None = None  # set during an outage, so it is logged once

    # -- the outer loop ----------------------------------------------------------------
    async def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                await asyncio.to_thread(self.session)
            except Stopped:
                return
            except NETWORK_ERRORS as exc:
                self.connected.clear()
                if self.down_since is None:  # the first failure of this outage
                    self.down_since, delay = time.monotonic(), 1.0
                    log.warning("IMAP %s unreachable (%s): retrying with backoff up to %.0fs", self.mailbox,
                                exc or type(exc).__name__, self.backoff_max)
                else:
                    log.debug("IMAP %s still unreachable: %s", self.mailbox, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def stop(self) -> None:
        self.stopping.set()

    # -- one connection ------------------------------------------------------------------
    def connect(self) -> IMAPClient:
        imap = self.settings.imap
        context = ssl.create_default_context(cafile=imap.ca_file or None)
        # A server that accepts but never greets (one going down) must not hold us for long.
        client = IMAPClient(imap.host, port=imap.port, ssl=imap.tls == "tls", ssl_context=context,
                            timeout=SocketTimeout(connect=10, read=60))
        if imap.tls == "starttls":
            client.starttls(context)
        client.login(imap.user, self.password)
        return client

    def session(self) -> None:
        """Connect, hold the mailbox lock, sync, then IDLE or poll until stopped or the link fails."""
        client = self.connect()
        try:
            with self.mailbox_lock():
                self.select(client)
                self.connected.set()
                if self.down_since is not None:
                    log.info("IMAP %s reachable again after %.0fs", self.mailbox, time.monotonic() - self.down_since)
                    self.down_since = None
                self.sync(client)
                idle = self.settings.imap.idle and b"IDLE" in client.capabilities()
                while not self.stopping.is_set():
                    self.wait_idle(client) if idle else self.wait_poll(client)
                    self.sync(client)
                raise Stopped
        finally:
            self.connected.clear()
            try:
                client.logout()
            except NETWORK_ERRORS:
                with contextlib.suppress(*NETWORK_ERRORS):
                    client.shutdown()  # the link is dead: close the socket without a goodbye

    @contextlib.contextmanager
    def mailbox_lock(self) -> Iterator[None]:
        """With PostgreSQL and several instances, one reads a mailbox at a time (session advisory lock)."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        key = lock_key(self.settings)
        with self.engine.connect() as conn:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                conn.rollback()
                if self.stopping.wait(self.settings.imap.poll_seconds):
                    raise Stopped
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()

    def select(self, client: IMAPClient) -> None:
        imap = self.settings.imap
        if not client.folder_exists(imap.processed_folder):
            client.create_folder(imap.processed_folder)
            log.info("IMAP %s: created folder %s", self.mailbox, imap.processed_folder)
        info = client.select_folder(imap.folder)
        self.note_uidvalidity(int(info[b"UIDVALIDITY"]))

    def note_uidvalidity(self, value: int) -> None:
        with transaction(self.engine) as session:
            state = session.get(ImapState, self.mailbox)
            if state is None:
                session.add(ImapState(mailbox=self.mailbox, uidvalidity=value))
            elif state.uidvalidity != value:
                log.warning("IMAP %s: UIDVALIDITY changed from %s to %s; re-reading the folder "
                            "(messages already stored are recognised and skipped)", self.mailbox,
                            state.uidvalidity, value)
                state.uidvalidity, state.updated_at = value, utcnow()
                session.add(state)

    # -- waiting ---------------------------------------------------------------------
    def wait_idle(self, client: IMAPClient) -> None:
        client.idle()
        started = time.monotonic()
        try:
            # RFC 2177: servers may drop an IDLE after 29 minutes; re-issue it before that.
            while not self.stopping.is_set() and time.monotonic() - started < self.settings.imap.idle_seconds:
                t0 = time.monotonic()
                responses = client.idle_check(timeout=1)
                if any(r[1] in (b"EXISTS", b"RECENT") for r in responses if len(r) > 1):
                    return
                if not responses and time.monotonic() - t0 < 0.5 and closed_by_peer(client):
                    # imapclient's idle_check swallows EOF: without this a server restart goes unseen.
                    raise imaplib.IMAP4.abort("connection closed by the server")
        finally:
            client.idle_done()

    def wait_poll(self, client: IMAPClient) -> None:
        if self.stopping.wait(self.settings.imap.poll_seconds):
            return
        client.noop()

    # -- taking messages -------------------------------------------------------------------
    def pending(self, client: IMAPClient) -> list[int]:
        criteria = ["NOT", "DELETED"]
        if b"MOVE" not in client.capabilities():
            criteria += ["UNKEYWORD", KEYWORD.decode()]
        return sorted(client.search(criteria))

    def sync(self, client: IMAPClient) -> int:
        """Store and move every message waiting in the folder; returns how many were taken."""
        uids = self.pending(client)
        if not uids:
            return 0
        big = len(uids) >= 1000
        if big:
            log.info("IMAP %s: %d messages to read", self.mailbox, len(uids))
        taken = 0
        for batch in self.batches(client, uids):
            if self.stopping.is_set():
                raise Stopped
            fetched = client.fetch(batch, ["BODY.PEEK[]"])
            rows, done = [], []
            for uid in batch:
                data = fetched.get(uid, {})
                raw = data.get(b"BODY[]")
                if raw is None:
                    continue  # expunged meanwhile by someone else
                rows.append(inbox_row(raw, "imap", return_path(raw), []))
                done.append(uid)
            del fetched
            store_now(self.engine, rows)  # committed before the move below
            self.stored += len(rows)
            self.on_stored(len(rows))
            self.take(client, done)
            taken += len(done)
            if big:
                log.info("IMAP %s: %d/%d read", self.mailbox, taken, len(uids))
        return taken

    def batches(self, client: IMAPClient, uids: list[int]) -> Iterator[list[int]]:
        """Batches bounded in count and in bytes, so a big first sync runs in bounded memory."""
        for start in range(0, len(uids), 1000):
            chunk = uids[start:start + 1000]
            sizes = client.fetch(chunk, ["RFC822.SIZE"])
            batch, total = [], 0
            for uid in chunk:
                size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
                if batch and (len(batch) >= BATCH_MESSAGES or total + size > BATCH_BYTES):
                    yield batch
                    batch, total = [], 0
                batch.append(uid)
                total += size
            if batch:
                yield batch

    def take(self, client: IMAPClient, uids: list[int]) -> None:
        if not uids:
            return
        if b"MOVE" in client.capabilities():
            client.move(uids, self.settings.imap.processed_folder)
        else:
            client.add_flags(uids, [b"\\Seen", KEYWORD])
        self.moved += len(uids)



_RETURN_PATH = re.compile(rb"^return-path:[ \t]*<([^<>]*)>", re.IGNORECASE | re.MULTILINE)


def return_path(raw: bytes) -> str | None:
    """The envelope sender the delivering MTA recorded, "" for <>, None when it recorded none."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _RETURN_PATH.search(head)
    return match.group(1).decode("utf-8", "replace").strip() if match else None


def closed_by_peer(client: IMAPClient) -> bool:
    sock = client.socket()
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
