"""The operator's CLI: happy paths, JSON fields of SPEC §8, errors and exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maild.cli.main import app, normalize_args
from maild.process import Processor
from maild.storage.inbox import inbox_row, store_now
from tests.conftest import make_mail

runner = CliRunner()


@pytest.fixture
def cfg(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", "s" * 32)
    path = tmp_path / "c.toml"
    from tests.conftest import ROOT

    text = (ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{db_url}"')
    text = text.replace('trusted_authserv_ids = []', 'trusted_authserv_ids = ["mx.example.org"]')
    path.write_text(text.replace('secret_file = "var/maild.secret"', 'secret_file = ""'))
    assert cli(["db", "upgrade"], path).exit_code == 0
    return path


def cli(args, cfg=None, before=True):
    if cfg is not None:
        args = ["--config", str(cfg), *args] if before else [*args, "--config", str(cfg)]
    return runner.invoke(app, normalize_args(args), env={"COLUMNS": "200"})


def seed(cfg, n=2):
    from maild import config

    settings = config.load(cfg)
    from maild.storage.db import make_engine

    engine = make_engine(settings.database.url, settings.base_dir)
    store_now(engine, [inbox_row(make_mail(message_id=f"s{i}@cliente.es", frm=f"u{i}@cliente.es"), "pipe",
                                 f"u{i}@cliente.es", ["consultas+04@example.org" if i else "consultas@example.org"])
                       for i in range(n)])
    Processor(settings, engine).run_batch()
    return engine


def test_config_accepted_before_and_after_the_command(cfg):
    seed(cfg)
    a = cli(["tickets", "list", "--json"], cfg, before=True)
    b = cli(["tickets", "list", "--json"], cfg, before=False)
    assert a.exit_code == b.exit_code == 0
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_tickets_list_json_fields_and_filters(cfg):
    seed(cfg)
    rows = json.loads(cli(["tickets", "list", "--json"], cfg).stdout)
    assert len(rows) == 2
    for row in rows:
        assert set(row) >= {"id", "state", "subject", "category", "subcategory", "assignee", "priority",
                            "language", "requester", "watchers", "created_at", "closed_at"}
        assert "messages" not in row and "journal" not in row
    only = json.loads(cli(["tickets", "list", "--json", "--category", "04"], cfg).stdout)
    assert [r["category"] for r in only] == ["04"]
    mine = json.loads(cli(["tickets", "list", "--json", "--requester", "u0@cliente.es"], cfg).stdout)
    assert [r["requester"] for r in mine] == ["u0@cliente.es"]
    assert json.loads(cli(["tickets", "list", "--json", "--closed-within", "30d"], cfg).stdout) == []
    assert json.loads(cli(["tickets", "list", "--json", "--state", "nueva"], cfg).stdout) != []
    table = cli(["tickets", "list"], cfg)
    assert table.exit_code == 0 and "u0@cliente.es" in table.stdout


def test_tickets_show_json_has_messages_and_journal(cfg):
    seed(cfg, 1)
    data = json.loads(cli(["tickets", "show", "1", "--json"], cfg).stdout)
    assert data["id"] == 1 and data["requester"] == "u0@cliente.es"
    kinds = [(m["direction"], m["kind"]) for m in data["messages"]]
    assert ("in", "requester") in kinds and ("out", "notice") in kinds
    for m in data["messages"]:
        assert set(m) >= {"message_id", "direction", "kind", "from", "subject", "text", "attachments"}
    first = data["journal"][0]
    assert set(first) >= {"at", "author", "changes", "note"}
    assert {"field": "state", "old": None, "new": "nueva"} in first["changes"]
    shown = cli(["tickets", "show", "1", "--lang", "pt"], cfg)
    assert shown.exit_code == 0 and "Aberta" in shown.stdout


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["tickets", "show", "999"], 1, "no ticket 999"),
        (["tickets", "list", "--state", "abierta"], 1, "--state 'abierta'"),
        (["tickets", "list", "--closed-within", "soon"], 1, "--closed-within 'soon'"),
        (["tickets", "list", "--category", "77"], 1, "--category '77'"),
        (["staff", "add", "x@example.org", "--name", "X", "--group", "NOPE"], 1, "no such group"),
        (["staff", "remove", "ghost@example.org"], 1, "not active staff"),
        (["inbox", "retry"], 1, "name the inbox ids"),
        (["outbox", "retry", "42"], 1, "outbox 42"),
    ],
)
def test_user_errors_are_one_line_with_exit_1(cfg, args, code, text):
    r = cli(args, cfg)
    assert r.exit_code == code
    assert r.stderr.startswith("Error: ") and text in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[tickets]\nreopen_days = "x"\n')
    r = cli(["tickets", "list"], bad)
    assert r.exit_code == 2 and "tickets.reopen_days = 'x'" in r.stderr
    assert cli(["tickets", "list"], tmp_path / "none.toml").exit_code == 2


def test_staff_add_list_remove(cfg):
    assert cli(["staff", "add", "Tec@Example.org", "--name", "Técnico", "--group", "soporte de tecnologia"],
               cfg).exit_code == 0
    rows = json.loads(cli(["staff", "list", "--json"], cfg).stdout)
    assert rows == [{"email": "tec@example.org", "name": "Técnico", "group": "SOPORTE DE TECNOLOGÍA",
                     "active": True, "created_at": rows[0]["created_at"]}]
    assert cli(["staff", "remove", "tec@example.org"], cfg).exit_code == 0
    assert json.loads(cli(["staff", "list", "--json"], cfg).stdout)[0]["active"] is False


def test_init_writes_config_secret_and_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILD_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    r = cli(["init"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "config.toml").exists()
    secret = tmp_path / "var" / "maild.secret"
    assert secret.exists() and (secret.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "var" / "maild.db").exists()
    # idempotent: a second run keeps config and secret
    before = secret.read_text()
    assert cli(["init"]).exit_code == 0 and secret.read_text() == before
    assert cli(["tickets", "list", "--json"]).stdout.strip() == "[]"


def test_inbox_and_outbox_listings(cfg):
    seed(cfg, 1)
    out = json.loads(cli(["outbox", "list", "--json"], cfg).stdout)
    assert out and all(r["state"] == "queued" for r in out)
    assert cli(["outbox", "retry", "--all"], cfg).exit_code == 0
    assert json.loads(cli(["inbox", "list", "--json"], cfg).stdout) == []
    done = json.loads(cli(["inbox", "list", "--json", "--all"], cfg).stdout)
    assert [r["state"] for r in done] == ["done"]


def test_inbox_retry_requeues_a_quarantined_message(cfg):
    engine = seed(cfg, 1)
    from maild.storage.db import transaction
    from maild.storage.models import InboxItem

    with transaction(engine) as s:
        item = s.get(InboxItem, 1)
        item.state, item.attempts, item.error = "quarantined", 5, "RuntimeError: boom"
    rows = json.loads(cli(["inbox", "list", "--json"], cfg).stdout)
    assert [(r["id"], r["state"], r["attempts"], r["error"]) for r in rows] == [(1, "quarantined", 5,
                                                                                 "RuntimeError: boom")]
    r = cli(["inbox", "retry", "1"], cfg)
    assert r.exit_code == 0 and "1 message(s)" in r.stdout
    assert json.loads(cli(["inbox", "list", "--json", "--state", "new"], cfg).stdout)[0]["attempts"] == 0


def test_tickets_show_renders_the_journal_as_the_portal_did(cfg):
    from maild import config
    from maild.addresses import reply_address

    engine = seed(cfg, 1)
    assert cli(["staff", "add", "drim@example.org", "--name", "D", "--group", "DRIM"], cfg).exit_code == 0
    settings = config.load(cfg)
    to = reply_address(settings, 1)
    raw = (b"Authentication-Results: mx.example.org; auth=pass smtp.auth=drim@example.org\r\n"
           + make_mail(frm="drim@example.org", to=to, body="#priority alta\nLo miramos.", message_id="st@example.org"))
    store_now(engine, [inbox_row(raw, "smtp", "drim@example.org", [to])])
    Processor(settings, engine).run_batch()
    es = cli(["tickets", "show", "1", "--lang", "es"], cfg).stdout
    assert "Estado cambiado de Nueva a En curso" in es and "Prioridad cambiada de normal a alta" in es
    pt = cli(["tickets", "show", "1", "--lang", "pt"], cfg).stdout
    assert "Estado alterado de Aberta para Em curso" in pt
    en = cli(["tickets", "show", "1", "--lang", "en"], cfg).stdout
    assert "State changed from Open to In progress" in en
    data = json.loads(cli(["tickets", "show", "1", "--json"], cfg).stdout)
    last = data["journal"][-1]
    assert last["author"] == "drim@example.org"
    assert {"field": "state", "old": "nueva", "new": "en_curso"} in last["changes"]
