"""`maild stats`: tickets by state and category, first-response and resolution times."""

from __future__ import annotations

import datetime as dt
import statistics

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from maild.storage.models import Ticket


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(p * 100) - 1], 2)


def stats(engine: Engine, since: dt.datetime) -> dict:
    with Session(engine) as session:
        tickets = list(session.exec(select(Ticket).where(col(Ticket.created_at) >= since)))
    by_state: dict[str, int] = {}
    by_category: dict[str, dict] = {}
    for t in tickets:
        by_state[t.state] = by_state.get(t.state, 0) + 1
        c = by_category.setdefault(t.category, {"tickets": 0, "first_response_h": [], "resolution_h": []})
        c["tickets"] += 1
        if t.first_response_at:
            c["first_response_h"].append((t.first_response_at - t.created_at).total_seconds() / 3600)
        if t.closed_at:
            c["resolution_h"].append((t.closed_at - t.created_at).total_seconds() / 3600)
    categories = {}
    for code, c in sorted(by_category.items()):
        categories[code] = {
            "tickets": c["tickets"],
            "first_response_p50_h": _pct(c["first_response_h"], 0.5),
            "first_response_p90_h": _pct(c["first_response_h"], 0.9),
            "resolution_p50_h": _pct(c["resolution_h"], 0.5),
            "resolution_p90_h": _pct(c["resolution_h"], 0.9),
        }
    return {"since": since.isoformat(), "tickets": len(tickets), "by_state": by_state, "by_category": categories}
