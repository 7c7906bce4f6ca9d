"""Strip quoted history and signatures from a reply, for the journal (the original is kept).

mail-parser-reply does the work. It has no Portuguese and its Spanish
"escribió:" header needs two spaces before the verb, so Gmail's
"El lun, 2 mar 2026 a las 10:00, Ana (<ana@x>) escribió:" slips through;
both are registered here, in the library's own table, once at import, with the
Spanish and Portuguese "-----Mensaje original-----" separators of older Outlook.
"""

from __future__ import annotations

import re

from mailparser_reply import EmailReplyParser
from mailparser_reply.constants import MAIL_LANGUAGES, QUOTED_MATCH_INCLUDE

_Q = QUOTED_MATCH_INCLUDE

MAIL_LANGUAGES["pt"] = {
    # Gmail / Apple Mail: "Em seg., 2 de mar. de 2026 às 10:00, Ana <ana@x> escreveu:"
    "wrote_header": r"^(" + _Q + r"(?:Em|No dia)\s.+?\sescreveu:|" + _Q + r"-{3,} ?Mensagem original ?-{3,})$",
    # Outlook: "De: … / Enviado: … / Para: … / Assunto: …" (pt-PT and pt-BR words)
    "from_header": r"((?:(?:^|\n|\n" + _Q + r")[* ]*(?:De|Enviado|Enviada|Para|Assunto|Data|Cc|Organização):"
                   r"[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})",
    "disclaimers": ["Aviso:", "Confidencialidade:", "Aviso de confidencialidade:", "Advertência:"],
    "signatures": ["Cumprimentos,", "Melhores cumprimentos,", "Atenciosamente,", "Obrigado,", "Obrigada,",
                   "Com os melhores cumprimentos,", "Abraço,"],
    "sent_from": r"Enviado do meu.*|Enviado a partir do.*|Obter o Outlook para.*",
}

_es = dict(MAIL_LANGUAGES["es"])
_es["wrote_header"] = r"^(" + _Q + r"El\s.+?\s?escribió:|" + _Q + r"-{3,} ?Mensaje original ?-{3,})$"
_es["from_header"] = (r"((?:(?:^|\n|\n" + _Q + r")[* ]*(?:De|Enviado el|Enviado|Para|Asunto|Fecha|CC|Organización):"
                      r"[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})")
MAIL_LANGUAGES["es"] = _es

_PARSERS: dict[str, EmailReplyParser] = {}


# After the ticket's own language: the others maild speaks, then German (Outlook in German is common
# among market agents: "AW:", "Von:/Gesendet:").
_FALLBACK = ("es", "pt", "en", "de")


def strip_reply(text: str, language: str = "es") -> str:
    """The new text of a reply: what comes before the first quoted header, signature removed.

    An inline reply (new lines between '>' quoted lines) keeps every new block instead.
    """
    if not text.strip():
        return ""
    langs = [lang for lang in (language, *_FALLBACK) if lang in MAIL_LANGUAGES]
    inline = _inline_reply(text, langs)
    if inline is not None:
        return inline
    key = ",".join(dict.fromkeys(langs))
    parser = _PARSERS.get(key)
    if parser is None:
        parser = _PARSERS[key] = EmailReplyParser(languages=list(dict.fromkeys(langs)))
    try:
        reply = parser.read(text).replies[0]
    except (IndexError, re.error):
        return text.strip()
    body = reply.body.strip()
    # A top-posted reply whose quote starts with plain '>' lines: drop them too.
    lines = body.splitlines()
    while lines and lines[-1].lstrip().startswith(">"):
        lines.pop()
    return "\n".join(lines).strip() or text.strip()


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _attribution(line: str, langs: list[str]) -> bool:
    """'On … wrote:', 'El … escribió:', 'Em … escreveu:', 'Am … schrieb …:' (the line before a quote)."""
    line = line.strip()
    for lang in langs:
        try:
            if re.match(MAIL_LANGUAGES[lang]["wrote_header"], line):
                return True
        except re.error:
            continue
    return False


def _inline_reply(text: str, langs: list[str]) -> str | None:
    """The new blocks of an inline (interleaved) reply, in order; None if the reply is not one."""
    lines = text.splitlines()
    quoted = [i for i, line in enumerate(lines) if _quoted(line)]
    if not quoted:
        return None
    first, last = quoted[0], quoted[-1]
    if not any(line.strip() and not _quoted(line) for line in lines[first:last + 1]):
        return None  # one quote block: top- or bottom-posted, the parser's case
    head = lines[:first]
    while head and not head[-1].strip():
        head.pop()
    for take in (1, 2):  # an attribution line, or one a mail client wrapped in two
        if len(head) >= take and _attribution(" ".join(head[-take:]), langs):
            del head[-take:]
            break
    blocks: list[list[str]] = [[]]
    for line in [*head, ">", *lines[first:]]:
        if _quoted(line):
            if blocks[-1]:
                blocks.append([])
            continue
        if line.rstrip() == "--":
            break  # the signature delimiter ("-- "): what follows is not the reply
        blocks[-1].append(line.rstrip())
    kept = ["\n".join(b).strip() for b in blocks]
    return "\n\n".join(k for k in kept if k) or None
