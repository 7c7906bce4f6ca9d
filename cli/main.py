"""`maild`: the operator's command line (typer). One sub-app per noun.

Expected faults are `MaildError`s; `_Group.invoke` turns each into one
`Error: …` line on stderr with its exit code (1 user error, 2 usage or
config), never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from maild import config as config_mod
from maild.errors import ConfigError, MaildError, RejectError, TransientError
from maild.storage.db import dispose_all, make_engine, upgrade

EX_OK, EX_DATAERR, EX_TEMPFAIL = 0, os.EX_DATAERR, os.EX_TEMPFAIL


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MaildError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


def new_app(help: str) -> typer.Typer:
    return typer.Typer(help=help, cls=_Group, rich_markup_mode=None, pretty_exceptions_enable=False,
                       no_args_is_help=True, add_completion=False)


app = new_app("maild: an email-driven helpdesk daemon.")
db_app = new_app("Database migrations.")
app.add_typer(db_app, name="db")

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="config.toml to use (else $MAILD_CONFIG, ./config.toml)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.callback()
def root(ctx: typer.Context, config: ConfigOpt = None,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    ctx.obj = {"config": config, "verbose": verbose}
    ctx.call_on_close(dispose_all)


def settings_from(ctx: typer.Context, need_secret: bool = True) -> config_mod.Settings:
    root_ctx = ctx.find_root()
    return config_mod.load((root_ctx.obj or {}).get("config"), need_secret=need_secret)


def engine_from(settings: config_mod.Settings):
    return make_engine(settings.database.url, settings.base_dir)


def setup_logging(settings: config_mod.Settings, verbose: bool = False) -> None:
    from maild import logs

    logs.setup(settings.logging.format, "DEBUG" if verbose else settings.logging.level)


# -- init / db / serve / ingest -----------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="where to write config.toml")] = Path("."),
) -> None:
    """Write a starter config and secret (when missing) and create the database."""
    from importlib import resources

    root_cfg = (ctx.find_root().obj or {}).get("config")
    path = config_mod.find_config(root_cfg) if (root_cfg or os.environ.get("MAILD_CONFIG")) \
        else directory / "config.toml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((resources.files("maild.templates") / "config.toml").read_bytes())
        typer.echo(f"wrote {path}")
    settings = config_mod.load(path, need_secret=False)
    if settings.security.secret_file:
        secret = settings.path(settings.security.secret_file)
        if not secret.exists():
            secret.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            typer.echo(f"wrote {secret} (keep it private: it signs reply addresses)")
    if settings.database.url.startswith("sqlite:///"):
        settings.path(settings.database.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upgrade(engine_from(settings))
    typer.echo(f"database ready: {settings.database.url}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database to the newest schema (Alembic)."""
    settings = settings_from(ctx, need_secret=False)
    upgrade(engine_from(settings))
    typer.echo("database is at the newest migration")


@db_app.command("copy")
def db_copy(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="URL", help="the new database, e.g. postgresql+psycopg://maild@db/maild")],
) -> None:
    """Copy every row of the configured database into a new, empty one (SQLite → PostgreSQL).

    Stop maild first (or accept that mail arriving during the copy stays behind);
    then point database.url at URL.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from maild.dbcopy import copy_database

    settings = settings_from(ctx, need_secret=False)
    source = engine_from(settings)
    target_engine = make_engine(target, Path.cwd())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        tasks: dict[str, int] = {}

        def show(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(table, total=total)
            progress.update(tasks[table], completed=done)

        copied = copy_database(source, target_engine, show)
    typer.echo(f"copied {sum(c.rows for c in copied)} rows in {len(copied)} tables: "
               + ", ".join(f"{c.table} {c.rows}" for c in copied))
    shown = target_engine.url.render_as_string(hide_password=True)
    typer.echo(f"now set [database] url = \"{shown}\" in the config and start maild")


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run SMTP/LMTP, the processor and the outbox sender until SIGTERM."""
    from maild.daemon import Daemon

    settings = settings_from(ctx)
    setup_logging(settings, (ctx.find_root().obj or {}).get("verbose", False))
    _fewer_malloc_arenas()
    asyncio.run(Daemon(settings, engine_from(settings), processor_process=True).serve_forever())


def _fewer_malloc_arenas() -> None:
    """glibc gives threads their own malloc arenas (up to 8 a core), each holding freed memory:
    the daemon's few threads need two. Set before its threads start; the worker inherits it."""
    import ctypes

    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


@app.command()
def web(ctx: typer.Context) -> None:
    """Run only the knowledge-base website (web.listen), until SIGTERM."""
    import uvicorn

    from maild.web import Site

    settings = settings_from(ctx, need_secret=False)
    setup_logging(settings, (ctx.find_root().obj or {}).get("verbose", False))
    host, _, port = settings.web.listen.rpartition(":")
    uvicorn.run(Site(settings, engine_from(settings)).app, host=host, port=int(port), log_level="warning",
                lifespan="off", server_header=False)


@app.command()
def ingest(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="the message file, or - for standard input")] = "-",
    recipient: Annotated[list[str] | None, typer.Option("--recipient", help="envelope recipient (repeatable)")] = None,
    sender: Annotated[str | None, typer.Option("--sender", help="envelope sender ('' or <> for the null sender)")] = None,
) -> None:
    """Take one message from a file or stdin (for an MTA pipe). Exit 0 stored, 75 retry later, 65 never."""
    from maild.storage.inbox import inbox_row, store_now

    try:
        settings = settings_from(ctx)
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        if len(raw) > settings.limits.max_message_bytes:
            raise RejectError(f"message of {len(raw)} bytes is over limits.max_message_bytes "
                              f"({settings.limits.max_message_bytes})")
        head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        if not raw.strip() or b":" not in head.split(b"\n", 1)[0]:
            raise RejectError("input is not an e-mail message (no header block)")
        rcpts = recipient or [settings.mail.support_address]
        mail_from = None if sender is None else ("" if sender in ("<>", "") else sender)
        store_now(engine_from(settings), [inbox_row(raw, "pipe", mail_from, rcpts)])
    except RejectError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EX_DATAERR) from None
    except FileNotFoundError:
        typer.echo(f"Error: no such file: {file}", err=True)
        raise typer.Exit(EX_DATAERR) from None
    except (TransientError, ConfigError) as exc:
        # The MTA keeps the message and retries: a broken config must not bounce mail.
        typer.echo(f"Error: {exc} (the MTA will retry)", err=True)
        raise typer.Exit(EX_TEMPFAIL) from None


@app.command()
def stats(
    ctx: typer.Context,
    period: Annotated[str, typer.Option("--period", help="tickets created within, e.g. 30d, 12w")] = "30d",
    as_json: JsonOpt = False,
) -> None:
    """Tickets by state and category; p50/p90 first-response and resolution hours per category."""
    import json

    from rich.console import Console
    from rich.table import Table

    from maild.cli.tickets import parse_duration
    from maild.stats import stats as compute
    from maild.storage.models import utcnow

    settings = settings_from(ctx, need_secret=False)
    data = compute(engine_from(settings), utcnow() - parse_duration(period))
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    console = Console()
    console.print(f"{data['tickets']} ticket(s) created in the last {period}: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(data["by_state"].items())))
    table = Table(title="by category (hours)")
    for c in ("cat.", "tickets", "1st resp p50", "1st resp p90", "resolution p50", "resolution p90"):
        table.add_column(c)
    for code, c in data["by_category"].items():
        table.add_row(code, str(c["tickets"]), *(("—" if v is None else f"{v:g}") for v in (
            c["first_response_p50_h"], c["first_response_p90_h"], c["resolution_p50_h"], c["resolution_p90_h"])))
    console.print(table)


@app.command()
def check(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Check config, database, smarthost, IMAP and the DKIM key and its DNS record, each with a verdict."""
    import json

    from maild.check import run_checks

    settings = settings_from(ctx, need_secret=False)
    results = run_checks(settings)
    if as_json:
        typer.echo(json.dumps([{"check": n, "ok": ok, "detail": d} for n, ok, d in results], indent=2))
    else:
        for name, ok, detail in results:
            mark = "ok  " if ok else ("skip" if ok is None else "FAIL")
            typer.echo(f"{mark}  {name:<11} {detail}")
    if any(ok is False for _, ok, _ in results):
        raise typer.Exit(1)


def _register() -> None:
    from maild.cli import contacts, kb, queues, staff, tickets
    from maild.cli import dkim as dkim_cli

    app.add_typer(tickets.app, name="tickets")
    app.add_typer(staff.app, name="staff")
    app.add_typer(queues.inbox_app, name="inbox")
    app.add_typer(queues.outbox_app, name="outbox")
    app.add_typer(dkim_cli.app, name="dkim")
    app.add_typer(kb.app, name="kb")
    app.add_typer(contacts.app, name="contacts")


_register()


def normalize_args(args: list[str]) -> list[str]:
    """Accept --config after the command too (SPEC §8): move it to the front."""
    out, front, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            front.append(arg)
        else:
            out.append(arg)
        i += 1
    return front + out


def main(argv: list[str] | None = None) -> None:
    args = normalize_args(list(sys.argv[1:] if argv is None else argv))
    app(args=args, prog_name="maild")
