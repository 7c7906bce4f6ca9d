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
from maild.storage.inbox import InboxWriter

log = logging.getLogger(__name__)

OK = "250 2.0.0 OK: queued"
RCPT_OK = "250 2.1.5 OK"
NO_SUCH_USER = "550 5.1.1 No such recipient here"
TEMPFAIL = "451 4.3.0 Temporary failure storing the message, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


class Handler:
    def __init__(self, settings: Settings, writer: InboxWriter, channel: str) -> None:
        self.settings = settings
        self.writer = writer
        self.channel = channel
        self.accepting = True

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        # Only our own addresses: maild is not a relay.
        if addresses.classify(self.settings, address) is None:
            return NO_SUCH_USER
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
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
                port: int | None = None) -> tuple[asyncio.base_events.Server, Handler]:
    lhost, _, lport = settings.smtp.listen.rpartition(":")
    handler = Handler(settings, writer, "lmtp" if settings.smtp.lmtp else "smtp")
    server = await asyncio.get_running_loop().create_server(
        make_factory(settings, handler), host or lhost, int(lport) if port is None else port
    )
    return server, handler
