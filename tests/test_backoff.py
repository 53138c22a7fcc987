"""The one backoff rule: exponential, capped, jittered, reproducible with a seeded source."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_app.core.backoff import MAX_EXPONENT, Backoff, backoff_delay


class Top(random.Random):
    """A random source whose ``uniform`` returns its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Bottom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_the_step_doubles_from_the_base_up_to_the_cap() -> None:
    b = Backoff(2.0, 20.0, "none")
    assert [b.ceiling(n) for n in range(1, 8)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert [b.delay(n) for n in range(1, 4)] == [2.0, 4.0, 8.0]  # no jitter: the step itself
    assert b.ceiling(0) == b.ceiling(-5) == 2.0  # "no failure yet" counts as the first
    assert Backoff(1.0, 1e9, "none", factor=3.0).ceiling(4) == 27.0


def test_full_jitter_spans_zero_to_the_step_and_equal_jitter_half_to_the_step() -> None:
    full, equal = Backoff(2.0, 300.0, "full"), Backoff(2.0, 300.0, "equal")
    for n in range(1, 12):
        step = full.ceiling(n)
        assert full.delay(n, Top()) == step
        assert full.delay(n, Bottom()) == 0.0
        assert equal.delay(n, Top()) == step
        assert equal.delay(n, Bottom()) == step / 2  # never sooner than half the step


def test_a_seeded_source_gives_the_same_schedule_and_the_schedule_is_jittered() -> None:
    b = Backoff(30.0, 3600.0, "equal")
    one = [b.delay(n, random.Random(7)) for n in range(1, 10)]
    two = [b.delay(n, random.Random(7)) for n in range(1, 10)]
    assert one == two
    rng = random.Random(7)
    spread = {round(b.delay(3, rng), 6) for _ in range(20)}
    assert len(spread) == 20  # many traps that failed together do not retry together


def test_months_of_failures_do_not_overflow() -> None:
    b = Backoff(0.5, 600.0, "full")
    assert 0.0 <= b.delay(10**9, random.Random(1)) <= 600.0
    assert b.ceiling(MAX_EXPONENT + 100) == 600.0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(-1.0, 10.0)
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(1.0, 10.0, factor=0.5)
    assert Backoff(0.0, 10.0).delay(3, random.Random(1)) == 0.0


@given(st.integers(min_value=-10, max_value=10**6), st.floats(0.0, 1e4), st.floats(0.0, 1e6),
       st.sampled_from(["full", "equal", "none"]), st.integers(0, 2**32))
def test_a_delay_is_never_negative_or_above_the_cap(
    attempt: int, base: float, cap: float, jitter: str, seed: int
) -> None:
    d = backoff_delay(attempt, base, cap, random.Random(seed), jitter)  # type: ignore[arg-type]
    assert 0.0 <= d <= max(0.0, min(cap, base * 2 ** MAX_EXPONENT)) + 1e-9
