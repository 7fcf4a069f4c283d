"""One connection's subscription set: symbols per kind, or the wildcard "*".

Rules (README "Streaming"):
- subscribe adds; "*" for a kind means every symbol and replaces that kind's list;
  symbols subscribed while the kind has "*" change nothing.
- unsubscribe removes the listed symbols; "*" clears the kind (wildcard and symbols).
- at most `max_symbols` distinct symbols over all kinds ("*" is not counted); a
  change that would exceed it is refused whole, leaving the set as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.stream.protocol import KINDS, WILDCARD, Change, Kind, Piece, ProtocolError, event


@dataclass(slots=True)
class Delta:
    """What a change did: the hub subscribes/unsubscribes exactly this."""

    added: dict[Kind, set[str]] = field(default_factory=dict)
    removed: dict[Kind, set[str]] = field(default_factory=dict)
    wild_added: set[Kind] = field(default_factory=set)
    wild_removed: set[Kind] = field(default_factory=set)


class Subscriptions:
    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols
        self.symbols: dict[Kind, set[str]] = {k: set() for k in KINDS}
        self.wild: set[Kind] = set()
        self.trade_updates = False  # the account's order events (api/stream/account.py)
        self.alerts = False  # the account's alert firings (the same feed)

    def has(self, kind: Kind, symbol: str) -> bool:
        return kind in self.wild or symbol in self.symbols[kind]

    def distinct(self) -> int:
        return len(set().union(*self.symbols.values()))

    def apply(self, change: Change) -> Delta:
        new = {k: set(v) for k, v in self.symbols.items()}
        wild = set(self.wild)
        for kind, wanted in change.symbols.items():
            if change.subscribe:
                if WILDCARD in wanted:
                    wild.add(kind)
                    new[kind] = set()
                elif kind not in wild:
                    new[kind] |= wanted
            elif WILDCARD in wanted:
                wild.discard(kind)
                new[kind] = set()
            else:
                new[kind] -= wanted
        count = len(set().union(*new.values()))
        if count > self.max_symbols and count > self.distinct():
            raise ProtocolError(
                "too_many_symbols",
                f"{count} symbols would exceed the limit of {self.max_symbols} per connection",
            )
        delta = Delta(
            added={k: new[k] - self.symbols[k] for k in KINDS if new[k] - self.symbols[k]},
            removed={k: self.symbols[k] - new[k] for k in KINDS if self.symbols[k] - new[k]},
            wild_added=wild - self.wild,
            wild_removed=self.wild - wild,
        )
        self.symbols, self.wild = new, wild
        return delta

    def clear(self) -> Delta:
        return self.apply(Change(False, {k: frozenset({WILDCARD}) for k in KINDS}))

    def message(self) -> Piece:
        return event(
            "subscription",
            **{k: [WILDCARD] if k in self.wild else sorted(self.symbols[k]) for k in KINDS},
            trade_updates=self.trade_updates,
            alerts=self.alerts,
        )
