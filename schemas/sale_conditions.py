"""Which trades move the last price and which count in volume.

A reduced form of the consolidated-tape (CTA/UTP) eligibility matrix, shared by
every feed: IEX TOPS sale-condition flags are mapped onto the same letters
(F intermarket sweep, T extended hours, I odd lot, 8 trade-through exempt,
X cross). A trade updates last (and so open/high/low/close of a candle) only
when every one of its conditions allows it; it counts in volume, VWAP and the
trade count unless one of its conditions excludes it.
"""

from __future__ import annotations

from collections.abc import Iterable

# Conditions that keep a trade out of last/high/low/open/close but still count its volume.
NO_LAST = frozenset(
    {
        "I",  # odd lot
        "T",  # extended hours (Form T)
        "U",  # extended hours, sold out of sequence
        "Z",  # sold out of sequence
        "W",  # average price
        "C",  # cash
        "N",  # next day
        "R",  # seller
        "H",  # price variation
        "4",  # derivatively priced
        "P",  # prior reference price
        "7",  # qualified contingent trade
    }
)
# Conditions that are informational prints: neither last nor volume.
NO_VOLUME = frozenset(
    {
        "M",  # market center official close
        "Q",  # market center official open
        "9",  # corrected consolidated close
    }
)
KNOWN = NO_LAST | NO_VOLUME | frozenset({"@", " ", "F", "8", "X", "O", "6", "B", "E", "5", "V"})


def eligibility(conditions: Iterable[str]) -> tuple[bool, bool]:
    """Return (updates_last, updates_volume) for a trade's sale conditions."""
    codes = set(conditions)
    if codes & NO_VOLUME:
        return False, False
    return not (codes & NO_LAST), True


def unknown(conditions: Iterable[str]) -> list[str]:
    return [c for c in conditions if c not in KNOWN]
