#!/usr/bin/env python3
"""`make bench`: maild beside the reference servers, in one run, as ratios.

1. corpus.py writes the support-mailbox corpus (300 threads, seed 1).
2. sink.py --mode discard (protocol limit) and --mode sqlite (durability
   limit) each take the corpus from smtp_load.py at 16 connections.
3. `maild serve` (its own temp dir, SQLite, a counting smarthost) takes the
   same corpus the same way; then we wait until every consulta's opened
   notice has reached the smarthost, and check threading against the
   corpus manifest: one ticket per thread, none split, none merged.

Prints a table and a final JSON line. Loopback only; every step is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
sys.path.insert(0, str(HERE.parent))

from tests.servers import free_port, wait_port  # noqa: E402


def load(corpus: Path, port: int, label: str, run: int, concurrency: int, repeat: int = 1) -> dict:
    out = subprocess.run(
        [PY, str(HERE / "smtp_load.py"), str(corpus), "--port", str(port), "-c", str(concurrency),
         "--label", label, "--run", str(run), "--repeat", str(repeat), "--max-seconds", "120"],
        capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"smtp_load against {label} printed no figures:\n{out.stderr}")
    return json.loads(lines[-1])


def sink(mode: str, corpus: Path, runs: int, concurrency: int, tmp: Path) -> list[dict]:
    results = []
    for run in range(1, runs + 1):
        port = free_port()
        d = tmp / f"sink-{mode}-{run}"
        d.mkdir()
        proc = subprocess.Popen([PY, str(HERE / "sink.py"), "--mode", mode, "--port", str(port), "--dir", str(d),
                                 "--max-seconds", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            results.append(load(corpus, port, f"sink-{mode}", run, concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return results


class Smarthost:
    """A counting aiosmtpd smarthost in a thread: when did each opened notice arrive?"""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.opened: dict[str, float] = {}
        self.total = 0
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        self.total += 1
        head = envelope.original_content.split(b"\r\n\r\n", 1)[0]
        if b"X-Maild-Notice: opened" in head:
            for line in head.split(b"\r\n"):
                if line.startswith(b"X-Maild-Ticket:"):
                    self.opened.setdefault(line.split(b":", 1)[1].strip().decode(), time.monotonic())
        return "250 OK"


def maild_config(tmp: Path, smtp_port: int, smarthost: int) -> Path:
    cfg = (HERE.parent / "config.toml").read_text()
    cfg = cfg.replace('domain = "example.org"', 'domain = "soporte.example"')
    cfg = cfg.replace("consultas@example.org", "consultas@soporte.example")
    cfg = cfg.replace("no-reply@example.org", "no-reply@soporte.example")
    cfg = cfg.replace('listen = "127.0.0.1:2525"', f'listen = "127.0.0.1:{smtp_port}"')
    cfg = cfg.replace("port = 2526", f"port = {smarthost}")
    cfg = cfg.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"').replace('kb_dir = "kb"', 'kb_dir = ""')
    cfg = cfg.replace("new_tickets_per_hour = 20", "new_tickets_per_hour = 100000")
    cfg = cfg.replace("notices_per_hour = 30", "notices_per_hour = 100000")
    path = tmp / "config.toml"
    path.write_text(cfg)
    return path


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children (maild serve and its processor worker)."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_mb(int(child))
    except OSError:
        pass
    return total


def bench_maild(corpus: Path, runs: int, concurrency: int, tmp: Path, label: str = "maild",
                notice_deadline: float = 120.0) -> dict:
    manifest = json.loads((corpus / "manifest.json").read_text())
    threads = set(manifest.values())
    results, e2e, checks, peak_rss = [], [], [], 0.0
    for run in range(1, runs + 1):
        d = tmp / f"{label}-{run}"
        d.mkdir()
        host = Smarthost()
        host.controller.start()
        port = free_port()
        cfg = maild_config(d, port, host.port)
        env = {**os.environ, "MAILD_CONFIG": str(cfg)}
        subprocess.run([PY, "-m", "maild", "init"], env=env, check=True, capture_output=True, timeout=120)
        proc = subprocess.Popen([PY, "-m", "maild", "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(d / "maild.log", "wb"))
        try:
            wait_port(port)
            t0 = time.monotonic()
            results.append(load(corpus, port, label, run, concurrency))
            firsts = sum(1 for f in json.loads((corpus / "index.json").read_text())["files"] if f["kind"] == "first")
            deadline = time.monotonic() + notice_deadline
            while len(host.opened) < firsts and time.monotonic() < deadline:
                peak_rss = max(peak_rss, rss_mb(proc.pid))
                time.sleep(0.05)
            last = max(host.opened.values()) if host.opened else time.monotonic()
            n = len(manifest)
            stamps = sorted(host.opened.values())
            windows = [sum(1 for t in stamps if t0 + w <= t < t0 + w + 10) for w in range(0, int(last - t0), 10)]
            e2e.append({"messages": n, "opened_notices": len(host.opened), "seconds": round(last - t0, 3),
                        "msgs_per_s": round(n / (last - t0), 1),
                        "opened_per_s_by_10s": [round(c / 10, 1) for c in windows]})
            # let processing settle, then check threading against the manifest
            time.sleep(1.0)
            checks.append(check_threading(d / "var" / "maild.db", manifest, threads))
            peak_rss = max(peak_rss, rss_mb(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            host.controller.stop()
    return {"load": results, "e2e": e2e, "threading": checks, "peak_rss_mb": round(peak_rss, 1)}


def check_threading(db: Path, manifest: dict[str, str], threads: set[str]) -> dict:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT message_id, ticket_id FROM message WHERE direction = 'in'").fetchall()
    pending = conn.execute("SELECT count(*) FROM inbox WHERE state != 'done'").fetchone()[0]
    tickets = conn.execute("SELECT count(*) FROM ticket").fetchone()[0]
    conn.close()
    by_thread: dict[str, set[int]] = {}
    by_ticket: dict[int, set[str]] = {}
    for mid, tid in rows:
        thread = manifest.get(f"<{mid}>")
        if thread is None:
            continue
        by_thread.setdefault(thread, set()).add(tid)
        by_ticket.setdefault(tid, set()).add(thread)
    split = sum(1 for t in by_thread.values() if len(t) > 1)
    merged = sum(1 for t in by_ticket.values() if len(t) > 1)
    stored = sum(1 for mid, _ in rows if f"<{mid}>" in manifest)
    return {"threads": len(threads), "tickets": tickets, "split": split, "merged": merged,
            "stored_messages": stored, "corpus_messages": len(manifest), "inbox_not_done": pending,
            "exact": tickets == len(threads) and split == 0 and merged == 0 and stored == len(manifest)}


def median(values):
    return statistics.median(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--sustained-threads", type=int, default=4000,
                    help="a second, larger corpus for end to end over at least a minute (0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maild-bench-") as t:
        tmp = Path(t)
        corpus = tmp / "corpus"
        subprocess.run([PY, str(HERE / "corpus.py"), str(corpus), "--threads", str(args.threads), "--seed",
                        str(args.seed)], check=True, capture_output=True, timeout=120)
        discard = sink("discard", corpus, args.runs, args.concurrency, tmp)
        ref = sink("sqlite", corpus, args.runs, args.concurrency, tmp)
        m = bench_maild(corpus, args.runs, args.concurrency, tmp)
        sustained = None
        if args.sustained_threads:
            big = tmp / "corpus-sustained"
            subprocess.run([PY, str(HERE / "corpus.py"), str(big), "--threads", str(args.sustained_threads),
                            "--seed", str(args.seed + 1)], check=True, capture_output=True, timeout=300)
            sustained = bench_maild(big, 1, args.concurrency, tmp, label="sustained", notice_deadline=600)

    def rate(rs):
        return median([r["msgs_per_s"] for r in rs])

    def p99(rs):
        return median([r["data_latency_ms"]["p99"] for r in rs])

    summary = {
        "corpus": {"threads": args.threads, "seed": args.seed, "concurrency": args.concurrency, "runs": args.runs},
        "discard_msgs_per_s": rate(discard), "discard_p99_ms": p99(discard),
        "sqlite_msgs_per_s": rate(ref), "sqlite_p99_ms": p99(ref),
        "maild_msgs_per_s": rate(m["load"]), "maild_p99_ms": p99(m["load"]),
        "maild_e2e_msgs_per_s": median([e["msgs_per_s"] for e in m["e2e"]]),
        "maild_peak_rss_mb": m["peak_rss_mb"],
        "threading": m["threading"],
    }
    if sustained is not None:
        e = sustained["e2e"][0]
        summary["sustained"] = {"messages": e["messages"], "accepted_msgs_per_s": sustained["load"][0]["msgs_per_s"],
                                "e2e_seconds": e["seconds"], "e2e_msgs_per_s": e["msgs_per_s"],
                                "opened_per_s_by_10s": e["opened_per_s_by_10s"],
                                "peak_rss_mb": sustained["peak_rss_mb"], "threading": sustained["threading"]}
    summary["ratio_accept_vs_sqlite"] = round(summary["maild_msgs_per_s"] / summary["sqlite_msgs_per_s"], 3)
    summary["ratio_accept_vs_discard"] = round(summary["maild_msgs_per_s"] / summary["discard_msgs_per_s"], 3)
    summary["ratio_p99_vs_sqlite"] = round(summary["maild_p99_ms"] / summary["sqlite_p99_ms"], 3)

    print(f"{'server':<16}{'msg/s':>10}{'p99 ms':>10}{'vs sqlite':>12}")
    for name, r, p in (("sink discard", summary["discard_msgs_per_s"], summary["discard_p99_ms"]),
                       ("sink sqlite", summary["sqlite_msgs_per_s"], summary["sqlite_p99_ms"]),
                       ("maild", summary["maild_msgs_per_s"], summary["maild_p99_ms"])):
        print(f"{name:<16}{r:>10.1f}{p:>10.2f}{r / summary['sqlite_msgs_per_s']:>12.2f}")
    print(f"maild end to end (accepted -> opened notice at smarthost): {summary['maild_e2e_msgs_per_s']} msg/s")
    print(f"maild peak RSS (serve + processor worker): {summary['maild_peak_rss_mb']} MB")
    if sustained is not None:
        st = summary["sustained"]
        print(f"sustained: {st['messages']} messages accepted at {st['accepted_msgs_per_s']} msg/s; end to end "
              f"{st['e2e_msgs_per_s']} msg/s over {st['e2e_seconds']} s; opened notices per second by 10 s: "
              f"{st['opened_per_s_by_10s']}; peak RSS {st['peak_rss_mb']} MB; threading "
              f"{'exact' if st['threading'][0]['exact'] else 'NOT EXACT'}")
    for c in m["threading"]:
        print(f"threading: {c['tickets']} tickets for {c['threads']} threads, split {c['split']}, "
              f"merged {c['merged']}, stored {c['stored_messages']}/{c['corpus_messages']}: "
              f"{'exact' if c['exact'] else 'NOT EXACT'}")
    print(json.dumps(summary))
    exact = all(c["exact"] for c in m["threading"]) and (sustained is None or sustained["threading"][0]["exact"])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
