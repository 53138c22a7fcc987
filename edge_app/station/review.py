"""Rangers' labels on the frames a trap was unsure about, and their export for ``models adapt``.

A trap keeps the triggers it cannot call empty (event ``outcome`` = ``keep``) and sends them
to the station with their thumbnail and, when asked, the full image. Rangers label those
frames at the station; the labels train the unit's *site head* (``camtrap models adapt``),
which goes back to the unit in a signed model pack (:mod:`edge_app.station.review_job`).

Why the labels live in the station's own SQLite file (``<store>/ranger.db``, table
``review_labels``): they are about the events and media stored there, keyed the same way
(by unit: a unit's frames are only ever labelled for that unit), and one file is one backup.
The receiver's tables and ``PRAGMA user_version`` belong to
:class:`~edge_app.station.store.RangerStore`; this module only adds its own table.

Why one label per *event*: an event carries one frame, first as a thumbnail, later perhaps
as the full image. A ranger may label the thumbnail and the image may arrive afterwards; the
frame must then not come back into the queue, and a second label (a correction) replaces
the first instead of standing beside it. The export uses the best copy stored at that time.

Labels are the rangers' words (``leopard``, ``tiger``: what they care about); the export maps
them to the head's classes (:data:`HEAD_CLASS`: both big cats are ``animal``, the species goes
in the ``species`` column, as ``camtrap label`` writes it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.core.files import atomic_write

log = logging.getLogger(__name__)

DB_NAME = "ranger.db"
"""The station store's database file (the same name :mod:`edge_app.station.store` uses)."""
LABELS: tuple[str, ...] = ("empty", "animal", "person", "vehicle", "leopard", "tiger")
"""What a ranger may say about a frame."""
HEAD_CLASS: dict[str, str] = {"empty": "empty", "animal": "animal", "person": "person",
                              "vehicle": "vehicle", "leopard": "animal", "tiger": "animal"}
"""Ranger label → the site head's class (``models adapt`` knows empty/animal/person/vehicle)."""
SPECIES: dict[str, str] = {"leopard": "leopard", "tiger": "tiger"}
"""Ranger label → the ``species`` column of the labels CSV."""
MIN_EXAMPLES = 5
"""Fewest ``empty`` and ``animal`` frames a head is trained on: ``models adapt``'s own default
(``--min-examples``), passed to it explicitly by the review job so that both agree."""
MAX_QUEUE = 500
"""Most frames one :meth:`ReviewStore.queue` call returns."""
MAX_TEXT = 128
"""Longest unit, media id or user name accepted."""
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
"""Unit and media ids: what the receiver's door lets through (they name files)."""

_UNLABELLED = ("AND NOT EXISTS (SELECT 1 FROM review_labels l WHERE l.unit = e.unit "
               "AND l.event_id = e.id)")
_TABLE = """CREATE TABLE IF NOT EXISTS review_labels (unit TEXT, event_id TEXT, media_id TEXT,
    label TEXT, user TEXT, at REAL, PRIMARY KEY (unit, media_id))"""


class ReviewError(Exception):
    """A review request or job that cannot be done; the message says why, for the page.

    Attributes:
        kind: a short word for counting refusals (``bad_label``, ``unknown_frame``,
            ``storage``, ``adapt``, ``pack``, ``push``, ``busy``, ``state``, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Frame:
    """One keep frame of a unit, as stored at the station.

    Attributes:
        unit: the unit the broker authenticated.
        event_id: its event.
        media_id: the stored copy to show and label: the full image when stored, else the
            thumbnail.
        kind: ``image`` or ``thumb``.
        path: the JPEG on disk.
        received: when the event reached the station (epoch s).
        event: the event JSON (the trap's own label, species, score, time).
    """

    unit: str
    event_id: str
    media_id: str
    kind: str
    path: Path
    received: float
    event: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """What the review page needs to show the frame (no file path)."""
        ev = self.event
        return {"unit": self.unit, "event_id": self.event_id, "media_id": self.media_id,
                "kind": self.kind, "received": self.received, "ts": ev.get("ts"),
                "trap_label": ev.get("label"), "trap_species": ev.get("species"),
                "trap_score": ev.get("score")}


@dataclass(frozen=True, slots=True)
class Label:
    """A ranger's label on one frame."""

    unit: str
    event_id: str
    media_id: str
    label: str
    user: str
    at: float


@dataclass(frozen=True, slots=True)
class Export:
    """What :meth:`ReviewStore.export_csv` wrote.

    Attributes:
        folder: the frames and ``labels.csv``.
        csv: the labels CSV (``file,label,species``).
        counts: frames per head class (empty/animal/person/vehicle).
        missing: labelled frames whose JPEG is no longer on disk (left out).
    """

    folder: Path
    csv: Path
    counts: dict[str, int]
    missing: tuple[str, ...]

    @property
    def frames(self) -> int:
        return sum(self.counts.values())

    @property
    def trainable(self) -> bool:
        """Enough empty and animal frames for ``models adapt`` (:data:`MIN_EXAMPLES` each)."""
        return all(self.counts.get(c, 0) >= MIN_EXAMPLES for c in ("empty", "animal"))


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ReviewError("bad_request", f"{what} must be letters, digits, '-' or '_' "
                          f"(at most {MAX_TEXT})")
    return value


class ReviewStore:
    """The labels table beside the station's events and media.

    Args:
        conn_or_path: the store folder (or the ``ranger.db`` file in it): a connection of
            its own, safe beside the receiver's (WAL); or an open connection to ``ranger.db``
            that no other thread uses meanwhile (the receiver's belongs to its worker thread).
            The station store must exist: the receiver creates it.

    Raises:
        ReviewError: (``storage``) the database cannot be opened or is not a station store.
    """

    def __init__(self, conn_or_path: sqlite3.Connection | str | os.PathLike[str]) -> None:
        self._own = not isinstance(conn_or_path, sqlite3.Connection)
        self._lock = threading.Lock()  # the page's request threads share the connection
        try:
            if isinstance(conn_or_path, sqlite3.Connection):
                self._conn = conn_or_path
                row = self._conn.execute("PRAGMA database_list").fetchone()
                self.folder = Path(row[2]).parent
            else:
                p = Path(conn_or_path)
                db = p if p.name == DB_NAME else p / DB_NAME
                if not db.is_file():
                    raise ReviewError("storage", f"no station store at {db} (the receiver "
                                      "creates it: camtrap alerts --store)")
                self.folder = db.parent
                self._conn = sqlite3.connect(db, isolation_level=None,
                                             check_same_thread=False, timeout=10)
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute(_TABLE)
        except sqlite3.Error as e:
            raise ReviewError("storage", f"cannot open the review labels in {conn_or_path}: "
                              f"{e}") from e

    def close(self) -> None:
        """Close the connection if this object opened it."""
        if self._own:
            self._conn.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------

    def _frames(self, unit: str, where: str, args: tuple[Any, ...],
                limit: int) -> list[Frame]:
        """Keep events of ``unit`` with their best stored copy (image, else thumbnail)."""
        sql = f"""SELECT id, received, json, image, thumb FROM (
                SELECT e.id, e.received, e.rowid AS r, e.json,
                  (SELECT m.path FROM media m WHERE m.unit = e.unit
                   AND m.id = e.id || '-image') AS image,
                  (SELECT m.path FROM media m WHERE m.unit = e.unit
                   AND m.id = e.id || '-thumb') AS thumb
                FROM events e WHERE e.unit = ? AND e.outcome = 'keep' {where})
            WHERE image IS NOT NULL OR thumb IS NOT NULL
            ORDER BY received, r LIMIT ?"""  # noqa: S608 (where: fixed fragments only)
        try:
            with self._lock:
                rows = self._conn.execute(sql, (unit, *args, limit)).fetchall()
        except sqlite3.Error as e:
            raise ReviewError("storage", f"cannot read the keep frames of {unit}: {e}") from e
        out = []
        for event_id, received, raw, image, thumb in rows:
            kind, rel = ("image", image) if image is not None else ("thumb", thumb)
            try:
                event = _json_object(raw)
            except ValueError:
                event = {}
            out.append(Frame(unit, str(event_id), f"{event_id}-{kind}", kind,
                             self.folder / str(rel), float(received), event))
        return out

    def queue(self, unit: str, limit: int = 50) -> list[Frame]:
        """The keep frames of ``unit`` not yet labelled, oldest first.

        Raises:
            ReviewError: a bad unit id or limit, or the database cannot be read.
        """
        _check_id("unit", unit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_QUEUE:
            raise ReviewError("bad_request", f"limit must be 1-{MAX_QUEUE}")
        return self._frames(unit, _UNLABELLED, (), limit)

    def frame(self, unit: str, media_id: str) -> Frame | None:
        """The keep frame that ``media_id`` (its image or its thumbnail) belongs to, with its
        best stored copy; None when it is not a stored keep frame of ``unit``."""
        _check_id("unit", unit)
        _check_id("media_id", media_id)
        event_id, _, kind = media_id.rpartition("-")
        if kind not in ("image", "thumb") or not event_id:
            return None
        got = self._frames(unit, "AND e.id = ?", (event_id,), 1)
        return got[0] if got else None

    def labels(self, unit: str) -> list[Label]:
        """Every label on ``unit``'s frames, in the order they were given."""
        _check_id("unit", unit)
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT unit, event_id, media_id, label, user, at FROM review_labels "
                    "WHERE unit = ? ORDER BY at, rowid", (unit,)).fetchall()
        except sqlite3.Error as e:
            raise ReviewError("storage", f"cannot read the labels of {unit}: {e}") from e
        return [Label(str(u), str(ev), str(m), str(lab), str(us), float(at))
                for u, ev, m, lab, us, at in rows]

    def counts(self, unit: str) -> dict[str, Any]:
        """For the page: frames waiting, labels per ranger label and per head class, and
        whether there are enough to train."""
        labelled = Counter(lab.label for lab in self.labels(unit))
        classes: Counter[str] = Counter()
        for lab, n in labelled.items():
            classes[HEAD_CLASS.get(lab, lab)] += n
        waiting = len(self._frames(unit, _UNLABELLED, (), -1))  # -1: no limit
        return {"waiting": waiting, "labels": dict(labelled), "classes": dict(classes),
                "trainable": all(classes[c] >= MIN_EXAMPLES for c in ("empty", "animal")),
                "min_examples": MIN_EXAMPLES}

    # -- writing -----------------------------------------------------------------------

    def label(self, unit: str, media_id: str, label: str, user: str, now: float) -> Label:
        """Record (or correct) a ranger's label on a keep frame of ``unit``.

        Args:
            unit: the unit.
            media_id: the frame's image or thumbnail id (``<event id>-image|thumb``).
            label: one of :data:`LABELS`.
            user: who labelled it (the page's signed-in ranger).
            now: wall-clock time (epoch s).

        Raises:
            ReviewError: ``bad_label`` (not one of :data:`LABELS`), ``unknown_frame`` (not a
                stored keep frame of ``unit``), ``bad_request`` (a malformed id, user or
                time), ``storage``.
        """
        if not isinstance(label, str) or label not in LABELS:
            raise ReviewError("bad_label", f"label must be one of {', '.join(LABELS)}")
        if not isinstance(user, str) or not user.strip() or len(user) > MAX_TEXT:
            raise ReviewError("bad_request", f"user must be 1-{MAX_TEXT} characters")
        if (isinstance(now, bool) or not isinstance(now, int | float)
                or not math.isfinite(now)):
            raise ReviewError("bad_request", "time must be a finite number")
        f = self.frame(unit, media_id)
        if f is None:
            raise ReviewError("unknown_frame", f"{media_id} is not a stored keep frame of "
                              f"{unit}")
        try:
            with self._lock:
                self._write_label(Label(unit, f.event_id, media_id, label, user, float(now)))
        except sqlite3.Error as e:
            raise ReviewError("storage", f"cannot store the label of {media_id}: {e}") from e
        log.info("review: %s labelled %s %s as %s", user, unit, media_id, label)
        return Label(unit, f.event_id, media_id, label, user, float(now))

    def _write_label(self, lab: Label) -> None:
        """One label per event: a correction, or the image after the thumbnail, replaces."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("DELETE FROM review_labels WHERE unit = ? AND event_id = ?",
                               (lab.unit, lab.event_id))
            self._conn.execute(
                "INSERT INTO review_labels (unit, event_id, media_id, label, user, at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (lab.unit, lab.event_id, lab.media_id, lab.label,
                                              lab.user, lab.at))
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def export_csv(self, unit: str, folder: str | os.PathLike[str]) -> Export:
        """Write ``unit``'s labelled frames and ``labels.csv`` for ``camtrap models adapt``.

        The frames are hard links to the stored JPEGs when the folder is on the same file
        system (no copy of a season's images), else copies; each is named after the stored
        copy used (``<event id>-image.jpg`` or ``-thumb.jpg``). The CSV is written last and
        atomically, so a folder with a ``labels.csv`` has every frame it names.

        Raises:
            ReviewError: ``storage``: the folder or a frame cannot be written.
        """
        _check_id("unit", unit)
        out = Path(folder)
        rows: list[tuple[str, str, str]] = []
        missing: list[str] = []
        counts: Counter[str] = Counter()
        try:
            out.mkdir(parents=True, exist_ok=True)
            for lab in self.labels(unit):
                f = self.frame(unit, lab.media_id)
                if f is None or not f.path.is_file():
                    missing.append(lab.media_id)
                    continue
                cls = HEAD_CLASS[lab.label]  # validated when stored
                name = f"{f.media_id}.jpg"
                _link_or_copy(f.path, out / name)
                rows.append((name, cls, SPECIES.get(lab.label, "")))
                counts[cls] += 1
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(("file", "label", "species"))
            w.writerows(rows)
            atomic_write(out / "labels.csv", buf.getvalue().encode("utf-8"))
        except OSError as e:
            raise ReviewError("storage", f"cannot export {unit}'s labels to {out}: "
                              f"{e.strerror or e}") from e
        if missing:
            log.warning("review: %d labelled frame(s) of %s not exported (file gone): %s",
                        len(missing), unit, ", ".join(missing[:5]))
        return Export(out, out / "labels.csv", dict(counts), tuple(missing))


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s bytes: a hard link when possible, else a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _json_object(raw: object) -> dict[str, Any]:
    data = json.loads(str(raw))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
