"""SMTP and LMTP receivers (aiosmtpd): put the message in the inbox, then say yes.

The handler does nothing at DATA but commit the raw bytes (Mailman's LMTP
runner does the same); parsing is the processor's business. LMTP answers
one status per recipient (RFC 2033 §4.2).
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from maild import addresses
from maild.config import Settings
from maild.errors import TransientError
from maild.metrics import Metrics
from maild.storage.inbox import InboxWriter

log = logging.getLogger(__name__)

OK = "250 2.0.0 OK: queued"
RCPT_OK = "250 2.1.5 OK"
NO_SUCH_USER = "550 5.1.1 No such recipient here"
TEMPFAIL = "451 4.3.0 Temporary failure storing the message, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


class Handler:
    def __init__(self, settings: Settings, writer: InboxWriter, channel: str, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.settings = settings
        self.writer = writer
        self.channel = channel
        self.accepting = True  # DATA is committed; False once a shutdown's grace period is over
        self.draining = False  # shutting down: no new transactions, open ones finish
        self.in_flight: set[int] = set()  # sessions between MAIL FROM and the end of DATA

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.draining:
            return SHUTTING_DOWN
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.in_flight.add(id(session))
        return "250 2.1.0 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_flight.discard(id(session))
        return "250 2.0.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        # Only our own addresses: maild is not a relay.
        if addresses.classify(self.settings, address) is None:
            return NO_SUCH_USER
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return await self._data(session, envelope)
        finally:
            self.in_flight.discard(id(session))

    async def _data(self, session: Session, envelope: Envelope) -> str:
        if not self.accepting:
            return SHUTTING_DOWN
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        try:
            await self.writer.put(raw, self.channel, mail_from, list(envelope.rcpt_tos))
        except TransientError as exc:
            log.error("refused with 451: %s", exc)
            status = TEMPFAIL
        else:
            status = OK
            if self.metrics is not None:
                self.metrics.received.labels(self.channel).inc()
        if self.channel == "lmtp":
            # One reply per accepted recipient: the message is stored once for all of them.
            return "\r\n".join([status] * len(envelope.rcpt_tos))
        return status


def make_factory(settings: Settings, handler: Handler):
    hostname = settings.smtp.hostname or settings.mail.domain
    cls = LMTP if settings.smtp.lmtp else SMTP

    def factory() -> SMTP:
        return cls(
            handler,
            hostname=hostname,
            data_size_limit=settings.limits.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident="maild ESMTP",
        )

    return factory


async def start(settings: Settings, writer: InboxWriter, host: str | None = None,
                port: int | None = None, metrics: Metrics | None = None) -> tuple[asyncio.base_events.Server, Handler]:
    lhost, _, lport = settings.smtp.listen.rpartition(":")
    handler = Handler(settings, writer, "lmtp" if settings.smtp.lmtp else "smtp", metrics)
    server = await asyncio.get_running_loop().create_server(
        make_factory(settings, handler), host or lhost, int(lport) if port is None else port
    )
    return server, handler
