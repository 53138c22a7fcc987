"""The ``nearest_empty`` site head (edge_app/tools/nearest_head.py and its file format in
edge_app/trap/detect/site_head.py): pure, on synthetic unit embeddings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edge_app.core.errors import ModelError
from edge_app.tools.head_training import LabelError, TrainingSet, train_head
from edge_app.tools.nearest_head import held_out_figures, train_nearest_empty
from edge_app.trap.detect.site_head import head_bytes, load_head, nearest_score, save_head

D = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def site(seed: int = 0) -> TrainingSet:
    """Empty frames near one scene vector, animal frames pushed away from it."""
    rng = np.random.default_rng(seed)
    scene = rng.normal(size=D)
    empties = scene + 0.15 * rng.normal(size=(8, D))
    animals = scene + 0.9 * rng.normal(size=(12, D))
    X = unit(np.vstack([empties, animals]))
    return TrainingSet(X, ("empty",) * 8 + ("animal",) * 12)


def test_the_head_calls_its_empties_empty_and_keeps_its_animals(tmp_path: Path) -> None:
    ts = site()
    head = train_nearest_empty(ts, target_recall=0.95, min_examples=5)
    assert head.kind == "nearest_empty"
    scores = np.array([head.empty_prob(x) for x in ts.X])
    assert (scores[:8] >= head.threshold).all()  # an empty is its own nearest empty
    kept = (scores[8:] < head.threshold).mean()
    assert kept >= 0.95
    # the file: version 2, float16 empties, the same verdicts after a round trip
    path = tmp_path / "h.npz"
    save_head(head, path)
    again = load_head(path)
    assert again.kind == "nearest_empty"
    assert again.meta["version"] == 2
    assert again.empties is not None
    assert again.empties.shape == (8, D)
    for x in ts.X:
        assert (again.empty_prob(x) >= again.threshold) == (head.empty_prob(x) >= head.threshold)


def test_held_out_figures_leave_whole_bursts_out() -> None:
    ts = site()
    # every empty in one burst: holding it out leaves no empty to compare with, so those
    # folds are skipped and no empty is scored
    one_burst = [0] * 8 + list(range(1, 13))
    f = held_out_figures(ts.X.astype(np.float64), ts.labels, one_burst, 0.95)
    assert f["empty_discarded"] is None
    assert f["bursts"] == 13
    # frames as their own bursts: each empty is judged against the other seven
    f = held_out_figures(ts.X.astype(np.float64), ts.labels, list(range(20)), 0.95)
    assert f["empty_discarded"] is not None
    assert f["empty_discarded"] > 0.5
    assert f["folds"] == 20


def test_nearest_score_is_bounded_and_neutral_without_empties() -> None:
    v = unit(np.ones((1, D)))[0]
    assert nearest_score(np.empty((0, D), np.float32), v) == 0.5
    assert nearest_score(v[None], v) == pytest.approx(1.0, abs=1e-6)
    assert nearest_score(-v[None], v) == pytest.approx(0.0, abs=1e-6)


def test_too_few_examples_and_bad_targets_are_refused() -> None:
    ts = site()
    with pytest.raises(LabelError, match="too few"):
        train_nearest_empty(TrainingSet(ts.X[:14], ts.labels[:14]), target_recall=0.95,
                            min_examples=8)
    with pytest.raises(LabelError, match="target recall"):
        train_nearest_empty(ts, target_recall=0.2, min_examples=5)


def _tampered(head_file: bytes, **meta_changes: object) -> bytes:
    with np.load(io.BytesIO(head_file)) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta.update(meta_changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_inconsistent_files_are_refused_and_old_heads_still_load(tmp_path: Path) -> None:
    ts = site()
    nearest = head_bytes(train_nearest_empty(ts, target_recall=0.95, min_examples=5))
    for changes, match in (({"kind": "whole_frame"}, "inconsistent head"),
                           ({"version": 1}, "inconsistent head"),
                           ({"version": 3}, "version 3")):
        p = tmp_path / "bad.npz"
        p.write_bytes(_tampered(nearest, **changes))
        with pytest.raises(ModelError, match=match):
            load_head(p)
    # a softmax head (version 1, no E array) is read exactly as before
    old = tmp_path / "old.npz"
    save_head(train_head(ts, min_examples=5), old)
    h = load_head(old)
    assert h.kind == "whole_frame"
    assert h.meta["version"] == 1
    assert h.empties is None
