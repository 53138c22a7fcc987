"""Storing a decided trigger through a full or read-only card: retry, never drop.

Separate from the store stage's loop in :mod:`edge_app.trap.daemon` because this is the one
place the data path trades latency for loss on purpose, with its own schedule; the loop only
counts and wakes the links afterwards.
"""

from __future__ import annotations

import logging
import threading

from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock
from edge_app.core.errors import StorageError
from edge_app.core.events import Burst, Verdict
from edge_app.trap.health import Heart
from edge_app.trap.store.pipeline import EventStore

logger = logging.getLogger(__name__)

STORE_RETRY = Backoff(1.0, 60.0, jitter="none")
"""A store write that failed (card full or gone) is retried 1, 2, 4 … 60 s later."""


def record_with_retry(
    store: EventStore, clock: Clock, burst: Burst, verdict: Verdict,
    stop: threading.Event, beat: Heart,
) -> tuple[object | None, bool]:
    """Store one decided trigger, retrying while the card is full or read-only.

    A decided event must not be dropped because the disk hiccuped, so the store stage
    holds on to it and retries with backoff (which also stalls detect behind it, by design:
    back-pressure rather than loss). Waiting for the card is working as designed, so the
    stage keeps beating meanwhile. Returns (stored record or None, False if stopping).
    """
    failures = 0
    while True:
        beat()
        try:
            return store.record(burst, verdict), True
        except StorageError as e:
            failures += 1
            delay = STORE_RETRY.delay(failures)
            logger.error("cannot store trigger %d (%s): retrying in %.0f s",
                         burst.trigger.number, e, delay)
        if clock.wait(stop, delay):
            logger.error("stopping with trigger %d decided (%s) but not stored",
                         burst.trigger.number, verdict.outcome)
            return None, False
