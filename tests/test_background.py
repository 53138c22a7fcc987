"""The self-learned background: bounded, persisted, ageing set; its vote on real frames; and
the daemon's scheduled shots learning it end to end."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_app.core import config
from edge_app.core.clock import FakeClock
from edge_app.core.config import BackgroundConfig, DetectorConfig
from edge_app.trap.daemon import App
from edge_app.trap.detect.background import DB_NAME, BackgroundMemory
from edge_app.trap.detect.pipeline import Pipeline

DIMS = 64


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v)
    return out


def memory(root: Path, clock: FakeClock, sha: str = "a" * 64,
           **cfg: float | int) -> BackgroundMemory:
    m = BackgroundMemory(root, DIMS, sha, BackgroundConfig(enabled=True, **cfg), clock)
    m.open()
    return m


def test_abstains_until_it_knows_enough_scenes(tmp_path: Path) -> None:
    m = memory(tmp_path, FakeClock(), min_entries=2)
    assert m.similarity(unit(1)) is None
    assert m.is_known(None) is None
    assert m.add(unit(1), "shot")
    assert m.similarity(unit(1)) is None  # one scene: still abstains
    assert m.add(unit(2), "empty")
    assert m.similarity(unit(1)) == pytest.approx(1.0, abs=1e-3)
    assert m.is_known(m.similarity(unit(1))) is True
    assert m.is_known(m.similarity(unit(3))) is False  # a random direction: unlike both
    m.close()


def test_near_duplicates_refresh_and_the_set_is_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    m = memory(tmp_path, clock, min_entries=1, max_entries=3, dedupe_similarity=0.99)
    assert m.add(unit(1), "shot")
    noisy = unit(1) + 0.01 * unit(99)
    assert not m.add(noisy / np.linalg.norm(noisy), "empty")  # same scene: refreshed only
    assert len(m) == 1
    for seed in (2, 3, 4):  # 4 distinct scenes into 3 places: the oldest goes
        clock.advance(60)
        assert m.add(unit(seed), "shot")
    assert len(m) == 3
    assert (m.similarity(unit(1)) or 0.0) < 0.9
    assert m.similarity(unit(4)) == pytest.approx(1.0, abs=1e-3)
    m.close()
    disk = sum(p.stat().st_size for p in tmp_path.glob(DB_NAME + "*"))
    assert disk < 64 * 1024  # 3 scenes of 64 float16s, plus SQLite's pages


def test_persists_across_restarts_and_ages_out(tmp_path: Path) -> None:
    clock = FakeClock()
    m = memory(tmp_path, clock, min_entries=1, max_age_days=10)
    m.add(unit(1), "shot")
    clock.advance(5 * 86400)
    m.add(unit(2), "shot")
    m.close()
    again = memory(tmp_path, clock, min_entries=1, max_age_days=10)
    assert len(again) == 2
    assert again.similarity(unit(1)) == pytest.approx(1.0, abs=1e-3)  # float16 on disk
    clock.advance(6 * 86400)  # scene 1 is now 11 days old, scene 2 six
    again.close()
    aged = memory(tmp_path, clock, min_entries=1, max_age_days=10)
    assert len(aged) == 1
    assert (aged.similarity(unit(1)) or 0.0) < 0.9
    assert aged.stats() == {"scenes": 1, "active": True, "oldest_days": 6.0}
    clock.advance(5 * 86400)
    aged.add(unit(3), "shot")  # ageing also happens while running
    assert len(aged) == 1
    aged.close()
    # Vectors of another embedding model mean nothing here: they are dropped at open.
    other = memory(tmp_path, clock, sha="b" * 64, min_entries=1)
    assert len(other) == 0
    other.close()


# --------------------------------------------------------------------------- real frames


@pytest.mark.models
def test_background_vote_on_real_frames(models_dir: Path, cameratrapai_dir: Path,
                                        field_dir: Path, tmp_path: Path) -> None:
    """Learnt from one camera's empty daytime frames: the same scene is known, the same
    camera at night with an animal in front is not."""
    peru = field_dir / "animl-r"
    empties = [peru / f"examples__test_data__Peru__S90__SDZG_1__EK0000{n}.JPG"
               for n in (25, 26, 40, 41)]
    with Pipeline(DetectorConfig(), models_dir, embed=True) as p:
        emb = p.embedder
        assert emb is not None
        bg = BackgroundMemory(tmp_path, emb.dims, emb.sha256,
                              BackgroundConfig(enabled=True, min_entries=2), FakeClock())
        bg.open()
        p.background = bg
        for f in empties:
            r = p.analyse(f)
            assert r.background_sim is None or r.background_known is not None
            assert r.embedding is not None
            bg.add(r.embedding, "shot")
        same = p.analyse(peru / "examples__test_data__Peru__S90__SDZG_1__EK000042.JPG")
        night = p.analyse(peru / "examples__test_data__Peru__S90__SDZG_1__EK000031.JPG")
        bg.close()
    assert len(bg) >= 2
    assert same.background_known is True
    assert same.background_sim is not None
    assert same.background_sim > 0.9
    assert night.background_known is False
    assert night.background_sim is not None
    assert night.background_sim < 0.7


# --------------------------------------------------------------------------- the daemon


@pytest.fixture
def blanks(cameratrapai_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "blanks"
    d.mkdir()
    for name in ("blank.jpg", "blank2.jpg"):
        shutil.copy(cameratrapai_dir / name, d / name)
    return d


def trap(root: Path, images: Path, **background: object) -> config.Config:
    return config.parse({
        "unit": {"id": "BG-1"},
        "hardware": {"backend": "sim"},
        "camera": {"source": "replay", "images_dir": str(images), "burst_frames": 1},
        "storage": {"root": str(root)},
        "mqtt": {"enabled": False},
        "background": {"enabled": True, **background},
    })


@pytest.fixture
def app_factory(models_dir: Path) -> Iterator[list[App]]:
    apps: list[App] = []
    yield apps
    for a in apps:
        a.stop(5.0)


@pytest.mark.models
def test_scheduled_shots_teach_the_background_and_survive_a_restart(
        models_dir: Path, blanks: Path, tmp_path: Path, app_factory: list[App]) -> None:
    root = tmp_path / "root"
    cfg = trap(root, blanks, shot_every_s=0.1, shots_in_sim=True, min_entries=1)
    app = App(cfg, models_dir)
    app_factory.append(app)
    assert "background-shots" in [w.name for w in app.supervisor.workers]
    app.start()
    deadline = time.monotonic() + 20
    while app.counters.background_shots < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    app.stop(5.0)
    app_factory.remove(app)
    c = app.counters
    assert c.background_shots >= 3
    assert 1 <= c.background_learnt <= 2  # two distinct blanks; repeats only refresh
    assert c.triggers == c.kept == c.empty == 0  # shots are not triggers: nothing stored
    assert (root / DB_NAME).is_file()
    assert app.stats_extra()["background"]["scenes"] == c.background_learnt

    # A restart finds the scenes on the card; in sim, shots are off unless asked for.
    again = App(trap(root, blanks, shot_every_s=0.1, min_entries=1), models_dir)
    app_factory.append(again)
    assert "background-shots" not in [w.name for w in again.supervisor.workers]
    assert again.background is not None
    assert len(again.background) == c.background_learnt


def test_background_needs_an_embedder(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"background\.enabled: needs detector\.embedder"):
        config.parse({"unit": {"id": "X"}, "detector": {"embedder": ""},
                      "background": {"enabled": True}})
    with pytest.raises(config.ConfigError, match=r"detector\.head: needs detector\.embedder"):
        config.parse({"unit": {"id": "X"}, "detector": {"embedder": "", "head": "h.npz"}})
