"""The review loop's job: train a unit's site head on the rangers' labels, then send it.

Two phases, on two calls, because a person decides in between:

1. :meth:`ReviewJob.train` runs ``camtrap models adapt --json`` on the exported frames
   (:meth:`edge_app.station.review.ReviewStore.export_csv`) and returns its cross-validated
   figures — how many of the labelled animals the head keeps, how many empties it calls
   empty — next to those of the head last sent to that unit. The page shows them.
2. :meth:`ReviewJob.send` — only when someone presses "send" — builds a signed model pack
   with the head (``camtrap models pack``) and pushes it to the unit (``camtrap models
   push --json``). The unit verifies, self-tests and installs it, restarts on it with the
   pack on trial (rolled back by itself if the daemon cannot run on it), and its next
   verdicts use the head the pack carries.

Why subprocesses: the station may import only :mod:`edge_app.core` (training and packing are
the tools' and the trap's code), and model work — TFLite interpreters, a few hundred MB of
decoded frames — stays out of the web process; a stuck step is killed at its timeout.

What the job leaves in its work folder (one per unit)::

    site-head-<unit>.npz, .npz.md      the head and its model card (models adapt)
    adapt.toml                         the unit's detector and embedder, for adapt
    training.json                      adapt's summary: what send() ships
    samples/                           a few labelled frames whose verdicts the pack records
    <version>.pack                     the signed pack (sent again as it is when a push
                                       is retried, so the unit resumes the same download)
    sent.json                          the last training sent: the page's "before"
    .lock                              one job per unit at a time

Nothing but :class:`~edge_app.station.review.ReviewError` reaches the caller; its message
carries the tail of the failing step's stderr.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.core.files import atomic_write
from edge_app.station.review import MIN_EXAMPLES, ReviewError

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Pack versions (the pack builder's own rule, checked here so a bad one fails before
training rather than after)."""
SAMPLES_PER_CLASS = 1
"""Labelled frames per class (empty, animal) shipped as the pack's self-test samples: enough
to prove the detector runs on the unit as it did here, small enough for a slow link."""
STDERR_TAIL = 1500
"""Characters of a failing step's stderr kept for the message."""
MAX_OUTPUT = 1 << 20
"""Largest stdout a step may print that is parsed as JSON."""


@dataclass(frozen=True)
class JobSettings:
    """Where the models and the key are, how to reach the broker, and the steps' time limits.

    Attributes:
        models: the station's models folder (the cards' model files, the embedding model).
        key: the fleet's private signing key (``camtrap models keygen``).
        cards: the cards the unit runs (detector first, then its classifier, if any): the
            pack carries them with the head.
        broker: ``HOST:PORT`` of the broker the unit listens on.
        prefix: topic prefix.
        ca_file: the broker's CA certificate (TLS), if any.
        username: an operator MQTT account (not the receiver's: one connection each).
        password_file: its password file.
        embedder: the embedding model's card ('' = the config default); it must be the one
            the unit runs (a head is refused with any other).
        config: a unit config for adapt instead (its ``[detector]``); by default the job
            writes one naming ``cards[0]`` as the detector and ``embedder``. Why the detector
            matters at all: frames are embedded at the reduced scale it decodes them to, as
            on the unit.
        python: the interpreter that runs ``-m edge_app``.
        adapt_timeout_s, pack_timeout_s, push_timeout_s: time limit of each step.
        answer_s: how long the push waits for the unit's answer to each offer.
    """

    models: Path
    key: Path
    cards: tuple[str, ...]
    broker: str
    prefix: str = "camtrap"
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    embedder: str = ""
    config: Path | None = None
    python: str = sys.executable
    adapt_timeout_s: float = 600.0
    pack_timeout_s: float = 300.0
    push_timeout_s: float = 900.0
    answer_s: float = 60.0


@dataclass(frozen=True)
class Figures:
    """A head's cross-validated figures (frames not used to fit the model that scored them).

    Attributes:
        frames: labelled frames trained on.
        counts: per class.
        threshold: P(empty) at or above which the head votes empty.
        animals_kept: share of the animal frames the head keeps.
        nonempty_kept: share of animal, person and vehicle frames it keeps.
        empties_called_empty: share of the empty frames it calls empty.
        warnings: what adapt warns about (few examples, ...).
    """

    frames: int
    counts: dict[str, int]
    threshold: float
    animals_kept: float | None
    nonempty_kept: float | None
    empties_called_empty: float | None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_summary(cls, s: dict[str, Any]) -> Figures:
        """From ``models adapt --json``'s summary.

        Raises:
            ReviewError: (``adapt``) the summary lacks a figure.
        """
        try:
            cv = s["cv"]
            return cls(int(s["frames"]), {str(k): int(v) for k, v in s["counts"].items()},
                       float(s["threshold"]), _share(cv.get("animal_kept")),
                       _share(cv.get("nonempty_kept")), _share(cv.get("empty_discarded")),
                       tuple(str(w) for w in s.get("warnings", ())))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReviewError("adapt", f"models adapt's summary is incomplete ({e!r})") from e

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "counts": self.counts, "threshold": self.threshold,
                "animals_kept": self.animals_kept, "nonempty_kept": self.nonempty_kept,
                "empties_called_empty": self.empties_called_empty,
                "warnings": list(self.warnings)}


def _share(v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"not a share: {v!r}")
    return float(v)


@dataclass(frozen=True)
class Training:
    """What :meth:`ReviewJob.train` made: the head and its figures, beside the last sent.

    Attributes:
        unit: the unit.
        head: the head file.
        figures: the new head's figures ("after").
        previous: the figures of the head last sent to this unit ("before"), or None.
        summary: adapt's whole summary.
        head_sha256: see the property.
    """

    unit: str
    head: Path
    figures: Figures
    previous: Figures | None
    summary: dict[str, Any] = field(repr=False)

    @property
    def head_sha256(self) -> str:
        """The head file's digest: what :meth:`ReviewJob.send` is told was shown."""
        return _file_sha256(self.head)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "head": self.head.name, "head_sha256": self.head_sha256,
                "after": self.figures.to_json(),
                "before": None if self.previous is None else self.previous.to_json()}


@dataclass(frozen=True)
class Sent:
    """What :meth:`ReviewJob.send` did: the pack and the unit's answer (``models push``)."""

    unit: str
    version: str
    pack: Path
    sha256: str
    bytes: int
    previous: str | None
    chunks: int
    sent: int
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "unit": self.unit, "version": self.version, "pack": self.pack.name,
                "sha256": self.sha256, "bytes": self.bytes, "previous": self.previous,
                "chunks": self.chunks, "sent": self.sent, "rounds": self.rounds}


def default_version(unit: str, now: float) -> str:
    """A pack version for a head sent now: ``head-<unit>-<UTC yyyymmddThhmmss>``."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"head-{unit}-{stamp}"[:64]


class ReviewJob:
    """Train, then send, one unit's site head (see the module docstring).

    Args:
        unit: the unit's id (the pack goes to it; the head file is named after it).
        export: the folder :meth:`~edge_app.station.review.ReviewStore.export_csv` wrote.
        work: the job's folder for this unit (created).
        settings: models, key, broker, time limits.

    Raises:
        ReviewError: (``bad_request``) a unit id that cannot name a file or a pack member.
    """

    def __init__(self, unit: str, export: Path, work: Path, settings: JobSettings) -> None:
        if not VERSION_RE.match(unit) or len(unit) > 48:
            raise ReviewError("bad_request", f"unit id {unit[:80]!r} cannot name a head file")
        if not settings.cards or not all(VERSION_RE.match(c) for c in settings.cards):
            raise ReviewError("bad_request", "cards must be card names, the unit's detector "
                              "first")
        self.unit, self.export, self.work, self.settings = unit, Path(export), Path(work), settings
        self.head = self.work / f"site-head-{unit}.npz"

    # -- phase 1 -------------------------------------------------------------------------

    def train(self) -> Training:
        """Run ``models adapt`` on the export; the figures to show before sending.

        Raises:
            ReviewError: ``busy`` (another job of this unit), ``adapt`` (too few labels,
                an unreadable frame set, a model error, a timeout: the message says which).
        """
        s = self.settings
        with self._locked():
            argv = ["models", "adapt", "--images", str(self.export), "--out", str(self.head),
                    "--models", str(s.models), "--min-examples", str(MIN_EXAMPLES),
                    "--config", str(s.config or self._adapt_config()), "--json"]
            # What an earlier training left is void from here on: send() must never ship a
            # head other than the one whose figures were shown last.
            (self.work / "training.json").unlink(missing_ok=True)
            for old in self.work.glob("*.pack"):
                old.unlink()
            out, _ = self._run("adapt", argv, s.adapt_timeout_s)
            summary = _parse_json("adapt", out, "")
            figures = Figures.from_summary(summary)
            if not self.head.is_file():
                raise ReviewError("adapt", f"models adapt wrote no head at {self.head}")
            self._write_json("training.json", summary)
        t = Training(self.unit, self.head, figures, self._previous(), summary)
        log.info("review: trained a head for %s on %d frames (animals kept %s, empties "
                 "called empty %s)", self.unit, figures.frames, figures.animals_kept,
                 figures.empties_called_empty)
        return t

    def training(self) -> Training | None:
        """The head last trained in this folder and not yet superseded, if any (what
        :meth:`send` would ship): lets a page that restarted show it again."""
        summary = self._read_json("training.json")
        if summary is None or not self.head.is_file():
            return None
        return Training(self.unit, self.head, Figures.from_summary(summary), self._previous(),
                        summary)

    # -- phase 2 -------------------------------------------------------------------------

    def send(self, version: str, head_sha256: str | None = None) -> Sent:
        """Build the signed pack with the trained head and push it to the unit.

        Args:
            version: the pack's version (see :func:`default_version`); must differ from the
                unit's active pack.
            head_sha256: the head whose figures the person saw (:attr:`Training.head_sha256`);
                when given, a head trained since (another ranger's click) is not sent.

        Raises:
            ReviewError: ``state`` (nothing trained, or another head than ``head_sha256``),
                ``bad_request`` (a bad version), ``busy``, ``pack`` (building or signing
                failed), ``push`` (the broker, the unit's refusal with its reason, a
                timeout), ``storage``.
        """
        s = self.settings
        if not VERSION_RE.match(version):
            raise ReviewError("bad_request", f"pack version {version[:80]!r}: letters, digits, "
                              "'.', '_', '-' (at most 64)")
        with self._locked():
            summary = self._read_json("training.json")
            if summary is None or not self.head.is_file():
                raise ReviewError("state", f"no trained head for {self.unit}: train first")
            if head_sha256 is not None and _file_sha256(self.head) != head_sha256:
                raise ReviewError("state", f"the head of {self.unit} was trained again since "
                                  "its figures were shown: look at the new figures first")
            pack = self.work / f"{version}.pack"
            if not pack.is_file():  # else: the same pack again, so an interrupted push resumes
                samples = self._samples()
                self._run("pack", ["models", "pack", "--key", str(s.key), "--models",
                                   str(s.models), "--cards", *s.cards, "--head", str(self.head),
                                   "--samples", str(samples), "--version", version,
                                   "--out", str(pack)], s.pack_timeout_s)
                if not pack.is_file():
                    raise ReviewError("pack", f"models pack wrote no pack at {pack}")
            argv = ["models", "push", str(pack), "--unit", self.unit, "--broker", s.broker,
                    "--prefix", s.prefix, "--timeout", f"{s.answer_s:g}", "--json"]
            for opt, val in (("--ca-file", s.ca_file), ("--username", s.username),
                             ("--password-file", s.password_file)):
                if val is not None:
                    argv += [opt, str(val)]
            out, err = self._run("push", argv, s.push_timeout_s, ok_codes=(0, 1))
            res = _parse_json("push", out, err)
            if res.get("ok") is not True:
                raise ReviewError("push", f"{self.unit} did not install {version}: "
                                  f"{res.get('error') or 'no reason given'}")
            self._write_json("sent.json", {**summary, "version": version})
            (self.work / "training.json").unlink(missing_ok=True)
        try:
            r = Sent(self.unit, str(res.get("version") or version), pack, str(res["pack"]),
                     int(res["bytes"]), _opt_str(res.get("previous")), int(res["chunks"]),
                     int(res["sent"]), int(res["rounds"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ReviewError("push", f"models push's answer is incomplete ({e!r})") from e
        log.info("review: %s installed pack %s with its site head (previous %s)", self.unit,
                 r.version, r.previous)
        return r

    # -- helpers -------------------------------------------------------------------------

    def _adapt_config(self) -> Path:
        """A config whose ``[detector]`` is the unit's detector (and embedder)."""
        s = self.settings
        lines = [f'[unit]\nid = "{self.unit}"', "[detector]", f'detector = "{s.cards[0]}"',
                 'classifier = ""']
        if s.embedder:
            if not VERSION_RE.match(s.embedder):
                raise ReviewError("bad_request", f"embedder card {s.embedder[:80]!r}")
            lines.append(f'embedder = "{s.embedder}"')
        path = self.work / "adapt.toml"
        try:
            atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
        except OSError as e:
            raise ReviewError("storage", f"cannot write {path}: {e}") from e
        return path

    def _samples(self) -> Path:
        """A few labelled frames (one empty, one animal) as the pack's self-test samples."""
        d = self.work / "samples"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        want = {"empty": SAMPLES_PER_CLASS, "animal": SAMPLES_PER_CLASS}
        try:
            with open(self.export / "labels.csv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    name, label = row.get("file") or "", row.get("label") or ""
                    src = self.export / name
                    if (want.get(label, 0) > 0 and "/" not in name and src.is_file()
                            and src.suffix.lower() in (".jpg", ".jpeg")):
                        shutil.copyfile(src, d / name)
                        want[label] -= 1
        except (OSError, csv.Error) as e:
            raise ReviewError("pack", f"cannot pick sample frames from {self.export}: {e}") from e
        return d

    def _previous(self) -> Figures | None:
        sent = self._read_json("sent.json")
        if sent is None:
            return None
        try:
            return Figures.from_summary(sent)
        except ReviewError:
            return None

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.work / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        try:
            atomic_write(self.work / name, json.dumps(data, indent=1).encode("utf-8"))
        except OSError as e:
            raise ReviewError("storage", f"cannot write {self.work / name}: {e}") from e

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One job per unit at a time (a second click, a second ranger)."""
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ReviewError("storage", f"cannot use the job folder {self.work}: {e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise ReviewError("busy", f"a review job for {self.unit} is already "
                                  "running") from e
            try:
                yield
            except OSError as e:  # the job folder's files: a full or read-only disk
                raise ReviewError("storage", f"review job of {self.unit}: {e}") from e
        finally:
            os.close(fd)

    def _run(self, step: str, argv: Sequence[str], timeout_s: float,
             ok_codes: tuple[int, ...] = (0,)) -> tuple[str, str]:
        """Run ``camtrap <argv>``: (stdout, stderr's tail), or a ReviewError with the tail."""
        cmd = [self.settings.python, "-m", "edge_app", *argv]
        log.info("review: %s: %s", step, " ".join(cmd))
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ReviewError(step, f"models {step} did not finish in {timeout_s:g} s (stopped)"
                              f"{_tail(e.stderr)}") from e
        except OSError as e:
            raise ReviewError(step, f"cannot run models {step}: {e}") from e
        if p.returncode not in ok_codes:
            raise ReviewError(step, f"models {step} failed (exit {p.returncode})"
                              f"{_tail(p.stderr)}")
        if len(p.stdout) > MAX_OUTPUT:
            raise ReviewError(step, f"models {step} printed more than {MAX_OUTPUT} bytes")
        return p.stdout.decode("utf-8", errors="replace"), _tail(p.stderr)


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _tail(stderr: bytes | str | None) -> str:
    if not stderr:
        return ""
    text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
    text = text.strip()
    return ": " + (text if len(text) <= STDERR_TAIL else "…" + text[-STDERR_TAIL:])


def _parse_json(step: str, out: str, err: str) -> dict[str, Any]:
    """The JSON object a step printed (``--json``); ``err``: its stderr's tail."""
    try:
        data = json.loads(out, parse_constant=_refuse_constant)
    except ValueError as e:
        raise ReviewError(step, f"models {step} printed no JSON summary ({e}){err}") from e
    if not isinstance(data, dict):
        raise ReviewError(step, f"models {step} printed JSON that is not an object")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)
