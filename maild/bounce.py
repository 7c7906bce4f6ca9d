"""Bounces: which message and which recipient failed, and whether for good (SPEC §6). Pure.

Every message maild sends has its own VERP envelope sender
`<local>+b<OUTBOX-ID>.<SIG>@<domain>`, so a bounce delivered there names the
exact outbox row, and so the recipient, even when its body is unreadable.
The body is still read: RFC 3464 delivery-status reports and the common
non-standard ones (Exchange/Outlook, qmail, Postfix, Exim, …) through
flufl.bounce, which tells permanent failures from temporary ones.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable
from dataclasses import dataclass

from flufl.bounce import all_failures

from maild.addresses import classify
from maild.config import Settings
from maild.parse import Parsed

_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailer)([+-].*)?@", re.IGNORECASE)


@dataclass(frozen=True)
class Bounce:
    outbox_id: int | None  # from the VERP address, when it came that way
    permanent: frozenset[str]
    temporary: frozenset[str]


def looks_like_bounce(parsed: Parsed, mail_from: str | None, verp: int | None) -> bool:
    ctype = parsed.headers.get("content-type", "").lower()
    return (
        verp is not None
        or "multipart/report" in ctype
        or (not mail_from and bool(_DAEMON.match(parsed.from_addr or "")))
        or bool(_DAEMON.match(parsed.from_addr or ""))
    )


def verp_outbox_id(settings: Settings, addresses: Iterable[str]) -> int | None:
    for addr in addresses:
        local = classify(settings, addr)
        if local is not None and local.kind == "bounce":
            return local.number
    return None


def read_bounce(settings: Settings, parsed: Parsed, mail_from: str | None,
                addresses: Iterable[str]) -> Bounce | None:
    """A `Bounce` when this message is a delivery failure report, else None."""
    verp = verp_outbox_id(settings, addresses)
    if not looks_like_bounce(parsed, mail_from, verp):
        return None
    try:
        msg = email.message_from_bytes(parsed.raw, policy=email.policy.compat32)
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choking on a hostile body must not lose the VERP facts
        temporary, permanent = set(), set()

    def norm(values) -> frozenset[str]:
        out = set()
        for v in values:
            text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            text = text.strip().strip("<>").lower()
            if "@" in text:
                out.add(text)
        return frozenset(out)

    perm, temp = norm(permanent), norm(temporary)
    if verp is None and not perm and not temp:
        return None  # a mailer-daemon's chat, not a failure report: handled as ordinary mail
    return Bounce(verp, perm, temp - perm)
