#!/usr/bin/env python3
"""First sync of a big mailbox: messages per second from a real Dovecot into maild's inbox.

Delivers the corpus (corpus.py, ~10,000 messages with --threads 5000) into a
throwaway Dovecot's Maildir, then times `ImapReader.sync()`: fetch in
batches, commit to the inbox, MOVE to the processed folder. Prints a line of
figures and a final JSON line. Needs dovecot (make test installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from maild import config  # noqa: E402
from maild.imap import ImapReader  # noqa: E402
from maild.storage.db import make_engine, upgrade  # noqa: E402
from tests.servers import Dovecot  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maild-imapbench-") as t:
        tmp = Path(t)
        corpus = tmp / "corpus"
        subprocess.run([sys.executable, str(HERE / "corpus.py"), str(corpus), "--threads", str(args.threads),
                        "--seed", str(args.seed)], check=True, capture_output=True, timeout=600)
        files = sorted(corpus.glob("*.eml"))
        dovecot = Dovecot().start()
        try:
            for f in files:
                dovecot.deliver(f.read_bytes())
            os.environ["MAILD_BENCH_IMAP_PW"] = dovecot.password
            settings = config.parse({
                "database": {"url": f"sqlite:///{tmp / 'maild.db'}"},
                "imap": {"enabled": True, "host": "127.0.0.1", "port": dovecot.port, "tls": "none",
                         "user": dovecot.user, "password_env": "MAILD_BENCH_IMAP_PW"},
            }, base_dir=tmp).model_copy(update={"secret": b"b" * 32})
            engine = make_engine(settings.database.url, tmp)
            upgrade(engine)
            reader = ImapReader(settings, engine)
            client = reader.connect()
            reader.select(client)
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t0 = time.perf_counter()
            n = reader.sync(client)
            elapsed = time.perf_counter() - t0
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            client.logout()
        finally:
            dovecot.cleanup()
    out = {"messages": n, "mailbox_messages": len(files), "seconds": round(elapsed, 2),
           "msgs_per_s": round(n / elapsed, 1), "max_rss_mb_before": round(rss0, 1),
           "max_rss_mb_after": round(rss1, 1)}
    print(f"first sync of {len(files)} messages: {n} in {elapsed:.1f}s = {out['msgs_per_s']} msg/s; "
          f"max RSS {rss0:.0f} -> {rss1:.0f} MB")
    print(json.dumps(out))
    return 0 if n == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
