"""How the simulated venues fill: one documented, configurable model. Pure: no I/O.

Each venue of the feed is a simulated venue that fills against its own displayed quote
(buys at its ask, sells at its bid). What the model decides:

- latency_ms: an order becomes fillable only once the feed clock has reached the feed
  time at which the order reached its desk plus this latency (0: at once).
- fraction_min, fraction_max: the share of a venue's displayed size one order may take
  at one quote update. Equal (the default 1 and 1: the whole displayed size), it is that
  share; different, it is drawn uniformly between them by a PRNG seeded with
  (seed, order id, venue, quote sequence), so a replay draws the same share. What one
  order takes, no other order can take from the same quote update (the displayed size is
  consumed until the venue's next quote update).
- min_qty: a venue whose available size is below this is skipped, unless that size
  completes the order (0: no minimum).
- slippage_ticks: buys fill this many ticks above the ask, sells below the bid (a tick is
  0.01 at or above $1, 0.0001 below), never through the order's limit or a buy's
  reserve price: a slipped price is clipped there.
- seed: the PRNG's seed.

The defaults are deterministic and plain: no latency, the whole displayed size, no
minimum, no slippage, seed 0. Settings: TAPEFLOW_FILL_LATENCY_MS, _FILL_FRACTION_MIN,
_FILL_FRACTION_MAX, _FILL_MIN_QTY, _FILL_SLIPPAGE_TICKS, _FILL_SEED.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from schemas.orders import tick_of

ONE = Decimal(1)
ZERO = Decimal(0)
_DRAW_STEPS = 1_000_000  # a drawn share has 6 decimal places


@dataclass(frozen=True, slots=True)
class FillModel:
    latency_ms: int = 0
    fraction_min: Decimal = ONE
    fraction_max: Decimal = ONE
    min_qty: Decimal = ZERO
    slippage_ticks: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be 0 or more")
        if not 0 < self.fraction_min <= self.fraction_max <= 1:
            raise ValueError("want 0 < fraction_min <= fraction_max <= 1")
        if self.min_qty < 0:
            raise ValueError("min_qty must be 0 or more")
        if self.slippage_ticks < 0:
            raise ValueError("slippage_ticks must be 0 or more")

    @property
    def latency_ns(self) -> int:
        return self.latency_ms * 1_000_000

    def share(self, order_id: str, venue: str, quote_seq: int) -> Decimal:
        """The share of the displayed size this order may take at this quote update."""
        if self.fraction_min == self.fraction_max:
            return self.fraction_min
        # random.Random seeded with a str hashes it with SHA-512: the same in every
        # process (unlike hash(), which Python salts per process).
        rng = random.Random(f"{self.seed}:{order_id}:{venue}:{quote_seq}")
        step = Decimal(rng.randrange(_DRAW_STEPS + 1)) / _DRAW_STEPS
        return self.fraction_min + (self.fraction_max - self.fraction_min) * step

    def available(self, displayed: int, order_id: str, venue: str, quote_seq: int) -> Decimal:
        """Whole shares of `displayed` this order may take at this quote update."""
        share = self.share(order_id, venue, quote_seq)
        if share == ONE:
            return Decimal(displayed)
        return (displayed * share).to_integral_value(ROUND_FLOOR)

    def buy_price(self, ask: Decimal) -> Decimal:
        return ask + self.slippage_ticks * tick_of(ask) if self.slippage_ticks else ask

    def sell_price(self, bid: Decimal) -> Decimal:
        if not self.slippage_ticks:
            return bid
        return max(bid - self.slippage_ticks * tick_of(bid), tick_of(bid))
