"""`maild db copy`: a SQLite database into a new one (PostgreSQL when the suite runs on it)."""

from __future__ import annotations

import json

from maild import config, kb
from maild.process import Processor
from maild.storage.db import make_engine
from maild.storage.inbox import inbox_row, store_now
from tests.conftest import ROOT, database_url, make_mail
from tests.test_cli import cli


def _config(tmp_path, name, url):
    path = tmp_path / f"{name}.toml"
    text = (ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{url}"')
    path.write_text(text.replace('secret_file = "var/maild.secret"', 'secret_file = ""'))
    return path


def _store(cfg, mails):
    settings = config.load(cfg)
    engine = make_engine(settings.database.url, settings.base_dir)
    store_now(engine, [inbox_row(m, "pipe", sender, ["consultas@example.org"]) for sender, m in mails])
    Processor(settings, engine).run_batch()
    return settings, engine


def test_copy_keeps_every_row_and_the_copy_goes_on_working(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", "s" * 32)
    src = _config(tmp_path, "src", f"sqlite:///{tmp_path / 'src.db'}")
    assert cli(["db", "upgrade"], src).exit_code == 0
    settings, engine = _store(src, [
        (f"u{i}@cliente.es", make_mail(message_id=f"c{i}@cliente.es", frm=f"u{i}@cliente.es",
                                       subject=f"Consulta ñandú {i}", body=f"Pregunta número {i} sobre el mercado."))
        for i in range(3)
    ])
    kb.sync(settings, engine, ROOT / "kb")
    before = json.loads(cli(["tickets", "list", "--json"], src).stdout)
    assert len(before) == 3

    with database_url(tmp_path / "target") as url:
        (tmp_path / "target").mkdir(exist_ok=True)
        out = cli(["db", "copy", url], src)
        assert out.exit_code == 0, out.output
        assert "copied" in out.stdout and "ticket 3" in out.stdout
        dst = _config(tmp_path, "dst", url)

        assert json.loads(cli(["tickets", "list", "--json"], dst).stdout) == before
        for t in before:
            a = json.loads(cli(["tickets", "show", str(t["id"]), "--json"], src).stdout)
            b = json.loads(cli(["tickets", "show", str(t["id"]), "--json"], dst).stdout)
            assert a == b
        dst_settings = config.load(dst)
        dst_engine = make_engine(dst_settings.database.url, dst_settings.base_dir)
        from sqlmodel import Session

        with Session(engine) as s1, Session(dst_engine) as s2:
            # The target's own index finds the same articles (ranked by its engine: FTS5 or tsvector).
            assert {a.slug for a in kb.search(s1, "precio", "es")} == {a.slug for a in kb.search(s2, "precio", "es")}
            assert kb.search(s2, "precio", "es")

        # New rows get new ids (PostgreSQL's sequences were moved past the copied ones).
        _store(dst, [("nuevo@cliente.es", make_mail(message_id="new@cliente.es", frm="nuevo@cliente.es", subject="Otra"))])
        after = json.loads(cli(["tickets", "list", "--json"], dst).stdout)
        assert sorted(t["id"] for t in after) == [1, 2, 3, 4]

        # A second copy into the now non-empty database is refused, naming what is there.
        again = cli(["db", "copy", url], src)
        assert again.exit_code == 1
        assert "Error: the target database is not empty: " in again.output and "ticket (4)" in again.output
        assert "Traceback" not in again.output


def test_copy_into_itself_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", "s" * 32)
    url = f"sqlite:///{tmp_path / 'src.db'}"
    src = _config(tmp_path, "src", url)
    assert cli(["db", "upgrade"], src).exit_code == 0
    out = cli(["db", "copy", url], src)
    assert out.exit_code == 1
    assert "Error: the target is the configured database itself" in out.output
