#!/usr/bin/env python3
"""Thread lookup at 1,000 and at 1,000,000 stored messages.

Each size gets its own database, made by `maild db upgrade` (the real schema
and indexes) and filled directly with sqlite3 (not through SMTP): one ticket
per four messages, random Message-IDs. Then the lookup the processor does for
every incoming reply is timed, the same code path: `repo.thread_ids_and_duplicate`
(one indexed query for the message's own id and its In-Reply-To/References),
the pure `thread()` decision, and loading the ticket it names. Lookups ask for
a random stored thread (a three-id References chain plus the message's own new
id) and, one in ten, for ids nobody stored.

    python bench/thread_lookup.py            # 1,000 and 1,000,000
    python bench/thread_lookup.py --sizes 1000 100000 --lookups 2000

Prints a table and a final JSON line; figures: p50/p99 per lookup, and the
ratio of p99 at the largest size to p99 at the smallest (target: within ±20%).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session  # noqa: E402

from maild import config  # noqa: E402
from maild.parse import Parsed  # noqa: E402
from maild.storage import repo  # noqa: E402
from maild.storage.db import make_engine, upgrade  # noqa: E402
from maild.storage.models import Ticket  # noqa: E402
from maild.thread import Candidates, thread  # noqa: E402

PER_TICKET = 4


def mid(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}@{rng.choice(['cliente.es', 'empresa.pt', 'mail.example.com'])}"


def fill(path: Path, messages: int, rng: random.Random) -> list[list[str]]:
    """Write `messages` messages in tickets of PER_TICKET; return a sample of threads' Message-IDs."""
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    tickets = max(1, messages // PER_TICKET)
    now = dt.datetime(2026, 1, 1).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # the fill only; lookups run with maild's own settings
    contacts = max(1, tickets // 3)
    conn.executemany("INSERT INTO contact (id, address, name, language, bounce, created_at) VALUES (?,?,?,?,?,?)",
                     ((i, f"c{i}@cliente.es", f"Cliente {i}", "es", "", now) for i in range(1, contacts + 1)))
    conn.executemany(
        "INSERT INTO ticket (id, subject, state, category, subcategory, assignee, priority, language, requester_id, "
        "created_at, updated_at, last_inbound_message_id, \"references\") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ((t, f"Consulta {t}", "nueva", "general", "", "", "normal", "es", 1 + t % contacts, now, now, "", "[]")
         for t in range(1, tickets + 1)),
    )
    sample: list[list[str]] = []
    keep = set(rng.sample(range(1, tickets + 1), min(tickets, 5000)))

    def rows():
        for t in range(1, tickets + 1):
            ids = [mid(rng) for _ in range(PER_TICKET)]
            if t in keep:
                sample.append(ids)
            for j, m in enumerate(ids):
                yield (t, m, "in" if j % 2 == 0 else "out", "requester" if j % 2 == 0 else "notice",
                       f"c{t}@cliente.es", "[]", f"Consulta {t}", "Texto de la consulta.", "", "", now)

    conn.executemany(
        "INSERT INTO message (ticket_id, message_id, direction, kind, from_addr, to_addrs, subject, text, html, "
        "template, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return sample


def measure(dbs: list[tuple[Path, list[list[str]]]], settings: config.Settings, lookups: int,
            rng: random.Random) -> list[list[float]]:
    """Lookups alternate between the databases, so the machine's noise (GC, other processes) hits each alike."""
    engines = [make_engine(f"sqlite:///{path}") for path, _ in dbs]
    sessions = [Session(e) for e in engines]
    times: list[list[float]] = [[] for _ in dbs]
    for i in range(lookups + 200):
        for k, (session, (_path, sample)) in enumerate(zip(sessions, dbs, strict=True)):
            if rng.random() < 0.1:
                chain = [mid(rng) for _ in range(3)]  # a reply to mail maild never saw: a new ticket
            else:
                chain = rng.choice(sample)[:3]
            parsed = Parsed(raw=b"", message_id=mid(rng), from_addr="c1@cliente.es", from_name="",
                            subject="Re: Consulta", to=("consultas@example.org",),
                            in_reply_to=(chain[-1],), references=tuple(chain))
            t0 = time.perf_counter()
            known, _dup = repo.thread_ids_and_duplicate(session, parsed.message_id, parsed.thread_ids)
            th = thread(settings, parsed, ["consultas@example.org"], Candidates(known))
            if th.ticket_id is not None:
                assert session.get(Ticket, th.ticket_id) is not None
            elapsed = time.perf_counter() - t0
            session.expunge_all()
            if i >= 200:  # warm-up: connection, statement cache
                times[k].append(elapsed)
    for session in sessions:
        session.close()
    for engine in engines:
        engine.dispose()
    return times


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    ap.add_argument("--lookups", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    shipped = tomllib.loads((Path(__file__).resolve().parent.parent / "config.toml").read_text())
    shipped["security"]["secret_file"] = ""
    settings = config.parse(shipped).model_copy(update={"secret": "b" * 32})
    results = []
    with tempfile.TemporaryDirectory(prefix="maild-thread-") as tmp:
        dbs = []
        for size in args.sizes:
            path = Path(tmp) / f"m{size}.db"
            t0 = time.perf_counter()
            dbs.append((path, fill(path, size, random.Random(args.seed))))
            print(f"{size:>10,} messages written in {time.perf_counter() - t0:.1f} s "
                  f"({path.stat().st_size / 1e6:.1f} MB)", flush=True)
        all_times = measure(dbs, settings, args.lookups, random.Random(args.seed + 1))
        for size, times in zip(args.sizes, all_times, strict=True):
            results.append({"messages": size, "lookups": len(times),
                            "p50_ms": round(pct(times, 50) * 1000, 3), "p99_ms": round(pct(times, 99) * 1000, 3)})
            print(f"{size:>10,} messages  lookup p50 {results[-1]['p50_ms']:.3f} ms  "
                  f"p99 {results[-1]['p99_ms']:.3f} ms", flush=True)
    ratio = results[-1]["p99_ms"] / results[0]["p99_ms"]
    print(f"p99 at {results[-1]['messages']:,} / p99 at {results[0]['messages']:,} = {ratio:.2f} "
          f"(target 0.80–1.20: {'met' if 0.8 <= ratio <= 1.2 else 'NOT met'})")
    print(json.dumps({"bench": "thread_lookup", "results": results, "p99_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
