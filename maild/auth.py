"""Is this message really from the staff member its From names? (SPEC §5)

A From header is a claim anyone can write. Commands are honoured only when
one of `security.staff_auth` proves it:

- `dkim`: a valid DKIM signature (dkimpy) whose d= aligns with the From
  domain (RFC 7489 §3.1.1 relaxed alignment: equal, or a parent domain).
- `trusted_relay`: the topmost Authentication-Results header whose
  authserv-id is in `security.trusted_authserv_ids` (RFC 8601 §5: only a
  header our own border added can be trusted, and our border adds it on
  top) says dkim=pass with an aligned header.d, or auth=pass with an
  smtp.auth naming the From address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import authres
import dkim

from maild.config import Settings
from maild.parse import Parsed

log = logging.getLogger(__name__)

DnsFunc = Callable[..., bytes | None]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    method: str = ""
    reason: str = ""


def aligned(signing_domain: str, from_domain: str) -> bool:
    signing_domain, from_domain = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return bool(signing_domain) and (from_domain == signing_domain or from_domain.endswith("." + signing_domain))


def verify_dkim(raw: bytes, from_addr: str, dnsfunc: DnsFunc | None = None) -> Verdict:
    from_domain = from_addr.rpartition("@")[2]
    try:
        verifier = dkim.DKIM(raw)
        count = len([h for h in verifier.headers if h[0].lower() == b"dkim-signature"])
    except Exception as exc:  # dkimpy raises its own and parsing errors on hostile input
        return Verdict(False, "dkim", f"unreadable message: {exc}")
    if count == 0:
        return Verdict(False, "dkim", "no DKIM-Signature")
    reasons = []
    for idx in range(count):
        try:
            verifier = dkim.DKIM(raw)
            ok = verifier.verify(idx, dnsfunc=dnsfunc) if dnsfunc else verifier.verify(idx)
        except Exception as exc:
            reasons.append(f"signature {idx + 1}: {exc}")
            continue
        domain = (verifier.domain or b"").decode("ascii", "replace")
        if not ok:
            reasons.append(f"signature {idx + 1} (d={domain}) does not verify")
        elif not aligned(domain, from_domain):
            reasons.append(f"signature {idx + 1} is by d={domain}, not aligned with {from_domain}")
        else:
            return Verdict(True, "dkim")
    return Verdict(False, "dkim", "; ".join(reasons))


def verify_trusted_relay(headers: tuple[str, ...], from_addr: str, trusted: list[str]) -> Verdict:
    trusted_ids = {t.lower() for t in trusted}
    if not trusted_ids:
        return Verdict(False, "trusted_relay", "no security.trusted_authserv_ids configured")
    from_domain = from_addr.rpartition("@")[2]
    for value in headers:  # top to bottom, as they appear in the message
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:
            continue
        if (header.authserv_id or "").lower() not in trusted_ids:
            continue
        # The topmost trusted header decides; any lower one may be the sender's own.
        for result in header.results:
            props = {f"{p.type}.{p.name}".lower(): (p.value or "") for p in result.properties}
            if result.method == "dkim" and result.result == "pass":
                if aligned(props.get("header.d", ""), from_domain):
                    return Verdict(True, "trusted_relay")
            if result.method == "auth" and result.result == "pass":
                who = props.get("smtp.auth", "").lower()
                if who == from_addr or ("@" not in who and who == from_addr.partition("@")[0]):
                    return Verdict(True, "trusted_relay")
        return Verdict(False, "trusted_relay", f"{header.authserv_id} reports no aligned pass")
    return Verdict(False, "trusted_relay", "no Authentication-Results from a trusted host")


def authenticate(settings: Settings, parsed: Parsed, dnsfunc: DnsFunc | None = None) -> Verdict:
    reasons = []
    for method in settings.security.staff_auth:
        if method == "dkim":
            verdict = verify_dkim(parsed.raw, parsed.from_addr, dnsfunc)
        else:
            verdict = verify_trusted_relay(
                parsed.authentication_results, parsed.from_addr, settings.security.trusted_authserv_ids
            )
        if verdict.ok:
            return verdict
        reasons.append(f"{method}: {verdict.reason}")
    return Verdict(False, "", "; ".join(reasons))
