"""The review loop's jobs behind the page: train in the background, show the figures, then send.

A head takes seconds to minutes to train and a pack minutes to reach a unit over a poor link,
far longer than a web request may take. So the page only *starts* a step here and shows its
state; one worker thread per unit runs :class:`~edge_app.station.review_job.ReviewJob` (which
shells out to the ``camtrap`` CLI, keeping model work out of the web process), and the page
reads :meth:`ReviewRunner.state` on every load. The two steps stay apart on purpose: nobody can
send a head whose figures were not on the screen (``send`` names the head's sha256 the page
showed).

Folders under the station store: ``review/<unit>/export`` (the labelled frames and their CSV)
and ``review/<unit>/work`` (the head, its summary, the pack).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.core.clock import Clock
from edge_app.station.review import ReviewError, ReviewStore
from edge_app.station.review_job import JobSettings, ReviewJob, default_version

logger = logging.getLogger(__name__)


@dataclass
class UnitJob:
    """Where one unit's review job stands, for the page."""

    step: str = "idle"  # idle, training, trained, sending, sent, failed
    error: str | None = None
    training: dict[str, Any] | None = None
    sent: dict[str, Any] | None = None
    by: str | None = None
    at: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {"step": self.step, "error": self.error, "training": self.training,
                "sent": self.sent, "by": self.by, "at": self.at}


class ReviewRunner:
    """Starts and tracks the review jobs (see the module docstring).

    Args:
        store_dir: the station store (``ranger.db``, the stored frames).
        settings: models, signing key, cards, the operator's broker account.
        clock: wall time for the versions and the page.
        job: makes the job of a unit (tests pass one with short time limits).
    """

    def __init__(self, store_dir: Path, settings: JobSettings, clock: Clock,
                 job: Callable[[str, Path, Path, JobSettings], ReviewJob] = ReviewJob) -> None:
        self.store_dir = Path(store_dir)
        self.settings = settings
        self.clock = clock
        self._job = job
        self._lock = threading.Lock()
        self._jobs: dict[str, UnitJob] = {}

    def _folders(self, unit: str) -> tuple[Path, Path]:
        base = self.store_dir / "review" / unit
        return base / "export", base / "work"

    def state(self, unit: str) -> dict[str, Any]:
        """The unit's job for the page (a head trained before a restart is shown again)."""
        with self._lock:
            j = self._jobs.get(unit)
            if j is not None:
                return j.view()
        export, work = self._folders(unit)
        try:
            t = self._job(unit, export, work, self.settings).training()
        except ReviewError:
            t = None
        return UnitJob("trained", training=t.to_json()).view() if t else UnitJob().view()

    def train(self, unit: str, user: str) -> None:
        """Export the unit's labels and train its head in the background.

        Raises:
            ReviewError: ``busy`` when a step of this unit is running.
        """
        self._start(unit, user, "training", lambda: self._train(unit))

    def send(self, unit: str, user: str, head_sha256: str) -> None:
        """Pack and push the head whose figures the page showed (``head_sha256``).

        Raises:
            ReviewError: ``busy``; ``state`` when that head is not the one trained last.
        """
        st = self.state(unit)
        t = st.get("training")
        if not t or t.get("head_sha256") != head_sha256:
            raise ReviewError("state", "that head is no longer the one trained last: train "
                              "again and check its figures")
        self._start(unit, user, "sending", lambda: self._send(unit, head_sha256, t))

    def _start(self, unit: str, user: str, step: str, run: Callable[[], dict[str, Any]]
               ) -> None:
        with self._lock:
            j = self._jobs.get(unit)
            if j is not None and j.step in ("training", "sending"):
                raise ReviewError("busy", f"{unit}: {j.step} already (started by {j.by})")
            previous = j.training if j is not None else None
            j = UnitJob(step, training=previous if step == "sending" else None, by=user,
                        at=self.clock.wall())
            self._jobs[unit] = j

        def work() -> None:
            try:
                out = run()
            except ReviewError as e:
                logger.warning("review %s: %s failed: %s", unit, step, e)
                with self._lock:
                    j.step, j.error = "failed", str(e)
                return
            except Exception as e:  # a bug must show on the page, not kill a silent thread
                logger.exception("review %s: %s failed", unit, step)
                with self._lock:
                    j.step, j.error = "failed", f"internal error: {e!r}"
                return
            with self._lock:
                if step == "training":
                    j.step, j.training = "trained", out
                else:
                    j.step, j.sent = "sent", out

        j.thread = threading.Thread(target=work, name=f"review-{unit}", daemon=True)
        j.thread.start()

    def _train(self, unit: str) -> dict[str, Any]:
        export, work = self._folders(unit)
        with ReviewStore(self.store_dir) as rs:
            rs.export_csv(unit, export)
        return self._job(unit, export, work, self.settings).train().to_json()

    def _send(self, unit: str, head_sha256: str, training: dict[str, Any]) -> dict[str, Any]:
        export, work = self._folders(unit)
        version = default_version(unit, self.clock.wall())
        sent = self._job(unit, export, work, self.settings).send(version, head_sha256)
        return sent.to_json()

    def wait(self, unit: str, timeout_s: float) -> None:
        """Until the unit's running step ends (tests)."""
        with self._lock:
            j = self._jobs.get(unit)
        if j is not None and j.thread is not None:
            j.thread.join(timeout_s)
