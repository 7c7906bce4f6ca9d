"""Prometheus metrics (prometheus-client), one registry per daemon, served at /metrics.

Counters are bumped where things happen; queue depths and ages are read from
the database at scrape time, so they are right on every instance.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from maild.storage.models import InboxItem, OutboxItem, utcnow


class Metrics:
    def __init__(self, engine: Engine | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("maild_received", "Messages committed to the inbox", ["channel"], registry=r)
        self.processed = Counter("maild_processed", "Inbox messages processed", ["outcome"], registry=r)
        self.quarantined = Counter("maild_quarantined", "Messages sent to the quarantine", registry=r)
        self.notices = Counter("maild_notices", "Outgoing messages queued", ["kind"], registry=r)
        self.sent = Counter("maild_sent", "Outgoing messages delivered to the smarthost", registry=r)
        self.send_failures = Counter("maild_send_failures", "Failed delivery attempts", ["permanent"], registry=r)
        self.forged_staff = Counter("maild_forged_staff", "Messages claiming a staff From that failed "
                                    "authentication", registry=r)
        self.held = Counter("maild_held", "Notices or tickets held back by a limit or a bounce", registry=r)
        self.bounces = Counter("maild_bounces", "Bounces read", registry=r)
        self.latency = Histogram("maild_processing_seconds", "Receipt to processed, per message", registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        if engine is not None:
            r.register(_Queues(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Queues:
    """Inbox and outbox depth by state, and the age of the oldest waiting row."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self):
        depth = GaugeMetricFamily("maild_queue_depth", "Rows by queue and state", labels=["queue", "state"])
        age = GaugeMetricFamily("maild_queue_oldest_seconds", "Age of the oldest waiting row", labels=["queue"])
        now = utcnow()
        with Session(self.engine) as s:
            for queue, model, waiting, stamp in (("inbox", InboxItem, "new", InboxItem.received_at),
                                                 ("outbox", OutboxItem, "queued", OutboxItem.created_at)):
                for state, n in s.exec(select(model.state, func.count()).group_by(model.state)):
                    depth.add_metric([queue, state], n)
                oldest = s.exec(select(func.min(stamp)).where(model.state == waiting)).one()
                age.add_metric([queue], (now - oldest).total_seconds() if oldest else 0.0)
        yield depth
        yield age
