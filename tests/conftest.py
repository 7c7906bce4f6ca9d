"""Shared fixtures: settings on a throwaway database, a capture smarthost, the daemon.

Servers start in the test's own event loop on 127.0.0.1 port 0 and the
bound port is read back. `MAILD_TEST_DATABASE=postgresql+psycopg://…/DB`
runs the suite on PostgreSQL: each test gets its own fresh database there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import socket
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from maild import config as config_mod
from maild.daemon import Daemon
from maild.storage.db import make_engine, upgrade

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SECRET = b"test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config(path: Path, db_url: str, *, smtp_port: int = 0, smarthost: int = 9, kb_dir: str = "",
                 secret_file: bool = True, extra: dict[str, str] | None = None) -> Path:
    """The shipped config.toml, for a `maild serve` process under test: its own database, ports, smarthost."""
    cfg = (ROOT / "config.toml").read_text()
    changes = {
        'url = "sqlite:///var/maild.db"': f'url = "{db_url}"',
        'listen = "127.0.0.1:2525"': f'listen = "127.0.0.1:{smtp_port}"',
        'listen = "127.0.0.1:8080"': 'listen = "127.0.0.1:0"',
        'kb_dir = "kb"': f'kb_dir = "{kb_dir}"',
        "port = 2526": f"port = {smarthost}",
        **({} if secret_file else {'secret_file = "var/maild.secret"': 'secret_file = ""'}),
        **(extra or {}),
    }
    for old, new in changes.items():
        assert old in cfg, old
        cfg = cfg.replace(old, new, 1)
    path.write_text(cfg)
    return path


async def start_serve(config: Path) -> asyncio.subprocess.Process:
    """`maild init`, then `maild serve` on this config as an operator runs them (stderr piped)."""
    env = {**os.environ, "MAILD_CONFIG": str(config)}
    init = await asyncio.create_subprocess_exec(sys.executable, "-m", "maild", "init", env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    assert await init.wait() == 0
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "maild", "serve", env=env,
                                                stderr=asyncio.subprocess.PIPE)


def shipped_config() -> dict:
    return tomllib.loads((ROOT / "config.toml").read_text())


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session", autouse=True)
def _postgres_cluster() -> Iterator[None]:
    """MAILD_TEST_DATABASE=postgresql: start a throwaway cluster for the session (a full URL uses yours)."""
    if os.environ.get("MAILD_TEST_DATABASE") != "postgresql":
        yield
        return
    from tests.servers import Postgres

    pg = Postgres().start()
    os.environ["MAILD_TEST_DATABASE"] = pg.url
    try:
        yield
    finally:
        os.environ["MAILD_TEST_DATABASE"] = "postgresql"
        pg.stop()


@contextlib.contextmanager
def database_url(tmp_path: Path) -> Iterator[str]:
    base = os.environ.get("MAILD_TEST_DATABASE", "")
    if not base.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'maild.db'}"
        return
    name = "maild_t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    from maild.storage.db import dispose_all

    with database_url(tmp_path) as url:
        try:
            yield url
        finally:
            dispose_all(forget=True)  # before the database is dropped


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str):
    def make(**over) -> config_mod.Settings:
        data = _merge(shipped_config(), {
            "database": {"url": db_url},
            "smtp": {"listen": "127.0.0.1:0"},
            "web": {"listen": "127.0.0.1:0", "kb_dir": ""},
            "outbound": {"smarthost": "127.0.0.1", "port": 9, "retry_base_seconds": 0.2,
                         "retry_max_seconds": 1.0, "timeout_seconds": 5},
            "security": {"secret_file": "", "trusted_authserv_ids": ["mx.example.org"]},
            "limits": {"retry_base_seconds": 0.1},
        })
        data = _merge(data, over)
        settings = config_mod.parse(data, base_dir=tmp_path)
        return settings.model_copy(update={"secret": SECRET})

    return make


@pytest.fixture
def settings(make_settings) -> config_mod.Settings:
    return make_settings()


@pytest.fixture
def engine(settings):
    eng = make_engine(settings.database.url, settings.base_dir)
    upgrade(eng)
    yield eng
    eng.dispose()


# -- the capture smarthost ---------------------------------------------------


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=email_policy.default)

    def body(self) -> str:
        msg = self.msg
        part = next((p for p in msg.walk() if p.get_content_type() == "text/plain"), msg)
        return part.get_content()


@dataclass
class Capture:
    """An aiosmtpd server standing in for the smarthost; `reply` can script refusals."""

    messages: list[Captured] = field(default_factory=list)
    reply: dict[str, str] = field(default_factory=dict)  # recipient -> status line for RCPT
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _cond: asyncio.Condition | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        status = self.reply.get(address.lower())
        if status:
            return status
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(Captured(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()
        return "250 2.0.0 captured"

    async def start(self, port: int = 0) -> Capture:
        self._cond = asyncio.Condition()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: AioSMTP(self, hostname="capture.test", decode_data=False), "127.0.0.1", port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def to(self, address: str, notice: str | None = None) -> list[Captured]:
        return [m for m in self.messages if address in m.rcpt_tos
                and (notice is None or m.msg.get("X-Maild-Notice") == notice)]

    async def wait_for(self, predicate, timeout: float = 15.0) -> list[Captured]:
        assert self._cond is not None

        async def check():
            async with self._cond:
                while not predicate(self):
                    await self._cond.wait()

        await asyncio.wait_for(check(), timeout)
        return self.messages


@pytest.fixture
async def capture():
    cap = await Capture().start()
    yield cap
    await cap.stop()


@pytest.fixture
async def daemon_factory(engine):
    started: list[Daemon] = []

    async def start(settings, **kw) -> Daemon:
        d = Daemon(settings, engine, poll_seconds=kw.pop("poll_seconds", 0.2), grace_seconds=2, **kw)
        await d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        await d.stop()


@pytest.fixture
async def daemon(settings, capture, daemon_factory):
    s = settings.model_copy(update={"outbound": settings.outbound.model_copy(update={"port": capture.port})})
    return await daemon_factory(s)


# -- sending ----------------------------------------------------------------------


def send_sync(port: int, raw: bytes | str, mail_from: str, rcpts: list[str]):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(mail_from, rcpts, raw)


async def send(port: int, raw: bytes | str, mail_from: str = "ana@cliente.es",
               rcpts: list[str] | None = None):
    return await asyncio.to_thread(send_sync, port, raw, mail_from, rcpts or ["consultas@example.org"])


def make_mail(
    *,
    frm: str = "Ana Pérez <ana@cliente.es>",
    to: str = "consultas@example.org",
    subject: str = "Problema con el certificado",
    body: str = "Hola, no puedo acceder a la plataforma con mi certificado. ¿Qué puedo hacer? Gracias.",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    from email.message import EmailMessage as Em
    from email.policy import SMTP

    msg = Em(policy=SMTP)
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0100"
    msg["Message-ID"] = f"<{message_id or uuid.uuid4().hex + '@cliente.es'}>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    msg.set_content(body)
    for k, v in (extra or {}).items():  # after set_content, which drops Content-* headers
        msg[k] = v
    return msg.as_bytes()


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await asyncio.to_thread(predicate)
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
