"""Every message maild sends is DKIM-signed and verifies against the record `maild dkim keygen` prints."""

from __future__ import annotations

import re

import dkim
from typer.testing import CliRunner

from maild.cli.main import app, normalize_args
from tests.conftest import make_mail, send
from tests.dkimkeys import FakeDNS


def keygen(tmp_path, cfg_text="") -> tuple[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "k.toml"
    cfg.write_text(cfg_text)
    out = tmp_path / "dkim" / "maild.pem"
    r = CliRunner().invoke(app, normalize_args(["dkim", "keygen", "--selector", "s2026", "--out", str(out),
                                                "--config", str(cfg)]))
    assert r.exit_code == 0, r.output
    assert (out.stat().st_mode & 0o777) == 0o600
    name = re.search(r"at (\S+):", r.stdout).group(1)
    record = r.stdout.strip().splitlines()[-1]
    assert name == "s2026._domainkey.example.org" and record.startswith("v=DKIM1; k=rsa; p=")
    again = CliRunner().invoke(app, normalize_args(["dkim", "keygen", "--selector", "s2026", "--out", str(out),
                                                    "--config", str(cfg)]))
    assert again.exit_code == 1 and "--force" in again.stderr  # never overwrites a key by accident
    return str(out), record


async def test_outgoing_mail_verifies_with_the_published_record(tmp_path, make_settings, engine, capture,
                                                                daemon_factory):
    key, record = keygen(tmp_path)
    settings = make_settings(outbound={"port": capture.port, "dkim_selector": "s2026", "dkim_key_file": key})
    d = await daemon_factory(settings)
    dns = FakeDNS({"s2026._domainkey.example.org.": record})
    await send(d.smtp_port, make_mail(frm="José Núñez <jose@cliente.es>", subject="Certificado caducado — ¿qué hago?",
                                      message_id="dk@cliente.es"), mail_from="jose@cliente.es")
    await capture.wait_for(lambda c: c.to("jose@cliente.es", "opened"))
    notice = capture.to("jose@cliente.es", "opened")[0]
    assert notice.raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(notice.raw, dnsfunc=dns)
    assert "¿qué hago?" in notice.msg["Subject"]
    # and a changed byte breaks it: the check is real
    assert not dkim.verify(notice.raw.replace(b"Consulta", b"Consultx", 1), dnsfunc=dns)
    # another key's record does not verify it
    _, other = keygen(tmp_path / "other")
    assert not dkim.verify(notice.raw, dnsfunc=FakeDNS({"s2026._domainkey.example.org.": other}))


def test_missing_key_file_is_a_config_error(tmp_path, make_settings, engine):
    import pytest

    from maild.errors import ConfigError
    from maild.sender import signer_for

    settings = make_settings(outbound={"dkim_selector": "s", "dkim_key_file": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match="dkim_key_file"):
        signer_for(settings)
