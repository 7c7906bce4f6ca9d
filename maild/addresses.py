"""maild's own addresses: signed reply addresses, VERP bounce addresses, category plus-addresses.

`<local>+t<ID>.<SIG>@<domain>` names a ticket; `<local>+b<OUTBOX-ID>.<SIG>@<domain>`
names one outgoing message to one recipient (SPEC §3, §6). SIG is an HMAC
of the kind and id under the server secret, base32 so it survives MTAs
that lower-case local parts. A wrong SIG names nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from maild.config import Settings

SIG_LEN = 10  # 50 bits: guessing one takes ~10^15 tries
_TAGGED = re.compile(r"^([tb])(\d{1,12})\.([a-z2-7]+)$")


def signature(secret: bytes, kind: str, number: int) -> str:
    digest = hmac.new(secret, f"maild:{kind}{number}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:SIG_LEN]


def reply_address(settings: Settings, ticket_id: int) -> str:
    m = settings.mail
    return f"{m.support_local}+t{ticket_id}.{signature(settings.secret, 't', ticket_id)}@{m.support_domain}"


def bounce_address(settings: Settings, outbox_id: int) -> str:
    m = settings.mail
    return f"{m.support_local}+b{outbox_id}.{signature(settings.secret, 'b', outbox_id)}@{m.support_domain}"


@dataclass(frozen=True)
class Local:
    """What one of our addresses means. `kind`: support | ticket | bounce | category | noreply."""

    kind: str
    number: int | None = None
    category: str | None = None


def classify(settings: Settings, address: str) -> Local | None:
    """What `address` means to maild, or None when it is not ours (or a forged signature)."""
    address = address.strip().lower()
    local, _, domain = address.rpartition("@")
    m = settings.mail
    if address == m.noreply_address:
        return Local("noreply")
    if domain != m.support_domain:
        return None
    base, plus, tag = local.partition("+")
    if base != m.support_local:
        return None
    if not plus or not tag:
        return Local("support")
    match = _TAGGED.match(tag)
    if match:
        kind, number = match.group(1), int(match.group(2))
        if hmac.compare_digest(match.group(3), signature(settings.secret, kind, number)):
            return Local("ticket" if kind == "t" else "bounce", number=number)
        return Local("support")  # a tampered signature threads nothing, but the mail is still ours
    if settings.category(tag) is not None:
        return Local("category", category=tag)
    return Local("support")


def is_own(settings: Settings, address: str) -> bool:
    return classify(settings, address) is not None


_NEVER_SEND = re.compile(
    r"^(mailer-daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|noreply|bounces?|listserv|majordomo)"
    r"([+-].*)?@",
    re.IGNORECASE,
)


def never_send_to(address: str) -> bool:
    """Mailer-daemon, postmaster and no-reply style addresses never get mail from us (SPEC §6)."""
    return not address or bool(_NEVER_SEND.match(address))
