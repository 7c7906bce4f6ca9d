"""Settings: one TOML file read once into frozen, typed settings (SPEC §7).

Every key, with its default, is declared here; this module is the schema.
A wrong key or value raises `ConfigError` naming the key, the value and what
is expected, and the CLI turns that into one line and exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maild.errors import ConfigError

LANGUAGES = ("es", "pt", "en")
Lang = Literal["es", "pt", "en"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    value = value.strip()
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain or any(c in value for c in " \r\n<>,;"):
        raise ValueError("expected a bare e-mail address such as consultas@example.org")
    return value.lower()


def _hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:2525")
    return value


def fold(text: str) -> str:
    """Case- and accent-insensitive form of a name (SPEC §5 matching)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


class Localized(_Section):
    es: str
    pt: str
    en: str

    def get(self, lang: str) -> str:
        return getattr(self, lang, self.es)

    def all(self) -> tuple[str, str, str]:
        return (self.es, self.pt, self.en)


class MailSettings(_Section):
    domain: str = "example.org"
    support_address: str = "consultas@example.org"
    noreply_address: str = "no-reply@example.org"

    _check_addresses = field_validator("support_address", "noreply_address")(_address)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower()
        if not value or "@" in value or " " in value:
            raise ValueError("expected a domain name such as example.org")
        return value

    @property
    def support_local(self) -> str:
        return self.support_address.rpartition("@")[0]

    @property
    def support_domain(self) -> str:
        return self.support_address.rpartition("@")[2]


class DatabaseSettings(_Section):
    url: str = "sqlite:///maild.db"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return value


class SmtpSettings(_Section):
    listen: str = "127.0.0.1:2525"
    lmtp: bool = False
    hostname: str = ""  # the name in the greeting; defaults to mail.domain

    _check_listen = field_validator("listen")(_hostport)


class ImapSettings(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 993
    tls: Literal["tls", "starttls", "none"] = "tls"
    user: str = ""
    password_env: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = "maild-processed"
    idle: bool = True
    poll_seconds: int = Field(60, ge=1)
    # RFC 2177: re-issue IDLE before the server's 29-minute limit.
    idle_seconds: int = Field(25 * 60, ge=1, le=29 * 60)
    ca_file: str = ""  # a CA bundle for a server with a private certificate

    @model_validator(mode="after")
    def _plain_only_local(self) -> ImapSettings:
        if self.tls == "none" and self.enabled:
            try:
                loopback = ipaddress.ip_address(self.host).is_loopback
            except ValueError:
                loopback = self.host == "localhost"
            if not loopback:
                raise ValueError(f"imap.tls = 'none' is only allowed to 127.0.0.1, not {self.host!r}")
        return self


class OutboundSettings(_Section):
    smarthost: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    user: str = ""
    password_env: str = ""
    dkim_selector: str = ""
    dkim_key_file: str = ""
    # Retry schedule for 4xx answers and connection errors: base * 2**attempt, capped.
    retry_base_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    give_up_hours: float = Field(72.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)


class WebSettings(_Section):
    listen: str = "127.0.0.1:8080"
    base_url: str = "http://127.0.0.1:8080"
    kb_dir: str = ""  # when set, `maild serve` syncs the knowledge base from it at start and on SIGHUP

    _check_listen = field_validator("listen")(_hostport)


class SecuritySettings(_Section):
    secret_env: str = "MAILD_SECRET"
    secret_file: str = ""
    staff_auth: list[Literal["dkim", "trusted_relay"]] = ["dkim", "trusted_relay"]
    trusted_authserv_ids: list[str] = []
    # An upstream filter's verdict sends a message to quarantine instead of opening a ticket.
    spam_flag_header: str = "X-Spam-Flag"
    spam_score_header: str = "X-Spam-Score"
    spam_score_threshold: float = Field(0.0, ge=0)  # 0: ignore the score header


class TicketSettings(_Section):
    subject_tag: str = "Consulta"
    default_category: str = "01"
    default_language: Lang = "es"
    reopen_days: int = Field(30, ge=0)
    auto_close_days: int = Field(0, ge=0)

    @field_validator("subject_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "[]#\r\n"):
            raise ValueError("expected a short word without [ ] # or line breaks, e.g. 'OMIE'")
        return value.strip()


class LimitSettings(_Section):
    max_message_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_attachment_bytes: int = Field(5 * 1024 * 1024, gt=0)
    new_tickets_per_hour: int = Field(20, ge=1)
    notices_per_hour: int = Field(30, ge=1)
    max_attempts: int = Field(5, ge=1)
    max_parts: int = Field(500, ge=1)  # MIME parts; more is refused to quarantine before parsing
    retry_base_seconds: float = Field(30.0, gt=0)  # a failed message is retried after base * 2**(attempts-1)
    # A message claimed by an instance that died goes back to the queue after this (several instances).
    claim_timeout_seconds: float = Field(120.0, gt=0)
    # While SMTP/LMTP transactions are open, the processor pauses this long between messages, so a
    # burst is taken at the protocol's speed and processed right after (0: never pause).
    processor_yield_ms: float = Field(20.0, ge=0, le=1000)


class LoggingSettings(_Section):
    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Group(_Section):
    name: str
    display_name: str = ""
    address: str = ""  # a shared mailbox; when empty, each active staff member of the group gets the copy

    @field_validator("address")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _address(value) if value else ""

    @property
    def shown_name(self) -> str:
        return self.display_name or self.name


class Subcategory(_Section):
    name: Localized
    other: bool = False


class Category(_Section):
    code: str
    name: Localized
    group: str
    subcategories: list[Subcategory]

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not value.isalnum():
            raise ValueError("expected a short alphanumeric code such as 04")
        return value

    @model_validator(mode="after")
    def _one_other(self) -> Category:
        others = [s for s in self.subcategories if s.other]
        if len(others) != 1:
            raise ValueError(f"category {self.code} needs exactly one subcategory with other = true")
        return self

    @property
    def other(self) -> Subcategory:
        return next(s for s in self.subcategories if s.other)


class Settings(_Section):
    mail: MailSettings = MailSettings()
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    imap: ImapSettings = ImapSettings()
    outbound: OutboundSettings = OutboundSettings()
    web: WebSettings = WebSettings()
    security: SecuritySettings = SecuritySettings()
    tickets: TicketSettings = TicketSettings()
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    groups: list[Group] = []
    categories: list[Category] = []
    # Where relative paths in this file are resolved; set by load().
    base_dir: Path = Path(".")
    secret: bytes = Field(b"", repr=False, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        groups = {fold(g.name) for g in self.groups}
        if len(groups) != len(self.groups):
            raise ValueError("groups: two groups have the same name")
        codes = [c.code for c in self.categories]
        if len(set(codes)) != len(codes):
            raise ValueError("categories: two categories have the same code")
        for c in self.categories:
            if fold(c.group) not in groups:
                raise ValueError(f"categories.{c.code}.group = {c.group!r}: no [[groups]] entry has that name")
        if self.categories and self.tickets.default_category not in codes:
            raise ValueError(
                f"tickets.default_category = {self.tickets.default_category!r}: expected one of {', '.join(codes)}"
            )
        return self

    # -- lookups -----------------------------------------------------------
    def category(self, code: str) -> Category | None:
        return next((c for c in self.categories if c.code == code), None)

    def group(self, name: str) -> Group | None:
        key = fold(name)
        return next((g for g in self.groups if fold(g.name) == key), None)

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p


def _describe(err: dict) -> str:
    loc = err.get("loc", ())
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        return f"unknown key {key!r}: remove it or check its spelling"
    msg = msg.removeprefix("Value error, ")
    if "input" in err and err.get("type") != "missing":
        return f"{key} = {err['input']!r}: {msg}"
    return f"{key}: {msg}"


def find_config(explicit: str | os.PathLike | None) -> Path:
    """--config, then $MAILD_CONFIG, then ./config.toml (SPEC §7)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("MAILD_CONFIG"):
        return Path(os.environ["MAILD_CONFIG"])
    return Path("config.toml")


def parse(data: dict, base_dir: Path = Path("."), source: str = "config") -> Settings:
    try:
        settings = Settings.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None
    return settings


def load(path: str | os.PathLike | None = None, *, need_secret: bool = True) -> Settings:
    path = find_config(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}: run 'maild init' or pass --config PATH") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = parse(data, base_dir=path.resolve().parent, source=str(path))
    if need_secret:
        settings = settings.model_copy(update={"secret": read_secret(settings)})
    return settings


def read_secret(settings: Settings) -> bytes:
    sec = settings.security
    value = os.environ.get(sec.secret_env, "") if sec.secret_env else ""
    if not value and sec.secret_file:
        try:
            value = settings.path(sec.secret_file).read_text().strip()
        except OSError:
            value = ""
    if len(value) < 16:
        raise ConfigError(
            f"security: no server secret (at least 16 characters) in ${sec.secret_env}"
            + (f" or in {sec.secret_file}" if sec.secret_file else "")
            + ": run 'maild init' or set the variable"
        )
    return value.encode()
