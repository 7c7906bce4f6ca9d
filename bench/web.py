#!/usr/bin/env python3
"""The knowledge-base site under load: search latency over 10,000 articles, article page throughput.

Generates N articles (default 10,000) straight into a fresh SQLite database
(through maild.kb, so the FTS index is the real one), serves the site with
uvicorn on 127.0.0.1, and drives it with C concurrent keep-alive HTTP/1.1
connections (asyncio streams, stdlib only). Prints figures and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import uvicorn  # noqa: E402

from maild import config, kb  # noqa: E402
from maild.storage.db import make_engine, upgrade  # noqa: E402
from maild.web import Site  # noqa: E402

WORDS = ("certificado mercado oferta garantía liquidación factura unidad agente subasta descarga plataforma "
         "acceso usuario servicio contrato energía precio sesión programa horario fichero error red proxy java "
         "navegador firma clave renovación registro documentación operador sistema consulta informe").split()


def generate(root: Path, settings, n: int, seed: int) -> None:
    rng = random.Random(seed)
    cats = settings.categories
    for i in range(n):
        cat = cats[i % len(cats)]
        sub = cat.subcategories[i % len(cat.subcategories)]
        lang = ("es", "pt", "en")[i % 3]
        title = " ".join(rng.choice(WORDS) for _ in range(5)).capitalize() + f" {i}"
        body = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(4))
        (root / f"a{i}.md").write_text(
            f'+++\nslug = "articulo-{i}"\ncategory = "{cat.code}"\nsubcategory = {json.dumps(sub.name.es)}\n'
            f'language = "{lang}"\ntitle = {json.dumps(title)}\ntags = ["{rng.choice(WORDS)}"]\n+++\n{body}\n',
            encoding="utf-8")


async def client(port: int, paths: list[str], lat: list[float], deadline: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while paths and time.perf_counter() < deadline:
            path = paths.pop()
            t0 = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Language: es\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append((time.perf_counter() - t0) * 1000)
            done += 1
    finally:
        writer.close()
    return done


async def drive(port: int, paths: list[str], concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(client(port, paths, lat, deadline) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2)

    return {"requests": sum(counts), "seconds": round(elapsed, 2), "rps": round(sum(counts) / elapsed, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": round(statistics.mean(lat), 2)}


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--articles", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maild-webbench-") as t:
        tmp = Path(t)
        settings = config.parse({**config.tomllib.loads((HERE.parent / "config.toml").read_text()),
                                 "database": {"url": f"sqlite:///{tmp / 'kb.db'}"}}, base_dir=tmp)
        engine = make_engine(settings.database.url, tmp)
        upgrade(engine)
        (tmp / "kb").mkdir()
        generate(tmp / "kb", settings, args.articles, args.seed)
        t0 = time.perf_counter()
        kb.sync(settings, engine, tmp / "kb")
        sync_s = time.perf_counter() - t0
        server = Server(uvicorn.Config(Site(settings, engine).app, host="127.0.0.1", port=0, log_level="warning",
                                       lifespan="off", access_log=False))
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        rng = random.Random(args.seed)
        queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(args.requests)]
        prefixes = [rng.choice(WORDS)[:rng.randint(3, 6)] for _ in range(args.requests)]
        search = asyncio.run(drive(port, [f"/search.json?q={quote_plus(q)}" for q in queries + prefixes],
                                   args.concurrency, 120))
        pages = asyncio.run(drive(port, [f"/a/articulo-{rng.randrange(args.articles)}" for _ in range(args.requests)],
                                  args.concurrency, 120))
        server.should_exit = True
        thread.join(10)
    out = {"articles": args.articles, "kb_sync_s": round(sync_s, 1), "concurrency": args.concurrency,
           "search_json": search, "article_page": pages}
    print(f"{args.articles} articles synced in {sync_s:.1f}s")
    print(f"/search.json: p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms, {search['rps']} req/s")
    print(f"/a/<slug>:    p50 {pages['p50_ms']} ms, p99 {pages['p99_ms']} ms, {pages['rps']} req/s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
