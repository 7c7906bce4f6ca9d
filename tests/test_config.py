from pathlib import Path

import pytest

from maild import config
from maild.errors import ConfigError
from tests.conftest import ROOT, shipped_config


def test_shipped_config_has_the_eight_categories_with_an_other_subcategory():
    s = config.load(ROOT / "config.toml", need_secret=False)
    assert [c.code for c in s.categories] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for c in s.categories:
        assert c.name.es and c.name.pt and c.name.en
        assert s.group(c.group) is not None
        assert c.other.other
    assert s.category("01").group == "DRIM"
    assert s.category("01").name.pt == "Informação geral e Serviços do OMIE"
    assert s.category("04").group == "SOPORTE DE TECNOLOGÍA"
    subs = [x.name.es for x in s.category("04").subcategories]
    assert "Desarrollo de API para Mercado Continuo (AMQP)" in subs
    assert s.category("04").other.name.es == "(...) Otras cuestiones de tecnología"
    assert "Plataforma de Información Privilegiada [IIP]" in [x.name.es for x in s.category("01").subcategories]


def test_group_lookup_is_case_and_accent_insensitive():
    s = config.parse(shipped_config())
    assert s.group("soporte de tecnologia").name == "SOPORTE DE TECNOLOGÍA"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"tickets": {"reopen_days": "soon"}}, "tickets.reopen_days = 'soon'"),
        ({"tickets": {"reopen_dayz": 3}}, "unknown key 'tickets.reopen_dayz'"),
        ({"mail": {"support_address": "not an address"}}, "mail.support_address = 'not an address'"),
        ({"tickets": {"default_category": "99"}}, "tickets.default_category = '99'"),
        ({"imap": {"enabled": True, "tls": "none", "host": "imap.example.org"}}, "only allowed to 127.0.0.1"),
        ({"smtp": {"listen": "nowhere"}}, "smtp.listen = 'nowhere'"),
        ({"database": {"url": "mysql://x"}}, "database.url = 'mysql://x'"),
    ],
)
def test_bad_values_name_key_value_and_expectation(patch, expected):
    data = shipped_config()
    for section, values in patch.items():
        data[section] = {**data[section], **values}
    with pytest.raises(ConfigError) as err:
        config.parse(data, source="c.toml")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_secret_is_a_config_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MAILD_SECRET", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[security]\nsecret_file = "nope"\n')
    with pytest.raises(ConfigError, match="no server secret"):
        config.load(cfg)
    monkeypatch.setenv("MAILD_SECRET", "x" * 20)
    assert config.load(cfg).secret == b"x" * 20


def test_config_found_by_env_then_cwd(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILD_CONFIG", raising=False)
    assert config.find_config(None) == Path("config.toml")
    monkeypatch.setenv("MAILD_CONFIG", "/etc/maild.toml")
    assert config.find_config(None) == Path("/etc/maild.toml")
    assert config.find_config("x.toml") == Path("x.toml")
