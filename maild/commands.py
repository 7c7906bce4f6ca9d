"""Staff commands (SPEC §5): lines at the top of a reply, applied all together or not at all. Pure.

`split()` takes the command lines off the top of the text; `resolve()` turns
them into field changes against a ticket view, or into errors that quote the
line and list what is valid. Every command answers to its English, Spanish
and Portuguese words, matched case- and accent-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from maild.config import Settings, fold
from maild.decide import PRIORITIES, STATE_LABELS, Change, TicketView

# canonical command -> every word that names it (folded: no case, no accents)
ALIASES: dict[str, tuple[str, ...]] = {
    "status": ("status", "estado", "state"),
    "close": ("close", "cerrar", "fechar"),
    "reopen": ("reopen", "reabrir"),
    "assign": ("assign", "asignar", "atribuir"),
    "category": ("category", "categoria"),
    "subcategory": ("subcategory", "subcategoria"),
    "priority": ("priority", "prioridad", "prioridade"),
    "lang": ("lang", "idioma", "lingua", "language"),
    "internal": ("internal", "interna", "interno"),
    "watch": ("watch", "observar", "monitorizar"),
    "unwatch": ("unwatch", "dejar", "deixar"),
}
_BY_WORD = {word: name for name, words in ALIASES.items() for word in words}
_NO_ARGUMENT = {"close", "reopen", "internal"}

STATE_WORDS: dict[str, str] = {
    **{w: "nueva" for w in ("nueva", "new", "open", "abierta", "aberta", "nova")},
    **{w: "en_curso" for w in ("en_curso", "en curso", "em curso", "em_curso", "in progress", "in_progress",
                                "progress", "en progreso")},
    **{w: "cerrada" for w in ("cerrada", "fechada", "closed", "cerrado", "fechado")},
}
PRIORITY_WORDS: dict[str, str] = {
    **{w: "baja" for w in ("baja", "low", "baixa")},
    **{w: "normal" for w in ("normal",)},
    **{w: "alta" for w in ("alta", "high")},
    **{w: "urgente" for w in ("urgente", "urgent")},
}
LANG_WORDS: dict[str, str] = {
    **{w: "es" for w in ("es", "espanol", "spanish", "castellano")},
    **{w: "pt" for w in ("pt", "portugues", "portuguese")},
    **{w: "en" for w in ("en", "ingles", "english")},
}


@dataclass(frozen=True)
class Command:
    line_no: int  # 1-based, in the reply's text
    line: str
    name: str  # canonical name, or "" when the word is unknown
    arg: str


@dataclass(frozen=True)
class Outcome:
    changes: tuple[Change, ...] = ()
    internal: bool = False
    watch: tuple[str, ...] = ()
    unwatch: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    explicit_state: bool = False
    names: tuple[str, ...] = field(default_factory=tuple)


def split(text: str) -> tuple[list[Command], str]:
    """The command lines at the top of `text` (blank lines between them allowed), and the rest."""
    lines = text.replace("\r\n", "\n").split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        raw = lines[i].strip()
        if not raw:
            i += 1
            continue
        if not raw.startswith("#") or raw.startswith("##") or len(raw) < 2 or not raw[1].isalpha():
            break
        word, _, arg = raw[1:].partition(" ")
        commands.append(Command(i + 1, raw, _BY_WORD.get(fold(word), ""), arg.strip()))
        i += 1
    return commands, "\n".join(lines[i:]).strip()


def _valid_commands() -> str:
    return ", ".join("#" + words[0] for words in ALIASES.values())


def resolve(settings: Settings, ticket: TicketView, commands: list[Command]) -> Outcome:
    """Apply `commands` in order to a copy of the ticket; any error means no change at all."""
    errors: list[str] = []
    view = ticket
    changes: dict[str, Change] = {}
    internal = False
    watch: list[str] = []
    unwatch: list[str] = []
    explicit_state = False

    def set_field(name: str, value: str) -> None:
        nonlocal view
        old = changes[name].old if name in changes else getattr(ticket, name)
        changes[name] = Change(name, old, value)
        view = replace(view, **{name: value})

    for cmd in commands:
        where = f"line {cmd.line_no}: {cmd.line!r}"
        arg = fold(cmd.arg)
        if not cmd.name:
            errors.append(f"{where}: unknown command. Valid commands: {_valid_commands()} "
                          "(also in Spanish and Portuguese)")
            continue
        if cmd.name in _NO_ARGUMENT and cmd.arg:
            errors.append(f"{where}: #{cmd.name} takes no argument")
            continue
        if cmd.name not in _NO_ARGUMENT and not cmd.arg:
            errors.append(f"{where}: #{cmd.name} needs an argument")
            continue
        if cmd.name == "status":
            state = STATE_WORDS.get(arg) or STATE_WORDS.get(arg.replace("-", " "))
            if state is None:
                errors.append(f"{where}: unknown state. Valid: nueva, en_curso, cerrada "
                              "(or en curso, em curso, in progress, fechada, closed, …)")
                continue
            set_field("state", state)
            explicit_state = True
        elif cmd.name == "close":
            set_field("state", "cerrada")
            explicit_state = True
        elif cmd.name == "reopen":
            if view.state != "cerrada":
                errors.append(f"{where}: the ticket is {STATE_LABELS[view.state]['en']}, not closed")
                continue
            set_field("state", "en_curso")
            explicit_state = True
        elif cmd.name == "assign":
            group = settings.group(cmd.arg)
            if group is None:
                errors.append(f"{where}: no such group. Valid: {', '.join(g.name for g in settings.groups)}")
                continue
            set_field("assignee", group.name)
        elif cmd.name == "category":
            cat = settings.category(cmd.arg.strip().removesuffix("."))
            if cat is None:
                valid = "; ".join(f"{c.code} {c.name.es}" for c in settings.categories)
                errors.append(f"{where}: no such category. Valid: {valid}")
                continue
            set_field("category", cat.code)
            set_field("subcategory", cat.other.name.es)
        elif cmd.name == "subcategory":
            cat = settings.category(view.category)
            subs = cat.subcategories if cat else []
            hits = [s for s in subs if any(arg in fold(n) for n in s.name.all())]
            exact = [s for s in hits if any(arg == fold(n) for n in s.name.all())]
            if len(exact) == 1:
                hits = exact
            if len(hits) != 1:
                valid = "; ".join(s.name.es for s in subs)
                what = "matches no subcategory" if not hits else f"matches {len(hits)} subcategories"
                errors.append(f"{where}: {what} of category {view.category}. Valid: {valid}")
                continue
            set_field("subcategory", hits[0].name.es)
        elif cmd.name == "priority":
            prio = PRIORITY_WORDS.get(arg)
            if prio is None:
                errors.append(f"{where}: unknown priority. Valid: {', '.join(PRIORITIES)}")
                continue
            set_field("priority", prio)
        elif cmd.name == "lang":
            lang = LANG_WORDS.get(arg)
            if lang is None:
                errors.append(f"{where}: unknown language. Valid: es, pt, en")
                continue
            set_field("language", lang)
        elif cmd.name == "internal":
            internal = True
        elif cmd.name in ("watch", "unwatch"):
            addr = cmd.arg.strip().strip("<>").lower()
            if addr.count("@") != 1 or " " in addr or "\n" in addr:
                errors.append(f"{where}: {cmd.arg!r} is not an e-mail address")
                continue
            (watch if cmd.name == "watch" else unwatch).append(addr)

    if errors:
        return Outcome(errors=tuple(errors))
    real = tuple(c for c in changes.values() if c.old != c.new)
    return Outcome(changes=real, internal=internal, watch=tuple(watch), unwatch=tuple(unwatch),
                   explicit_state=explicit_state, names=tuple(c.name for c in commands))
