"""Reconciliation of the ledger against the venues: the pure comparison (no I/O).

The simulated venues keep their own record of what they executed: one execution report
per fill on Kafka venues.executions (keyed by symbol), written by the execution flow in
the same output step as the fill it sends the ledger (`venue_report`). The ledger's
record is PostgreSQL `executions`. For one New York day, `reconcile` matches the two by
execution id (the fill's exec_id, "fill:<order id>:<n>") and finds:

- missing_in_ledger: a venue reported it, the ledger has no such execution (if the
  ledger flow refused that fill, its anomaly's reason is given);
- extra_in_ledger: the ledger has an execution no venue reported;
- mismatch: both have it, with different order, account, symbol, side, qty, price,
  venue or time (to the microsecond, which is what the ledger keeps);
- conflicting_reports: a venue reported one execution id twice with different contents
  (a desk that restarts repeats its reports with the same ids and contents: those
  repeats are dropped silently; the first report of an id is the one compared);
- ledger_anomaly: each anomaly the ledger flow recorded for the day (an answer it
  refused: an overfill, an illegal transition, ...).

A report is clean when it has no finding of any kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from schemas.marketdata import utc_from_ns, utc_to_ns
from schemas.orders import PRICE_PLACES, QTY_PLACES
from schemas.sessions import NEW_YORK

NS = 1_000_000_000
COMPARED = ("order_id", "account_id", "symbol", "side", "qty", "price", "venue", "executed_at")
KINDS = (
    "missing_in_ledger",
    "extra_in_ledger",
    "mismatch",
    "conflicting_reports",
    "ledger_anomaly",
)
_NY = ZoneInfo(NEW_YORK)


def venue_report(fill: dict[str, Any], side: str) -> dict[str, Any]:
    """The venue's execution report of a desk's fill answer (schemas/execution.py): what
    venues.executions carries. `at` is the execution time in ns since the epoch (UTC)."""
    return {
        "exec_id": fill["exec_id"],
        "order_id": fill["order_id"],
        "account_id": fill["account_id"],
        "symbol": fill["symbol"],
        "side": side,
        "qty": fill["qty"],
        "price": fill["price"],
        "venue": fill["venue"],
        "at": fill["at"],
    }


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of the New York calendar day, in UTC."""
    start = datetime.combine(day, time(0), _NY)
    end = datetime.combine(day + timedelta(days=1), time(0), _NY)
    return start.astimezone(UTC), end.astimezone(UTC)


ns_to_datetime = utc_from_ns


to_ns = utc_to_ns


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution as either side records it."""

    exec_id: str
    order_id: str
    account_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    venue: str
    executed_at: datetime

    def wire(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings (6 / 4 places), the time as RFC 3339."""
        return {
            "exec_id": self.exec_id,
            "order_id": self.order_id,
            "account_id": self.account_id,
            "symbol": self.symbol,
            "side": self.side,
            "qty": str(self.qty.quantize(QTY_PLACES)),
            "price": str(self.price.quantize(PRICE_PLACES)),
            "venue": self.venue,
            "executed_at": self.executed_at.isoformat().replace("+00:00", "Z"),
        }


def execution_from_report(report: dict[str, Any]) -> Execution:
    """An Execution from a venues.executions message (decoded); ValueError when it is
    not one."""
    try:
        return Execution(
            exec_id=str(report["exec_id"]),
            order_id=str(report["order_id"]),
            account_id=str(report["account_id"]),
            symbol=str(report["symbol"]),
            side=str(report["side"]),
            qty=Decimal(str(report["qty"])),
            price=Decimal(str(report["price"])),
            venue=str(report["venue"]),
            executed_at=ns_to_datetime(int(report["at"])),
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"not an execution report: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A row of ledger_anomalies."""

    event_id: str
    order_id: str | None
    account_id: str | None
    symbol: str | None
    kind: str  # the refused answer's kind (fill, canceled, ...)
    reason: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Item:
    """One finding of a report."""

    kind: str
    detail: str
    execution_id: str | None = None
    order_id: str | None = None
    account_id: str | None = None
    symbol: str | None = None
    fields: tuple[str, ...] = ()
    venue: dict[str, Any] | None = None
    ledger: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Report:
    trading_day: date
    venue_reports: int  # distinct execution ids the venues reported
    ledger_executions: int
    matched: int  # in both, alike
    items: tuple[Item, ...] = field(default_factory=tuple)

    def count(self, kind: str) -> int:
        return sum(1 for i in self.items if i.kind == kind)

    @property
    def status(self) -> str:
        return "discrepancies" if self.items else "clean"

    def counts(self) -> dict[str, int]:
        return {
            "venue_reports": self.venue_reports,
            "ledger_executions": self.ledger_executions,
            "matched": self.matched,
            "missing_in_ledger": self.count("missing_in_ledger"),
            "extra_in_ledger": self.count("extra_in_ledger"),
            "mismatched": self.count("mismatch"),
            "conflicting_reports": self.count("conflicting_reports"),
            "ledger_anomalies": self.count("ledger_anomaly"),
        }


def differences(venue: Execution, ledger: Execution) -> tuple[str, ...]:
    """The COMPARED fields on which the two disagree."""
    out = []
    for name in COMPARED:
        if getattr(venue, name) != getattr(ledger, name):
            out.append(name)
    return tuple(out)


def _ids(e: Execution) -> dict[str, str]:
    return {
        "execution_id": e.exec_id,
        "order_id": e.order_id,
        "account_id": e.account_id,
        "symbol": e.symbol,
    }


def _dedupe(reports: list[Execution]) -> tuple[dict[str, Execution], list[Item]]:
    """First report of each id; a later one with other contents is a conflict."""
    first: dict[str, Execution] = {}
    conflicts: list[Item] = []
    seen: dict[str, set[Execution]] = {}
    for r in reports:
        kept = first.setdefault(r.exec_id, r)
        if r == kept or r in seen.get(r.exec_id, ()):
            continue
        seen.setdefault(r.exec_id, set()).add(r)
        fields = differences(kept, r)
        conflicts.append(
            Item(
                "conflicting_reports",
                f"the venue reported {r.exec_id} again with a different "
                f"{', '.join(fields) or 'content'}",
                fields=fields,
                venue={"first": kept.wire(), "again": r.wire()},
                **_ids(kept),
            )
        )
    return first, conflicts


def reconcile(
    day: date,
    reports: list[Execution],
    ledger: list[Execution],
    anomalies: list[Anomaly],
) -> Report:
    """Compare the day's venue reports (in the order the venues wrote them, repeats
    included) with the ledger's executions and anomalies of that day. Findings come by
    kind (KINDS order), then by id."""
    venue, conflicts = _dedupe(reports)
    book = {e.exec_id: e for e in ledger}
    refused = {a.event_id: a for a in anomalies if a.kind == "fill"}
    found: dict[str, list[Item]] = {kind: [] for kind in KINDS}
    matched = 0
    for exec_id in sorted(venue.keys() | book.keys()):
        v, b = venue.get(exec_id), book.get(exec_id)
        if b is None:
            assert v is not None
            why = refused.get(exec_id)
            detail = f"the venue reported {exec_id}; the ledger has no such execution"
            if why is not None:
                detail += f" (the ledger refused it: {why.reason})"
            found["missing_in_ledger"].append(
                Item("missing_in_ledger", detail, venue=v.wire(), **_ids(v))
            )
        elif v is None:
            detail = f"the ledger has {exec_id}; no venue reported it"
            found["extra_in_ledger"].append(
                Item("extra_in_ledger", detail, ledger=b.wire(), **_ids(b))
            )
        elif fields := differences(v, b):
            seen, kept = v.wire(), b.wire()
            shown = "; ".join(
                f"{f} {seen[f]} at the venue, {kept[f]} in the ledger" for f in fields
            )
            found["mismatch"].append(
                Item(
                    "mismatch",
                    f"{exec_id}: {shown}",
                    fields=fields,
                    venue=seen,
                    ledger=kept,
                    **_ids(v),
                )
            )
        else:
            matched += 1
    found["conflicting_reports"] = sorted(conflicts, key=lambda i: i.execution_id or "")
    for a in sorted(anomalies, key=lambda a: a.event_id):
        found["ledger_anomaly"].append(
            Item(
                "ledger_anomaly",
                f"the ledger refused {a.kind} {a.event_id}: {a.reason}",
                execution_id=a.event_id if a.kind == "fill" else None,
                order_id=a.order_id,
                account_id=a.account_id,
                symbol=a.symbol,
                ledger={"event_id": a.event_id, "kind": a.kind, "payload": a.payload},
            )
        )
    items = tuple(item for kind in KINDS for item in found[kind])
    return Report(day, len(venue), len(book), matched, items)


def in_day(at: datetime, day: date) -> bool:
    start, end = day_bounds(day)
    return start <= at < end
