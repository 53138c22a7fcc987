"""One backoff rule for the whole project: exponential, capped, jittered.

Why one helper: the outbox retry times, the MQTT reconnect delay, the LoRa join and the LoRa
modem retries each had their own few lines of ``min(cap, base * 2 ** n)``, with different
jitter (or none) and different overflow guards. A fleet of traps that lose the same base
station at the same moment must not come back in the same second, so every retry in the
project uses this rule and its jitter.

Pure: no clock, no global random state. The caller says which attempt this is and passes the
random source (a seeded ``random.Random`` in tests, so a schedule is reproducible).

Jitter (the names of the AWS architecture blog post "Exponential Backoff And Jitter"):

* ``full``: uniform in ``[0, d]`` — spreads retries the most; a retry may come at once. Right
  for work that is cheap to try again (an outbox row refused by a broker).
* ``equal``: ``d/2`` plus uniform in ``[0, d/2]`` — never sooner than half the step. Right
  where a too-early retry costs something real (a LoRa join spends airtime and duty cycle; a
  reconnect to a dead broker spins a CPU).
* ``none``: exactly ``d`` (a schedule someone must be able to predict, e.g. a receipt timeout).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

Jitter = Literal["full", "equal", "none"]

MAX_EXPONENT = 30
"""``2 ** 30 × base`` is far above any cap; bounding the exponent keeps months of failures
from building huge integers."""


class Uniform(Protocol):
    """The one method of a random source the helper needs (``random.Random`` has it)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``min(cap_s, base_s × factor^(attempt−1))``, then jitter.

    Attributes:
        base_s: the step before the first retry (attempt 1).
        cap_s: the longest step.
        jitter: how the step is randomised (see the module docstring).
        factor: growth per attempt (2: doubling).
    """

    base_s: float
    cap_s: float
    jitter: Jitter = "full"
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or self.factor < 1:
            raise ValueError(f"bad backoff {self.base_s}/{self.cap_s}/{self.factor}")

    def ceiling(self, attempt: int) -> float:
        """The step of ``attempt`` (1 = first retry) before jitter; attempt < 1 counts as 1."""
        exp = min(max(attempt - 1, 0), MAX_EXPONENT)
        return float(min(self.cap_s, self.base_s * self.factor**exp))

    def delay(self, attempt: int, rng: Uniform | None = None) -> float:
        """Seconds to wait before ``attempt`` (1 = the first retry).

        Args:
            attempt: how many attempts have failed so far (≥ 1).
            rng: the random source of the jitter; ``None`` uses a fresh unseeded one (jitter
                is for spreading, not for secrecy).
        """
        step = self.ceiling(attempt)
        if self.jitter == "none" or step <= 0:
            return step
        source: Uniform = rng if rng is not None else random.Random()
        if self.jitter == "full":
            return source.uniform(0.0, step)
        return step / 2 + source.uniform(0.0, step / 2)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: Uniform | None = None,
                  jitter: Jitter = "full") -> float:
    """:meth:`Backoff.delay` in one call, for a caller that has no policy object to keep."""
    return Backoff(base_s, cap_s, jitter).delay(attempt, rng)
