"""The firmware's scenarios (firmware/tests/scenarios.py) on CPython, one test each.

The same functions run on the real MicroPython interpreter in tests/test_firmware_wasm.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import scenarios  # firmware/tests, put on sys.path by conftest.py

SCENARIOS: list[tuple[str, Callable[[], None]]] = scenarios.all_scenarios()


@pytest.mark.parametrize(("name", "fn"), SCENARIOS, ids=[n for n, _ in SCENARIOS])
def test_scenario(name: str, fn: Callable[[], None]) -> None:
    fn()


def test_names_unique() -> None:
    names = [n for n, _ in SCENARIOS]
    assert len(names) == len(set(names))
