"""Teaching the background set from the trap's own frames: margin-safe discards and scheduled
background shots.

Separate from the daemon's stages because *what* may be learnt is a policy of its own (a
discard near the threshold may hide an animal; a shot with a detection is not background),
while the stages only decide *when* frames pass by. The stages call in here from the detect
thread; the shot schedule runs as its own supervised stage and only queues a trigger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_app.core.clock import Clock
from edge_app.core.config import BackgroundConfig
from edge_app.core.errors import StorageError
from edge_app.core.events import FrameResult, TriggerEvent
from edge_app.trap.daemon_stats import Counters
from edge_app.trap.detect.background import BackgroundMemory
from edge_app.trap.supervisor import StageQueue

logger = logging.getLogger(__name__)

BACKGROUND_SHOT = "background"
"""``TriggerEvent.source`` of a scheduled background shot (not a PIR trigger: learnt, never
decided or stored)."""


class SceneLearner:
    """Feeds the background set (None: learning is off and every call is a no-op).

    Args:
        memory: the background set, or None when ``background.enabled`` is false.
        counters: the daemon's counters (``background_shots``, ``background_learnt``).
        settings: the ``[background]`` section as it is now (remote changes apply).
        triggers: the capture stage's queue, where scheduled shots are put.
        clock: the shot schedule's time.
    """

    def __init__(self, memory: BackgroundMemory | None, counters: Counters,
                 settings: Callable[[], BackgroundConfig],
                 triggers: StageQueue[TriggerEvent], clock: Clock) -> None:
        self._memory = memory
        self._counters = counters
        self._settings = settings
        self._triggers = triggers
        self._clock = clock

    def shots_loop(self, stop: threading.Event) -> None:
        """Scheduled background shots: every ``background.shot_every_s``, a frame without a
        trigger, so the background learns night, dawn and the new season from the scene
        itself (a trap cannot learn a scene from its discards while the background keeps
        vetoing it). The shot goes through the capture stage (the camera's only user) and
        the detect stage (the pipeline's only user), and only when no real trigger waits."""
        every = self._settings().shot_every_s
        while not self._clock.wait(stop, every):
            if self._triggers.qsize() == 0:
                self._triggers.put_drop_oldest(TriggerEvent(
                    0, self._clock.monotonic(), self._clock.wall(), BACKGROUND_SHOT))

    def learn_discard(self, results: list[FrameResult | None]) -> None:
        """A discarded trigger is learnt only with a margin: every detector and classifier
        score of every frame below ``background.learn_below`` (a frame the fusion discarded
        at 0.14 may still hide an animal; the set must not learn it as "empty")."""
        below = self._settings().learn_below
        frames = [r for r in results if r is not None]
        if not frames or any(max(r.max_scores.values(), default=1.0) >= below
                             for r in frames):
            return
        self._learn([r.embedding for r in frames if r.embedding is not None and not r.gated],
                    "empty")

    def learn_shot(self, results: list[FrameResult | None]) -> None:
        """A scheduled shot is learnt unless something was detected in it (an animal that
        happened to stand there is not background)."""
        self._counters.background_shots += 1
        self._learn([r.embedding for r in results if r is not None and r.label == "empty"
                     and r.embedding is not None], "shot")

    def _learn(self, vecs: list[Any], kind: str) -> None:
        """Add embeddings to the background set; a write failure is logged, not fatal (the
        set is an aid: losing one scene must not stop detection)."""
        bg = self._memory
        if bg is None:
            return
        for vec in vecs:
            try:
                if bg.add(vec, kind):
                    self._counters.background_learnt += 1
            except StorageError as e:
                logger.warning("background: scene not learnt: %s", e)
                return
