"""The error kinds of maild, and what each one means to whoever sees it.

Expected faults are these exceptions; anything else is a bug. Each kind
knows its exit code, so the CLI maps them in one place (cli/main.py) and
receivers map them to SMTP codes / MTA exit codes (see `ingest_exit_code`).
"""

from __future__ import annotations

import os


class MaildError(Exception):
    """Base of every expected fault. `str(err)` is the one line a person reads."""

    exit_code = 1


class UserError(MaildError):
    """The operator asked for something that does not exist or is not valid."""

    exit_code = 1


class ConfigError(MaildError):
    """The configuration is wrong: the message names the key, value and what is expected."""

    exit_code = 2


class UsageError(MaildError):
    exit_code = 2


class TransientError(MaildError):
    """Try again later: database locked or down, disk full. Maps to 451 / EX_TEMPFAIL."""

    exit_code = os.EX_TEMPFAIL


class RejectError(MaildError):
    """This message can never be taken (too big, not a message). Maps to 5xx / EX_DATAERR."""

    exit_code = os.EX_DATAERR


class QuarantineError(RejectError):
    """Kept, not processed: an upstream spam verdict, a rate limit, a structure too hostile to parse.

    The operator sees it in `maild inbox list` and can replay it with `maild inbox retry`.
    """
