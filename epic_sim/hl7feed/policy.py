"""Which changes get an HL7 message, and how long after the change it is sent.

Both are drawn from a generator seeded with the simulator's seed, two draws per change in change order
(whether or not a message follows), so the same seed and activity give the same choices.
"""

from __future__ import annotations

import random


class FeedPolicy:
    def __init__(self, seed: int, *, share: float, delay_s: tuple[float, float]) -> None:
        self.share = share
        self.delay_s = delay_s
        self._rng = random.Random(f"{seed}:hl7")

    def draw(self) -> float | None:
        """The delay in seconds before this change's message, or None when it gets no message."""
        chosen = self._rng.random() < self.share
        delay = self._rng.uniform(*self.delay_s)
        return delay if chosen else None
