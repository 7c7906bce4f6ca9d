"""Logging: plain or JSON lines (`[logging] format`), with the ticket and Message-ID on every line
written while a message is being handled (a contextvar the processor sets)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType

_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "maild_log_context", default=MappingProxyType({}))


@contextlib.contextmanager
def context(**fields: object) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: object) -> None:
    """Add fields to the current context (e.g. the ticket, once it is known)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v not in (None, "")}})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = dict(_context.get())
        return True


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "ctx", {})
        if ctx:
            line += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage(), **getattr(record, "ctx", {})}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


_current = {"format": "plain", "level": "INFO"}


def current_format() -> str:
    return _current["format"]


def current_level() -> str:
    return _current["level"]


def setup(fmt: str = "plain", level: str = "INFO") -> None:
    _current.update(format=fmt, level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # mail.log is aiosmtpd: five INFO lines per SMTP session, written from the event loop.
    for noisy in ("alembic", "uvicorn.error", "mail-parser", "mailparser", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
