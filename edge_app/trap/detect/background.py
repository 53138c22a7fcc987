"""The self-learned background: what this trap's empty scene looks like, kept on the card.

A camera trap is fixed in place: its empty frames look like each other, day after day. The
unit remembers the embeddings (:mod:`edge_app.trap.detect.embed`) of

* frames it *discarded* with a margin (every detector and classifier score below
  ``background.learn_below``, and every other stage agreeing it was empty), and
* scheduled background shots taken without a trigger (``background.shot_every_s``, a small
  supervised stage, :mod:`edge_app.trap.scene_learning`), which is how night, dawn and a new
  season get learnt: a trap cannot learn a scene from its discards if the background itself
  keeps vetoing that scene.

In the fusion (:func:`edge_app.trap.detect.policy.decide`) the background is one more voter: a frame
whose cosine similarity to every remembered scene is below ``background.min_similarity`` is
unlike anything this trap has seen empty, so it is *kept* (``kept_by: background``). It can
only keep frames, never discard one another stage keeps. Until it knows
``background.min_entries`` scenes it abstains, so a fresh trap behaves like one without it.

What it can and cannot catch (measured on the shared Peru frames, 1024-d MobileNetV1): the same
empty scene in another light scores 0.83–0.93 against the others; an infrared night frame of
an animal scores ≈ 0.5 against daytime backgrounds; a small animal in daylight scores 0.91–0.94,
indistinguishable from the empty scene. So the background catches a changed scene (night,
something large and close), not a small animal: that is the site head's job.

Bounded and persistent: at most ``background.max_entries`` embeddings (normalised float32 in
memory: 4 KB each; float16 on disk: 2 KB each), in ``<storage.root>/background.db`` (SQLite,
one row per scene, so a power cut loses at most the last one). A new scene closer than
``background.dedupe_similarity`` to a known one only refreshes that one's time; beyond the
bound the oldest is dropped; anything older than ``background.max_age_days`` is forgotten
(seasons change). The embedding model's sha256 is stored with the set: a different model makes
the old vectors meaningless, so they are dropped at open.

Not thread-safe: owned by the detect thread (scheduled shots are analysed there too).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_app.core.clock import Clock
from edge_app.core.config import BackgroundConfig
from edge_app.core.errors import StorageError

log = logging.getLogger(__name__)

DB_NAME = "background.db"
_DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenes (
    id    INTEGER PRIMARY KEY,
    ts    REAL NOT NULL,
    kind  TEXT NOT NULL CHECK (kind IN ('empty', 'shot')),
    vec   BLOB NOT NULL
);
"""


class BackgroundMemory:
    """The bounded, persisted set of background embeddings (see the module docstring).

    Args:
        root: the storage root; the set lives in ``root/background.db``.
        dims: embedding length.
        embedding_sha256: the embedding model the vectors come from.
        cfg: ``[background]``.
        clock: wall time for ages.
    """

    def __init__(self, root: Path, dims: int, embedding_sha256: str, cfg: BackgroundConfig,
                 clock: Clock) -> None:
        self.path = root / DB_NAME
        self.dims = dims
        self.sha256 = embedding_sha256
        self.cfg = cfg
        self.clock = clock
        cap = cfg.max_entries
        self._vecs = np.zeros((cap, dims), np.float32)
        self._ids = np.zeros(cap, np.int64)
        self._ts = np.zeros(cap, np.float64)
        self._sims = np.empty(cap, np.float32)
        self._n = 0
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file, drop stale or foreign vectors, load the rest.

        Raises:
            StorageError: the file cannot be opened or read.
        """
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'embedding'").fetchone()
            want = f"{self.sha256}:{self.dims}"
            if row is not None and row[0] != want:
                n = conn.execute("SELECT COUNT(*) FROM scenes").fetchone()[0]
                log.warning("background: %d scene(s) came from another embedding model (%s); "
                            "forgetting them", n, row[0])
                conn.execute("DELETE FROM scenes")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('embedding', ?)", (want,))
            self._conn = conn
            self._load()
        except sqlite3.Error as e:
            self._conn = None
            raise StorageError(f"cannot open background set {self.path}: {e}") from e
        log.info("background: %d scene(s) known from %s", self._n, self.path)

    def _load(self) -> None:
        assert self._conn is not None
        self._age_out()
        rows = self._conn.execute(
            "SELECT id, ts, vec FROM scenes ORDER BY ts DESC, id DESC LIMIT ?",
            (self.cfg.max_entries,)).fetchall()
        self._n = 0
        for rid, ts, blob in reversed(rows):
            v = np.frombuffer(blob, np.float16)
            if v.size != self.dims:
                continue  # written by another build with other dims: unusable
            self._put(self._n, int(rid), float(ts), v)
            self._n += 1
        self._conn.execute("DELETE FROM scenes WHERE id NOT IN (SELECT id FROM scenes ORDER "
                           "BY ts DESC, id DESC LIMIT ?)", (self.cfg.max_entries,))

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- queries ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def active(self) -> bool:
        """True once enough scenes are known for the background to vote."""
        return self._n >= self.cfg.min_entries

    def similarity(self, vec: NDArray[np.float32]) -> float | None:
        """Highest cosine similarity of a unit embedding to any known scene; None while the
        background is not :attr:`active` (it abstains)."""
        if not self.active:
            return None
        n = self._n
        sims = self._sims[:n]
        np.dot(self._vecs[:n], vec, out=sims)
        return float(sims.max())

    def is_known(self, sim: float | None) -> bool | None:
        """The background's vote for a similarity from :meth:`similarity`: True (looks like a
        known empty scene), False (unlike all of them: keep), None (abstains)."""
        return None if sim is None else sim >= self.cfg.min_similarity

    # -- learning -----------------------------------------------------------------------

    def add(self, vec: NDArray[np.float32], kind: str) -> bool:
        """Remember a unit embedding as background (``kind``: ``empty`` or ``shot``).

        Returns:
            True if a new scene was stored, False if it only refreshed a near-identical one.

        Raises:
            StorageError: the file cannot be written (the in-memory set is unchanged).
        """
        if self._conn is None:
            self.open()
        assert self._conn is not None
        now = self.clock.wall()
        self._age_out(now)
        n = self._n
        if n:
            sims = self._sims[:n]
            np.dot(self._vecs[:n], vec, out=sims)
            j = int(np.argmax(sims))
            if sims[j] >= self.cfg.dedupe_similarity:
                try:
                    self._conn.execute("UPDATE scenes SET ts = ? WHERE id = ?",
                                       (now, int(self._ids[j])))
                except sqlite3.Error as e:
                    raise StorageError(f"cannot write {self.path}: {e}") from e
                self._ts[j] = now
                return False
        blob = vec.astype(np.float16).tobytes()
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                cur = self._conn.execute("INSERT INTO scenes (ts, kind, vec) VALUES (?, ?, ?)",
                                         (now, kind, blob))
                rid = int(cur.lastrowid or 0)
                drop = None
                if n >= self.cfg.max_entries:
                    drop = int(np.argmin(self._ts[:n]))
                    self._conn.execute("DELETE FROM scenes WHERE id = ?",
                                       (int(self._ids[drop]),))
        except sqlite3.Error as e:
            raise StorageError(f"cannot write {self.path}: {e}") from e
        if drop is None:
            self._put(n, rid, now, vec)
            self._n += 1
        else:
            self._put(drop, rid, now, vec)
        return True

    def _put(self, i: int, rid: int, ts: float, vec: NDArray[np.floating]) -> None:
        self._vecs[i] = vec
        # float16 on disk: renormalise so similarities stay cosines.
        norm = float(np.linalg.norm(self._vecs[i]))
        if norm > 0:
            self._vecs[i] /= norm
        self._ids[i] = rid
        self._ts[i] = ts

    def _age_out(self, now: float | None = None) -> None:
        """Forget scenes older than ``max_age_days`` (on disk and in memory)."""
        assert self._conn is not None
        now = self.clock.wall() if now is None else now
        cutoff = now - self.cfg.max_age_days * _DAY
        try:
            self._conn.execute("DELETE FROM scenes WHERE ts < ?", (cutoff,))
        except sqlite3.Error as e:
            raise StorageError(f"cannot write {self.path}: {e}") from e
        n = self._n
        if n and self._ts[:n].min() < cutoff:
            keep = np.flatnonzero(self._ts[:n] >= cutoff)
            m = keep.size
            self._vecs[:m] = self._vecs[keep]
            self._ids[:m] = self._ids[keep]
            self._ts[:m] = self._ts[keep]
            self._n = m
            log.info("background: forgot %d scene(s) older than %g days", n - m,
                     self.cfg.max_age_days)

    def stats(self) -> dict[str, object]:
        """For the stats message: scenes known, whether the background votes, oldest age."""
        n = self._n
        oldest = (self.clock.wall() - float(self._ts[:n].min())) / _DAY if n else None
        return {"scenes": n, "active": self.active,
                "oldest_days": None if oldest is None else round(oldest, 2)}
