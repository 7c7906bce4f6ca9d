"""`maild serve` as an operator runs it: a real process, a consulta by smtplib, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.conftest import ROOT, free_port, make_mail, send, serve_config, start_serve


async def test_serve_answers_a_consulta_and_stops_gracefully_on_sigterm(tmp_path, db_url, capture):
    port = free_port()
    serve_config(tmp_path / "config.toml", db_url, smtp_port=port, smarthost=capture.port, kb_dir=str(ROOT / "kb"))
    proc = await start_serve(tmp_path / "config.toml")
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


class _Lines:
    """The stderr of a process, line by line, as it comes."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))

    async def wait_for(self, text: str, after: int = 0, timeout: float = 60) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; got:\n{''.join(self.lines)[-3000:]}")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("PPid:")).split()[1])


async def test_the_processor_runs_in_its_own_process_restarted_if_it_dies(tmp_path, db_url, capture):
    import re
    import urllib.request

    port, web = free_port(), free_port()
    serve_config(tmp_path / "config.toml", db_url, smtp_port=port, smarthost=capture.port,
                 extra={'listen = "127.0.0.1:0"': f'listen = "127.0.0.1:{web}"'})
    proc = await start_serve(tmp_path / "config.toml")
    log = _Lines(proc.stderr)
    try:
        line = await log.wait_for("processor running in its own process")
        worker = int(re.search(r"pid (\d+)", line).group(1))
        assert worker != proc.pid and _ppid(worker) == proc.pid
        await log.wait_for("listening for SMTP")
        await send(port, make_mail(message_id="w1@cliente.es", frm="ana@cliente.es"))
        await capture.wait_for(lambda c: c.to("ana@cliente.es", "opened"))

        def metrics() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=5).read().decode()

        # the worker's counters reach the daemon's one /metrics
        text = await asyncio.to_thread(metrics)
        assert 'maild_processed_total{outcome="done"} 1.0' in text
        assert 'maild_notices_total{kind="opened"} 1.0' in text

        mark = len(log.lines)
        os.kill(worker, signal.SIGKILL)
        await log.wait_for("worker process died", after=mark)
        line = await log.wait_for("processor running in its own process", after=mark)
        again = int(re.search(r"pid (\d+)", line).group(1))
        assert again != worker and _ppid(again) == proc.pid
        await send(port, make_mail(message_id="w2@cliente.es", frm="rui@cliente.pt"))
        await capture.wait_for(lambda c: c.to("rui@cliente.pt", "opened"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()  # never leave a daemon behind
            raise AssertionError("maild serve did not stop on SIGTERM") from None
        await log.task
    assert proc.returncode == 0, "".join(log.lines)
    assert not any("Traceback" in line for line in log.lines), "".join(log.lines)
    await asyncio.sleep(0.5)
    assert not os.path.exists(f"/proc/{again}") or "zombie" in open(f"/proc/{again}/status").read()  # it stopped too
