"""The review loop: rangers label a unit's keep frames at the station, the station trains the
unit's site head on them and sends it in a signed pack, and the unit's next verdicts use it.

Real parts throughout: the station's SQLite store (written by :class:`RangerStore`), real
camera-trap frames of one site (the field set's Peru SDZG camera), the real ``camtrap models
adapt/pack/push`` subprocesses, a real mosquitto and a running ``camtrap run``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.station.review import LABELS, ReviewError, ReviewStore
from edge_app.station.review_job import JobSettings, ReviewJob, default_version
from edge_app.station.store import DB_NAME, SCHEMA_VERSION, RangerStore, StoredEvent
from edge_app.tools import pack_build
from edge_app.tools.head_training import read_label_csv
from edge_app.trap.detect.cards import sha256_file
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.site_head import SiteHead, save_head
from edge_app.trap.detect.site_votes import pack_head
from edge_app.trap.packs import install as packs
from edge_app.trap.packs.manifest import decode_public_key
from edge_app.trap.packs.remote import EXIT_RESTART, pack_state

REPO = Path(__file__).resolve().parents[1]
DET = "yolov8n_coco_int8io_float_320"
EMBEDDER = "mobilenet_v1_embedding_uint8_224"
UNIT = "LL-1"
SITE = "animl-r/examples__test_data__Peru__S90__SDZG_1__EK0000{}.JPG"
"""One camera's frames in the field set: the same scene, empty and with animals."""
RANGER_LABELS = {"10": "empty", "11": "empty", "12": "empty", "25": "empty", "26": "empty",
                 "27": "empty", "40": "empty", "04": "animal", "05": "leopard",
                 "06": "animal", "13": "tiger", "14": "animal", "15": "animal",
                 "16": "leopard", "17": "animal", "18": "animal", "01": "person"}
"""What the rangers say about the frames the unit kept (the field set's truth, with the
big-cat names rangers use)."""
HELD_OUT_ANIMAL = "19"
"""An animal frame of the same camera, not labelled: the stand-in detector scores it 0.004
(a confident discard), the head trained on its neighbours keeps it."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keep(unit: str, seq: int, outcome: str = "keep") -> StoredEvent:
    """An event as the receiver stores it."""
    eid = f"{unit}-{seq}"
    return StoredEvent(eid, unit, outcome, {"id": eid, "unit": unit, "seq": seq,
                                            "outcome": outcome, "label": "empty",
                                            "species": None, "score": 0.0,
                                            "ts": "2026-09-21T10:15:00+00:00"})


def add_media(store: RangerStore, unit: str, media_id: str, data: bytes, now: float) -> None:
    store.add_media(unit, media_id, media_id.rpartition("-")[0], data, _sha(data), now)


def stock_site(folder: Path, field_dir: Path, frames: dict[str, str]) -> dict[str, str]:
    """The unit's keep events, one per frame, stored with their images; media id → label."""
    store = RangerStore(folder)
    try:
        keys = list(frames)
        store.add_events([keep(UNIT, i + 1) for i in range(len(keys))], 100.0)
        out = {}
        for i, k in enumerate(keys):
            media_id = f"{UNIT}-{i + 1}-image"
            add_media(store, UNIT, media_id, (field_dir / SITE.format(k)).read_bytes(),
                      101.0 + i)
            out[media_id] = frames[k]
        return out
    finally:
        store.close()


# -- the labels store ------------------------------------------------------------------------


@pytest.fixture
def station(tmp_path: Path) -> Path:
    """A station store: unit A with keep, alert and discard events in various media states,
    unit B with one keep frame."""
    s = RangerStore(tmp_path / "store")
    s.add_events([keep("A", 1), keep("A", 2), keep("A", 3, "alert"), keep("A", 4),
                  keep("A", 5, "discard"), keep("A", 6), keep("B", 1)], 10.0)
    add_media(s, "A", "A-1-thumb", b"thumb-1", 11.0)
    add_media(s, "A", "A-1-image", b"image-1", 12.0)  # both: the image is shown
    add_media(s, "A", "A-2-thumb", b"thumb-2", 13.0)
    add_media(s, "A", "A-3-thumb", b"thumb-3", 14.0)  # an alert: not a review frame
    # announced, no media yet; it joins the queue when its thumbnail arrives.
    add_media(s, "A", "A-5-thumb", b"thumb-5", 15.0)
    add_media(s, "A", "A-6-thumb", b"thumb-6", 16.0)
    add_media(s, "B", "B-1-thumb", b"thumb-b", 17.0)
    s.close()
    return tmp_path / "store"


def test_the_queue_holds_the_units_unlabelled_keep_frames_best_copy_first(
        station: Path) -> None:
    with ReviewStore(station) as rs:
        q = rs.queue("A")
        assert [(f.media_id, f.kind) for f in q] == [
            ("A-1-image", "image"), ("A-2-thumb", "thumb"), ("A-6-thumb", "thumb")]
        assert q[0].path.read_bytes() == b"image-1"
        assert q[0].to_json() == {"unit": "A", "event_id": "A-1", "media_id": "A-1-image",
                                  "kind": "image", "received": 10.0,
                                  "ts": "2026-09-21T10:15:00+00:00", "trap_label": "empty",
                                  "trap_species": None, "trap_score": 0.0}
        assert [f.media_id for f in rs.queue("A", limit=1)] == ["A-1-image"]
        assert [f.media_id for f in rs.queue("B")] == ["B-1-thumb"]
        assert rs.queue("C") == []
        rs.label("A", "A-2-thumb", "leopard", "olga", 20.0)
        assert [f.media_id for f in rs.queue("A")] == ["A-1-image", "A-6-thumb"]
        # A-4's thumbnail arrives: it joins the queue.
        s = RangerStore(station)
        add_media(s, "A", "A-4-thumb", b"thumb-4", 21.0)
        s.close()
        assert [f.media_id for f in rs.queue("A")] == ["A-1-image", "A-4-thumb", "A-6-thumb"]
        assert rs.counts("A") == {"waiting": 3, "labels": {"leopard": 1},
                                  "classes": {"animal": 1}, "trainable": False,
                                  "min_examples": 5}
        for bad in (0, 501, True, "5"):
            with pytest.raises(ReviewError, match="limit"):
                rs.queue("A", limit=bad)  # type: ignore[arg-type]
        with pytest.raises(ReviewError, match="unit"):
            rs.queue("../A")


def test_a_label_is_checked_and_an_event_has_one_label(station: Path) -> None:
    with ReviewStore(station / DB_NAME) as rs:
        refusals = {
            ("A-1-image", "cat", "olga", 1.0): "bad_label",
            ("A-1-image", "Leopard", "olga", 1.0): "bad_label",
            ("A-3-thumb", "empty", "olga", 1.0): "unknown_frame",  # an alert, not a keep
            ("A-5-thumb", "empty", "olga", 1.0): "unknown_frame",  # a discard
            ("B-1-thumb", "empty", "olga", 1.0): "unknown_frame",  # another unit's frame
            ("A-4-thumb", "empty", "olga", 1.0): "unknown_frame",  # not stored yet
            ("A-1-video", "empty", "olga", 1.0): "unknown_frame",
            ("../A-1-image", "empty", "olga", 1.0): "bad_request",
            ("A-1-image", "empty", "", 1.0): "bad_request",
            ("A-1-image", "empty", "x" * 200, 1.0): "bad_request",
            ("A-1-image", "empty", "olga", float("nan")): "bad_request",
        }
        for (media_id, label, user, now), kind in refusals.items():
            with pytest.raises(ReviewError) as e:
                rs.label("A", media_id, label, user, now)
            assert e.value.kind == kind, (media_id, label, user, now)
        assert rs.labels("A") == []
        rs.label("A", "A-2-thumb", "animal", "olga", 30.0)
        # The image arrives after the thumbnail was labelled: the frame does not come back,
        # and a correction on the image replaces the label on the thumbnail.
        s = RangerStore(station)
        add_media(s, "A", "A-2-image", b"image-2", 31.0)
        s.close()
        assert "A-2-image" not in [f.media_id for f in rs.queue("A")]
        rs.label("A", "A-2-image", "tiger", "ivan", 32.0)
        rs.label("A", "A-1-image", "empty", "olga", 33.0)
        got = [(lab.event_id, lab.media_id, lab.label, lab.user) for lab in rs.labels("A")]
        assert got == [("A-2", "A-2-image", "tiger", "ivan"),
                       ("A-1", "A-1-image", "empty", "olga")]
        assert rs.labels("B") == []
        assert set(LABELS) == {"empty", "animal", "person", "vehicle", "leopard", "tiger"}
    # The receiver's tables and schema version are untouched; it opens the store as before.
    con = sqlite3.connect(station / DB_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "media", "review_labels"} <= tables
    # A connection of the caller's own works the same.
    rs2 = ReviewStore(con)
    assert [lab.label for lab in rs2.labels("A")] == ["tiger", "empty"]
    con.close()
    s = RangerStore(station)
    assert s.event_count("A") == 6
    s.close()


def test_a_missing_station_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="no station store") as e:
        ReviewStore(tmp_path / "nowhere")
    assert e.value.kind == "storage"


def test_the_export_is_what_models_adapt_reads(station: Path, tmp_path: Path) -> None:
    with ReviewStore(station) as rs:
        rs.label("A", "A-1-image", "empty", "olga", 1.0)
        rs.label("A", "A-2-thumb", "leopard", "olga", 2.0)
        rs.label("A", "A-6-thumb", "person", "olga", 3.0)
        (station / "media" / "A" / "A-6-thumb.jpg").unlink()  # lost from the disk
        ex = rs.export_csv("A", tmp_path / "export")
        assert ex.counts == {"empty": 1, "animal": 1}
        assert ex.missing == ("A-6-thumb",)
        assert (ex.frames, ex.trainable) == (2, False)
        assert ex.csv.read_text() == ("file,label,species\nA-1-image.jpg,empty,\n"
                                      "A-2-thumb.jpg,animal,leopard\n")
        assert (ex.folder / "A-1-image.jpg").read_bytes() == b"image-1"
        rows = read_label_csv(ex.csv, ex.folder)  # models adapt's own reader
        assert [(r.file, r.label) for r in rows] == [("A-1-image.jpg", "empty"),
                                                      ("A-2-thumb.jpg", "animal")]
        # Exported again after a correction: the CSV is replaced, frames are re-linked.
        rs.label("A", "A-2-thumb", "empty", "ivan", 4.0)
        again = rs.export_csv("A", tmp_path / "export")
        assert again.counts == {"empty": 2}
        assert again.csv.read_text().count("\n") == 3


# -- the job's refusals (real subprocesses, no training) --------------------------------------


def _settings(models_dir: Path, tmp: Path, **over: object) -> JobSettings:
    base: dict[str, object] = {"models": models_dir, "key": tmp / "fleet.key", "cards": (DET,),
                               "broker": "127.0.0.1:1"}
    base.update(over)
    return JobSettings(**base)  # type: ignore[arg-type]


@pytest.mark.models
def test_the_job_says_why_it_cannot_train_or_send(station: Path, tmp_path: Path,
                                                  models_dir: Path) -> None:
    with ReviewStore(station) as rs:
        rs.label("A", "A-1-image", "empty", "olga", 1.0)
        ex = rs.export_csv("A", tmp_path / "export")
    job = ReviewJob("A", ex.folder, tmp_path / "job", _settings(models_dir, tmp_path))
    with pytest.raises(ReviewError, match=r"models adapt failed \(exit 2\): models adapt: .*"
                       r"5 of each of empty and animal") as e:
        job.train()
    assert e.value.kind == "adapt"
    assert job.training() is None
    with pytest.raises(ReviewError, match="train first") as e:
        job.send("v2")
    assert e.value.kind == "state"
    with pytest.raises(ReviewError, match="pack version") as e:
        job.send("v2/../x")
    assert e.value.kind == "bad_request"
    slow = ReviewJob("A", ex.folder, tmp_path / "job",
                     _settings(models_dir, tmp_path, adapt_timeout_s=0.01))
    with pytest.raises(ReviewError, match=r"did not finish in 0.01 s \(stopped\)"):
        slow.train()
    # A second click while a job of the same unit runs.
    fd = os.open(tmp_path / "job" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ReviewError, match="already running") as e:
            job.train()
        assert e.value.kind == "busy"
    finally:
        os.close(fd)
    with pytest.raises(ReviewError, match="unit id"):
        ReviewJob("../A", ex.folder, tmp_path / "job", _settings(models_dir, tmp_path))
    assert default_version("LL-1", 1_790_000_000.0) == "head-LL-1-20260921T141320"


# -- the trap side: a head shipped in the active pack is used ---------------------------------


def _head(models_dir: Path, p_empty: float, sha: str | None = None) -> SiteHead:
    """A head that gives every frame the same P(empty): what the tests below need to see
    which head the pipeline loaded (a trained one is exercised end to end further down)."""
    dims = 1024
    logit = float(np.log(p_empty / (1 - p_empty)))
    emb_sha = sha or sha256_file(models_dir / f"{EMBEDDER}.tflite")
    return SiteHead(np.zeros((dims, 2), np.float32), np.array([logit, 0.0], np.float32),
                    np.zeros(dims, np.float32), ("empty", "animal"), 0.5,
                    {"embedding": {"card": EMBEDDER, "sha256": emb_sha, "dims": dims}})


@pytest.mark.models
def test_a_head_in_the_active_pack_is_used_unless_the_config_names_one(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    priv, pub = pack_build.keygen(tmp_path / "fleet.key")
    key = decode_public_key(pub.read_text())
    root = tmp_path / "models"
    root.mkdir()
    (root / f"{EMBEDDER}.tflite").symlink_to(models_dir / f"{EMBEDDER}.tflite")
    heads = tmp_path / "heads"
    heads.mkdir()
    save_head(_head(models_dir, 0.9), heads / "site.npz")
    save_head(_head(models_dir, 0.2), heads / "config-head.npz")
    save_head(_head(models_dir, 0.9, sha="0" * 64), heads / "foreign.npz")
    for version, head in (("p1", None), ("p2", heads / "site.npz"),
                          ("p3", heads / "foreign.npz")):
        pack_build.build(priv, models_dir, [DET], tmp_path / f"{version}.pack",
                         version=version, head=head)
    frame = cameratrapai_dir / "blank.jpg"
    cfg = DetectorConfig(detector=DET, classifier="", num_threads=1)

    packs.install(tmp_path / "p1.pack", root, key)  # a pack without a head changes nothing
    assert pack_head(root) == ""
    with Pipeline(cfg, root) as p:
        assert p.head is None
        assert p.embedder is None  # and costs no embedding
        assert p.analyse(frame).empty_prob is None

    packs.install(tmp_path / "p2.pack", root, key)
    assert pack_head(root) == "site.npz"
    with Pipeline(cfg, root) as p:
        assert p.head is not None
        assert p.head.path == root / "current" / "site.npz"
        r = p.analyse(frame)
        assert r.empty_prob == pytest.approx(0.9, abs=1e-4)
        assert r.head_empty is True
    # detector.head still wins.
    with Pipeline(DetectorConfig(detector=DET, classifier="", num_threads=1,
                                 head=str(heads / "config-head.npz")), root) as p:
        assert p.head is not None
        assert p.head.path == heads / "config-head.npz"
        assert p.analyse(frame).empty_prob == pytest.approx(0.2, abs=1e-4)
    # A folder that *is* a pack (the installer's self-test, models pack's record) runs no head.
    assert pack_head(root / "packs" / "p2") == ""
    with Pipeline(cfg, root / "packs" / "p2") as p:
        assert p.head is None

    # A pack whose head does not fit the unit's embedding model stops the pipeline loading,
    # naming the head: on trial, the daemon's start then rolls the pack back.
    packs.install(tmp_path / "p3.pack", root, key)
    with pytest.raises(ModelError, match=r"current/foreign.npz.*retrain it"):
        Pipeline(cfg, root)


# -- the whole loop ----------------------------------------------------------------------------


def _unit_config(tmp: Path, port: int, images: Path, pub: str) -> Path:
    cfg = tmp / "camtrap.toml"
    cfg.write_text(f"""
[unit]
id = "{UNIT}"
[hardware]
backend = "sim"
[trigger]
sim_every_s = 2.0
holdoff_s = 1.5
debounce_s = 0.02
sample_rate_hz = 50.0
[camera]
source = "replay"
images_dir = "{images}"
burst_frames = 2
burst_interval_s = 0.05
[policy]
audit_every = 0
[storage]
root = "{tmp / 'data'}"
[detector]
models_dir = "{tmp / 'models'}"
detector = "{DET}"
classifier = ""
pack_public_key = "{pub}"
[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
reconnect_min_s = 1.0
reconnect_max_s = 2.0
""")
    return cfg


class Daemon:
    """``camtrap run`` as systemd runs it, its output in one log file."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg, self.log = cfg, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start it; returns the log offset from which its output starts."""
        seen = len(self.text())
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--config",
                                          str(self.cfg)], stdout=f, stderr=subprocess.STDOUT,
                                         cwd=REPO)
        return seen

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, after: int, timeout_s: float = 60.0) -> str:
        """The first log line holding ``text`` after offset ``after``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.text()[after:].splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the daemon's log:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.mark.models
@pytest.mark.broker
def test_labels_at_the_station_become_the_units_site_head(
        tmp_path: Path, broker: Any, models_dir: Path, field_dir: Path) -> None:
    port = broker.port
    priv, pub = pack_build.keygen(tmp_path / "fleet.key")
    # The unit: pack v1 (the detector alone) installed, the embedding model beside it, a
    # camera that keeps seeing an animal the detector misses.
    unit = tmp_path / "unit"
    (unit / "models").mkdir(parents=True)
    (unit / "models" / f"{EMBEDDER}.tflite").symlink_to(models_dir / f"{EMBEDDER}.tflite")
    pack_build.build(priv, models_dir, [DET], tmp_path / "v1.pack", version="v1")
    packs.install(tmp_path / "v1.pack", unit / "models", decode_public_key(pub.read_text()))
    images = unit / "camera"
    images.mkdir()
    shutil.copyfile(field_dir / SITE.format(HELD_OUT_ANIMAL), images / "frame.jpg")
    daemon = Daemon(_unit_config(unit, port, images, pub.read_text().strip()),
                    tmp_path / "daemon.log")
    t0 = time.monotonic()
    at = daemon.start()
    try:
        daemon.wait_log("MQTT: connected", at)
        before = daemon.wait_log("edge_app.trap.daemon: trigger ", at)
        assert ": discard empty" in before, before  # no head: the animal is thrown away

        # The station: the unit's keep frames, labelled by rangers through the review API.
        truth = stock_site(tmp_path / "station", field_dir, RANGER_LABELS)
        with ReviewStore(tmp_path / "station") as rs:
            while q := rs.queue(UNIT, limit=5):
                for f in q:
                    rs.label(UNIT, f.media_id, truth[f.media_id], "olga", time.time())
            assert rs.counts(UNIT)["trainable"] is True
            ex = rs.export_csv(UNIT, tmp_path / "review" / "export")
        assert ex.counts == {"empty": 7, "animal": 9, "person": 1}

        # Train: the figures come first, and nothing has gone to the unit yet.
        job = ReviewJob(UNIT, ex.folder, tmp_path / "review" / "job", JobSettings(
            models=models_dir, key=priv, cards=(DET,), broker=f"127.0.0.1:{port}",
            answer_s=30))
        t1 = time.monotonic()
        training = job.train()
        t_train = time.monotonic() - t1
        fig = training.figures
        assert (fig.frames, fig.counts) == (17, {"empty": 7, "animal": 9, "person": 1,
                                                 "vehicle": 0})
        assert fig.animals_kept is not None
        assert fig.animals_kept >= 0.9
        assert fig.empties_called_empty is not None
        assert fig.empties_called_empty > 0.5
        assert training.previous is None
        shown = training.to_json()
        assert shown["after"]["animals_kept"] == fig.animals_kept
        assert shown["before"] is None
        assert job.training() == training  # a page that reloads finds the same figures
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        assert pack_state(unit / "models")["active"] == "v1"

        # Send: a signed pack with the head whose figures were shown (not another ranger's
        # newer one), pushed through the broker to the running unit.
        with pytest.raises(ReviewError, match="trained again since") as e:
            job.send("v2", head_sha256="0" * 64)
        assert e.value.kind == "state"
        assert shown["head_sha256"] == training.head_sha256
        t1 = time.monotonic()
        sent = job.send("v2", head_sha256=shown["head_sha256"])
        t_send = time.monotonic() - t1
        assert (sent.version, sent.previous) == ("v2", "v1")
        assert sent.sent == sent.chunks > 1
        assert daemon.proc.wait(60) == EXIT_RESTART
        assert pack_state(unit / "models") == {"active": "v2", "previous": "v1",
                                               "on_trial": True}
        assert (unit / "models" / "current" / f"site-head-{UNIT}.npz").read_bytes() == \
            training.head.read_bytes()
        assert job.training() is None  # sent: the next round starts from new labels

        # systemd starts it again: the same camera frame is now kept, by the head.
        at = daemon.start()
        loaded = daemon.wait_log("site head", at)
        assert "shipped in the active model pack" in loaded, loaded
        after = daemon.wait_log("edge_app.trap.daemon: trigger ", at)
        assert ": keep empty" in after, after
        assert "kept by head" in after, after
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    print(f"\nreview loop: train {t_train:.1f} s, send {t_send:.1f} s, "
          f"whole {time.monotonic() - t0:.1f} s")
