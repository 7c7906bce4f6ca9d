"""Parse: raw bytes in, a frozen `Parsed` out. Pure; no database, no sockets.

MIME decoding is mail-parser's; this module only picks out what threading
and deciding need, in normalised form (addresses lower-cased, Message-IDs
without angle brackets, header values free of CR/LF).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr

import mailparser

from maild.errors import RejectError

_MSGID = re.compile(r"<([^<>\s]+)>")
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# mail-parser logs every defect of every hostile message at WARNING; the
# defects that matter to us are reported by maild itself.
logging.getLogger("mailparser").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Parsed:
    raw: bytes
    message_id: str
    from_addr: str
    from_name: str
    subject: str
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    delivered_to: tuple[str, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    text: str = ""
    html: str = ""
    attachments: tuple[Attachment, ...] = ()
    content_language: str = ""
    auto_submitted: str = ""
    precedence: str = ""
    list_id: str = ""
    authentication_results: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Ids this message answers, the most specific first (In-Reply-To, then References newest first)."""
        seen: list[str] = []
        for mid in (*self.in_reply_to, *reversed(self.references)):
            if mid not in seen:
                seen.append(mid)
        return tuple(seen)


def clean_header(value: object) -> str:
    """A header value as one line of text: RFC 2047 decoded, CR/LF and runs of space folded."""
    if value is None:
        return ""
    text = str(value)
    if "=?" in text:
        try:
            text = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeError, HeaderParseError):
            pass  # a broken encoded-word stays as it came: readable, and one line below
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def body_text(text: str) -> str:
    """Text as databases take it: no NUL (PostgreSQL refuses it) nor other C0 controls but tab and newlines."""
    return _BODY_CONTROL.sub("", text)


def message_ids(value: str) -> tuple[str, ...]:
    """All <id> tokens of a Message-ID / In-Reply-To / References value, without brackets."""
    found = _MSGID.findall(value or "")
    if not found and value and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]  # a bare id, as some broken mailers write it
    return tuple(found)


def _addresses(values: list[str]) -> tuple[str, ...]:
    out = []
    for _name, addr in getaddresses([clean_header(v) for v in values]):
        addr = addr.strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return tuple(out)


def dedup_key(raw: bytes) -> tuple[str, str]:
    """(key, message_id): the Message-ID when there is one, else the bytes' hash (SPEC §3)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = re.search(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    if match:
        ids = message_ids(match.group(1).decode("latin-1"))
        if ids:
            return "mid:" + ids[0], ids[0]
    return "sha:" + hashlib.sha256(raw).hexdigest(), ""


def parse(raw: bytes, max_parts: int = 500) -> Parsed:
    # A cheap bound before the MIME parser sees it: each part needs a boundary line.
    if raw.count(b"\n--") > 2 * max_parts + 2:
        raise RejectError(f"more than {max_parts} MIME parts (limits.max_parts)")
    try:
        mail = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on hostile input
        raise RejectError(f"not a parseable message: {exc}") from None
    msg = mail.message

    def header(name: str) -> str:
        return clean_header(msg.get(name, ""))

    def all_headers(name: str) -> list[str]:
        return [str(v) for v in (msg.get_all(name) or [])]

    name, addr = parseaddr(clean_header(msg.get("From", "")))
    addr = addr.strip().lower()
    if "@" not in addr:
        addr = ""

    plain_parts, html_parts = _escaped_charset_bodies(msg) or (mail.text_plain, mail.text_html)
    text = body_text("\n".join(plain_parts)).strip()
    html = body_text("\n".join(html_parts)).strip()
    if not text and html:
        text = html_to_text(html)

    attachments = []
    for att in mail.attachments:
        payload = att.get("payload") or ""
        try:
            data = base64.b64decode(payload) if att.get("binary") else payload.encode("utf-8")
        except (ValueError, TypeError):
            data = payload.encode("utf-8", "replace") if isinstance(payload, str) else b""
        attachments.append(
            Attachment(
                filename=clean_header(att.get("filename") or "attachment"),
                content_type=(att.get("mail_content_type") or "application/octet-stream").lower(),
                data=data,
            )
        )

    if len(attachments) > max_parts:
        raise RejectError(f"{len(attachments)} attachments: more than {max_parts} MIME parts (limits.max_parts)")
    key, mid = dedup_key(raw)
    return Parsed(
        raw=raw,
        message_id=mid,
        from_addr=addr,
        from_name=name.strip(),
        subject=header("Subject"),
        to=_addresses(all_headers("To")),
        cc=_addresses(all_headers("Cc")),
        delivered_to=_addresses(all_headers("Delivered-To") + all_headers("X-Original-To")),
        in_reply_to=message_ids(" ".join(all_headers("In-Reply-To"))),
        references=message_ids(" ".join(all_headers("References"))),
        text=text,
        html=html,
        attachments=tuple(attachments),
        content_language=header("Content-Language").split(",")[0].strip().lower()[:2],
        auto_submitted=header("Auto-Submitted").lower(),
        precedence=header("Precedence").lower(),
        list_id=header("List-Id"),
        authentication_results=tuple(clean_header(v) for v in all_headers("Authentication-Results")),
        headers={k.lower(): clean_header(v) for k, v in msg.items()},
    )


_ESCAPED_CHARSETS = ("iso-2022-", "utf-7", "hz")


def _escaped_charset_bodies(msg) -> tuple[list[str], list[str]] | None:
    """The body texts, when a text part is in a 7-bit stateful charset (ISO-2022-JP, UTF-7, HZ).

    mail-parser hands back a 7bit part as it is on the wire, which is right for ASCII and wrong
    for those charsets: their text is ASCII bytes with escape sequences. Decode such messages'
    text parts here, with the charset each declares.
    """
    parts = [p for p in msg.walk()
             if p.get_content_type() in ("text/plain", "text/html") and p.get_content_disposition() != "attachment"]
    if not any((p.get_content_charset() or "").startswith(_ESCAPED_CHARSETS) for p in parts):
        return None
    plain: list[str] = []
    html: list[str] = []
    for p in parts:
        data = p.get_payload(decode=True) or b""
        try:
            text = data.decode(p.get_content_charset() or "us-ascii")
        except (LookupError, UnicodeError):
            text = data.decode("utf-8", "replace")
        (html if p.get_content_subtype() == "html" else plain).append(text)
    return plain, html


_TOKEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->|<(/?)([a-zA-Z][a-zA-Z0-9]*)[^>]*>|[^<]+|<",
                    re.IGNORECASE | re.DOTALL)
# Tags that end a line: their text stands on its own line(s), as a browser shows it.
_BLOCK = {"p", "div", "li", "tr", "table", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "pre",
          "hr", "address", "section", "article", "header", "footer", "dl", "dt", "dd"}


def html_to_text(html: str) -> str:
    """A readable plain text of an HTML-only message (for the journal and relays, never for display as HTML).

    As a browser lays it out: source newlines are spaces; <br> breaks a line; a block (p, div,
    blockquote, …) starts and ends on its own line; an empty block with a <br> is a blank line.
    """
    import html as htmllib

    out: list[str] = []

    def newline() -> None:
        if out and not out[-1].endswith("\n"):
            out.append("\n")

    for m in _TOKEN.finditer(html):
        if m.group(1) or m.group(0).startswith("<!--"):
            continue  # script, style, head, comments
        name = (m.group(3) or "").lower()
        if name == "br":
            out.append("\n")
        elif name in _BLOCK:
            newline()
        elif name:
            continue  # inline tags: their text flows on
        else:
            out.append(htmllib.unescape(re.sub(r"\s+", " ", m.group(0))))
    lines = [line.replace("\xa0", " ").strip() for line in "".join(out).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# -- language --------------------------------------------------------------

_STOPWORDS = {
    "es": set("el la los las de que y en un una por para con no es al lo como más pero sus le ya o este sí porque esta "
              "entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante todos uno les ni contra "
              "otros ese eso ante ellos e esto mí antes algunos qué unos yo otro otras otra él tanto esa estos mucho "
              "quienes nada muchos cual poco ella estar estas algunas algo nosotros buenos días hola gracias saludos "
              "consulta quisiera necesito tengo puedo cómo usted".split()),
    "pt": set("o a os as de que e do da em um uma para com não é no na por mais dos como mas foi ao ele das tem à seu "
              "sua ou ser quando muito há nos já está eu também só pelo pela até isso ela entre era depois sem mesmo aos "
              "ter seus quem nas me esse eles estão você tinha foram essa num nem suas meu às minha têm numa pelos "
              "bom dia olá obrigado obrigada cumprimentos preciso gostaria tenho posso como consigo".split()),
    "en": set("the be to of and a in that have i it for not on with he as you do at this but his by from they we say "
              "her she or an will my one all would there their what so up out if about who get which go me when make "
              "can like time no just him know take please hello hi thanks regards dear question need could".split()),
}


def detect_language(text: str, content_language: str = "", default: str = "es") -> str:
    """Content-Language when it names es/pt/en, else the language whose common words the text uses most."""
    if content_language in _STOPWORDS:
        return content_language
    words = re.findall(r"[a-záéíóúâêôãõçñü]+", text.lower()[:4000])
    if not words:
        return default
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=lambda k: scores[k])
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] == 0 or ranked[0] == ranked[1]:
        return default
    return best
