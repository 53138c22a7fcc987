"""Login attempts per (name, address): a pure, clock-driven policy.

Why per name *and* address: per address alone, rangers behind one NAT (the station's own
Wi-Fi) would lock each other out; per name alone, anyone could lock a ranger out. After
``max_failures`` failures within ``window_s`` the pair waits until the oldest failure leaves
the window. A success clears the pair.
"""

from __future__ import annotations

from collections import OrderedDict, deque

MAX_FAILURES = 5
WINDOW_S = 300.0
MAX_KEYS = 10_000
"""Pairs remembered; the oldest are forgotten first (bounded memory under a spray)."""


class LoginThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 max_keys: int = MAX_KEYS) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._fails: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def wait_s(self, name: str, addr: str, now: float) -> float:
        """Seconds until ``name`` may try again from ``addr`` (0: now)."""
        q = self._recent((name, addr), now)
        if len(q) < self.max_failures:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def failed(self, name: str, addr: str, now: float) -> None:
        key = (name, addr)
        q = self._recent(key, now)
        q.append(now)
        self._fails[key] = q
        self._fails.move_to_end(key)
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)

    def succeeded(self, name: str, addr: str) -> None:
        self._fails.pop((name, addr), None)
