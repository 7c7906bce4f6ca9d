"""Compose: the bytes of an outgoing message. Pure.

Every header value written here goes through `one_line()`, so no CR/LF
from a subject, a name or a template can ever split a header (SPEC §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from maild.config import Settings
from maild.parse import Parsed
from maild.thread import subject_tag_pattern

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(value: str) -> str:
    return " ".join(_CONTROL.sub(" ", value or "").split())


def new_message_id(settings: Settings) -> str:
    return make_msgid(domain=settings.mail.domain).strip("<>")


def tagged_subject(settings: Settings, ticket_id: int, subject: str) -> str:
    """The subject with this ticket's tag, and no other ticket's (a stranger may have typed one)."""
    pattern = subject_tag_pattern(settings.tickets.subject_tag)
    subject = one_line(subject)
    if any(int(m.group(1)) == ticket_id for m in pattern.finditer(subject)):
        return subject
    subject = one_line(pattern.sub("", subject))
    return f"[{settings.tickets.subject_tag} #{ticket_id}] {subject}".strip()


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def compose(
    *,
    from_name: str,
    from_addr: str,
    to: str,
    subject: str,
    body: str,
    message_id: str,
    reply_to: str | None = None,
    in_reply_to: str = "",
    references: tuple[str, ...] = (),
    auto_submitted: str | None = None,
    language: str = "",
    extra: dict[str, str] | None = None,
    attachments: tuple[Attachment, ...] = (),
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(display_name=one_line(from_name), addr_spec=from_addr)
    msg["To"] = to
    msg["Subject"] = one_line(subject)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{message_id}>"
    if reply_to:
        msg["Reply-To"] = reply_to
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    refs = [r for r in references if r]
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)
    if refs:
        # RFC 5322 §3.6.4: keep the first and the newest ids when the chain grows long.
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    if auto_submitted:
        # RFC 3834 §5; X-Auto-Response-Suppress stops Exchange's own autoreplies.
        msg["Auto-Submitted"] = auto_submitted
        msg["X-Auto-Response-Suppress"] = "All"
    if language:
        msg["Content-Language"] = language
    for name, value in (extra or {}).items():
        msg[name] = one_line(value)
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    for att in attachments:
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.data, maintype=maintype or "application", subtype=subtype or "octet-stream",
                           filename=att.filename)
    return msg.as_bytes()


def parsed_reference_chain(parsed: Parsed) -> tuple[str, ...]:
    chain = list(parsed.references)
    for mid in parsed.in_reply_to:
        if mid not in chain:
            chain.append(mid)
    if parsed.message_id and parsed.message_id not in chain:
        chain.append(parsed.message_id)
    return tuple(chain)
