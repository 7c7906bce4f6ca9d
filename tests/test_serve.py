"""`maild serve` as an operator runs it: a real process, a consulta by smtplib, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from tests.conftest import ROOT, free_port, make_mail, send, serve_config


async def test_serve_answers_a_consulta_and_stops_gracefully_on_sigterm(tmp_path, db_url, capture):
    port = free_port()
    serve_config(tmp_path / "config.toml", db_url, smtp_port=port, smarthost=capture.port, kb_dir=str(ROOT / "kb"))
    env = {**os.environ, "MAILD_CONFIG": str(tmp_path / "config.toml")}
    init = await asyncio.create_subprocess_exec(sys.executable, "-m", "maild", "init", env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    assert await init.wait() == 0
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "maild", "serve", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        await send(port, make_mail(message_id="serve@cliente.es"))
        await capture.wait_for(lambda c: c.to("ana@cliente.es", "opened"))
        proc.send_signal(signal.SIGHUP)  # reload templates and the knowledge base, keep running
        await asyncio.sleep(1.5)
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert b"signal received: stopping" in err
    assert b"reloaded templates and the knowledge base" in err
