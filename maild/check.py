"""`maild check`: is this installation able to work? One verdict per part."""

from __future__ import annotations

import asyncio
import base64

import aiosmtplib

from maild.config import Settings, read_secret
from maild.errors import MaildError

Result = tuple[str, bool | None, str]  # (name, ok / None for skipped, detail)


def run_checks(settings: Settings, resolver=None) -> list[Result]:
    results: list[Result] = [("config", True, "read and valid")]
    try:
        read_secret(settings)
        results.append(("secret", True, "present"))
    except MaildError as exc:
        results.append(("secret", False, str(exc)))
    results.append(_database(settings))
    results.append(_smarthost(settings))
    results.append(_imap(settings))
    results.extend(_dkim(settings, resolver))
    return results


def _database(settings: Settings) -> Result:
    from maild.storage.db import check_current, make_engine

    try:
        engine = make_engine(settings.database.url, settings.base_dir)
        check_current(engine)
        return "database", True, f"{engine.url.render_as_string(hide_password=True)} at the newest migration"
    except MaildError as exc:
        return "database", False, str(exc)


def _smarthost(settings: Settings) -> Result:
    ob = settings.outbound

    async def probe() -> str:
        client = aiosmtplib.SMTP(hostname=ob.smarthost, port=ob.port, timeout=5, start_tls=ob.starttls)
        await client.connect()
        try:
            code, message = await client.ehlo()
            return f"{ob.smarthost}:{ob.port} answers {code} {message.splitlines()[0] if message else ''}".strip()
        finally:
            await client.quit()

    try:
        return "smarthost", True, asyncio.run(probe())
    except (aiosmtplib.SMTPException, OSError) as exc:
        return "smarthost", False, f"{ob.smarthost}:{ob.port}: {exc}"


def _imap(settings: Settings) -> Result:
    if not settings.imap.enabled:
        return "imap", None, "not enabled"
    from maild.imap import NETWORK_ERRORS, ImapReader
    from maild.storage.db import make_engine

    try:
        reader = ImapReader(settings, make_engine(settings.database.url, settings.base_dir))
        client = reader.connect()
        try:
            info = client.select_folder(settings.imap.folder, readonly=True)
            return "imap", True, f"{reader.mailbox}: {info[b'EXISTS']} message(s) waiting"
        finally:
            client.logout()
    except (MaildError, *NETWORK_ERRORS) as exc:
        return "imap", False, f"{settings.imap.host}:{settings.imap.port}: {exc}"


def _dkim(settings: Settings, resolver) -> list[Result]:
    ob = settings.outbound
    if not (ob.dkim_selector and ob.dkim_key_file):
        return [("dkim", None, "not configured: outgoing mail is not signed")]
    from cryptography.hazmat.primitives import serialization

    path = settings.path(ob.dkim_key_file)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        return [("dkim key", False, f"{path}: {exc}")]
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    mine = base64.b64encode(der).decode()
    out: list[Result] = [("dkim key", True, f"{path} ({key.key_size} bits)")]
    name = f"{ob.dkim_selector}._domainkey.{settings.mail.domain}"
    try:
        if resolver is None:
            import dns.resolver

            answers = dns.resolver.resolve(name, "TXT", lifetime=3)
            records = ["".join(part.decode() for part in r.strings) for r in answers]
        else:
            records = resolver(name)
    except Exception as exc:  # dnspython raises many kinds; all mean "not verifiable now"
        return [*out, ("dkim dns", False, f"{name}: cannot look it up ({type(exc).__name__}: {exc})")]
    published = [r for r in records if "p=" in r]
    keys = [r.split("p=", 1)[1].split(";")[0].strip().replace(" ", "") for r in published]
    if mine in keys:
        return [*out, ("dkim dns", True, f"{name} publishes this key")]
    if not published:
        return [*out, ("dkim dns", False, f"{name}: no DKIM record; publish the one 'maild dkim keygen' printed")]
    return [*out, ("dkim dns", False, f"{name} publishes another key: receivers will reject our signatures")]
