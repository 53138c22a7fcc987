"""decide(): the burst vote and the alert / keep / discard rule of ARCHITECTURE §4."""

from __future__ import annotations

import pytest

from edge_app.core.config import PolicyConfig
from edge_app.core.events import CATEGORIES, SPECIES, Detection, FrameResult
from edge_app.trap.detect.policy import (
    VOTES,
    Evidence,
    decide,
    make_vote_k_of_n,
    vote_for,
    vote_max,
    vote_mean,
)

POLICY = PolicyConfig()  # alert on leopard, tiger, person, vehicle; empty below 0.15
BOX = (0.1, 0.1, 0.2, 0.2)


def raw(**scores: float) -> dict[str, float]:
    """max_scores with every key present (0 unless given)."""
    out = dict.fromkeys((*CATEGORIES, *SPECIES), 0.0)
    out.update(scores)
    return out


def frame(*dets: Detection, **scores: float) -> FrameResult:
    """A frame result as the pipeline builds it: label/species/score from the boxes."""
    ordered = tuple(sorted(dets, key=lambda d: -d.conf))
    named = [d for d in ordered if d.species]
    species = max(named, key=lambda d: d.species_conf or 0).species if named else None
    score = (max(d.species_conf or 0 for d in named) if named
             else ordered[0].conf if ordered else 0.0)
    mx = raw(**scores)
    for d in ordered:
        mx[d.category] = max(mx[d.category], d.conf)
        if d.species:
            mx[d.species] = max(mx[d.species], d.species_conf or 0)
    return FrameResult(ordered[0].category if ordered else "empty", species, score, ordered, mx)


def det(category: str, conf: float, species: str | None = None,
        species_conf: float | None = None) -> Detection:
    return Detection(category, conf, BOX, "x", species, species_conf)  # type: ignore[arg-type]


def test_confidently_empty_burst_is_discarded() -> None:
    v = decide([frame(animal=0.01), frame(person=0.12), frame()], POLICY)
    assert (v.outcome, v.label, v.species, v.score) == ("discard", "empty", None, 0.0)
    assert v.best_index == 1  # the "least empty" frame, for the audit sample
    assert "below" in v.reason


def test_one_unsure_score_keeps_the_trigger() -> None:
    v = decide([frame(), frame(animal=0.2), frame()], POLICY)
    assert (v.outcome, v.label) == ("keep", "empty")
    assert v.best_index == 1
    assert "animal" in v.reason


def test_species_score_below_empty_threshold_matters_too() -> None:
    assert decide([frame(leopard=0.16)], POLICY).outcome == "keep"


def test_undecodable_frame_is_never_evidence_of_emptiness() -> None:
    v = decide([frame(), None, frame()], POLICY)
    assert v.outcome == "keep"
    assert "could not be decoded" in v.reason
    assert v.results[1] is None
    assert len(v.results) == 3


def test_no_frame_analysed_is_kept() -> None:
    for results in ([None, None], []):
        v = decide(results, POLICY)
        assert (v.outcome, v.label, v.best_index) == ("keep", "empty", -1)


def test_frame_without_raw_scores_cannot_prove_emptiness() -> None:
    v = decide([FrameResult("empty", None, 0.0, ())], POLICY)
    assert v.outcome == "keep"


def test_person_alerts_with_best_frame() -> None:
    v = decide([frame(det("person", 0.4)), frame(det("person", 0.7)), None], POLICY)
    assert (v.outcome, v.label, v.score, v.best_index) == ("alert", "person", 0.7, 1)


def test_vehicle_alerts() -> None:
    v = decide([frame(det("vehicle", 0.5))], POLICY)
    assert (v.outcome, v.label) == ("alert", "vehicle")


def test_plain_animal_is_kept_not_alerted() -> None:
    v = decide([frame(det("animal", 0.3)), frame(det("animal", 0.8)), frame()], POLICY)
    assert (v.outcome, v.label, v.species, v.score, v.best_index) == (
        "keep", "animal", None, 0.8, 1)


def test_animal_alerts_when_on_the_list() -> None:
    policy = PolicyConfig(alert_on=["animal"])
    assert decide([frame(det("animal", 0.3))], policy).outcome == "alert"


def test_leopard_species_alerts_as_animal() -> None:
    v = decide([frame(det("animal", 0.9, "leopard", 0.4)),
                frame(det("animal", 0.5, "leopard", 0.8))], POLICY)
    assert (v.outcome, v.label, v.species) == ("alert", "animal", "leopard")
    assert v.score == 0.8
    assert v.best_index == 1


def test_species_without_animal_box_counts_as_animal() -> None:
    """A whole-frame classifier verdict (no detector box) is still an animal."""
    r = FrameResult("empty", "tiger", 0.6, (), raw(tiger=0.6))
    v = decide([r], POLICY)
    assert (v.outcome, v.label, v.species, v.score) == ("alert", "animal", "tiger", 0.6)


def test_other_big_cat_is_kept_with_its_species() -> None:
    v = decide([frame(det("animal", 0.7, "other_big_cat", 0.6))], POLICY)
    assert (v.outcome, v.label, v.species) == ("keep", "animal", "other_big_cat")
    v = decide([frame(det("animal", 0.7, "other_big_cat", 0.6))],
               PolicyConfig(alert_on=["other_big_cat"]))
    assert v.outcome == "alert"


def test_alerting_category_wins_the_label() -> None:
    """A person beside a more confident dog: the alert must say person."""
    v = decide([frame(det("animal", 0.9), det("person", 0.6))], POLICY)
    assert (v.outcome, v.label, v.score) == ("alert", "person", 0.6)
    v = decide([frame(det("animal", 0.9), det("person", 0.6))], PolicyConfig(alert_on=[]))
    assert (v.outcome, v.label, v.score) == ("keep", "animal", 0.9)


def test_alerting_species_beats_a_more_confident_quiet_one() -> None:
    v = decide([frame(det("animal", 0.9, "other_big_cat", 0.7)),
                frame(det("animal", 0.8, "leopard", 0.5))], POLICY)
    assert (v.outcome, v.species, v.best_index) == ("alert", "leopard", 1)


def test_vote_max_and_registry() -> None:
    votes = vote_max([frame(det("animal", 0.3)), None, frame(det("animal", 0.3)),
                      frame(det("person", 0.5))])
    assert votes["animal"].frame == 0  # earliest frame wins a tie
    assert votes["person"].score == 0.5
    assert votes["person"].frame == 3
    assert vote_for(PolicyConfig()) is vote_max
    assert set(VOTES) == {"max", "mean", "k_of_n"}


def test_vote_mean_counts_missing_as_zero_and_skips_unread_frames() -> None:
    votes = vote_mean([frame(det("person", 0.9)), frame(), None, frame(det("person", 0.3))])
    assert votes["person"].score == pytest.approx(0.4)  # (0.9 + 0 + 0.3) / 3 analysed
    assert votes["person"].frame == 0  # still the best frame's boxes


def test_vote_k_of_n_needs_k_frames() -> None:
    vote = make_vote_k_of_n(2)
    one = vote([frame(det("person", 0.9)), frame(), frame()])
    assert "person" not in one  # a single frame's person is not enough
    two = vote([frame(det("person", 0.9)), frame(det("person", 0.4)), frame()])
    assert two["person"] == Evidence(0.4, 0)  # k-th best score, best frame
    short = vote([frame(det("person", 0.7)), None, None])  # only one frame was read
    assert short["person"].score == 0.7
    with pytest.raises(ValueError, match="k must be"):
        make_vote_k_of_n(0)


def test_policy_vote_drives_decide() -> None:
    burst = [frame(det("person", 0.8)), frame(), frame()]
    assert decide(burst, PolicyConfig()).outcome == "alert"
    k2 = decide(burst, PolicyConfig(vote="k_of_n", vote_k=2))
    # One frame of three saw a person: not an alert under 2-of-n, but never discarded.
    assert (k2.outcome, k2.label) == ("keep", "empty")
    mean = decide(burst, PolicyConfig(vote="mean"))
    assert (mean.outcome, mean.label) == ("alert", "person")
    assert mean.score == pytest.approx(0.8 / 3)


@pytest.mark.parametrize("vote", ["max", "mean", "k_of_n"])
def test_no_vote_turns_a_detection_into_a_discard(vote: str) -> None:
    for burst in ([frame(det("animal", 0.3)), frame(), frame()],
                  [frame(det("animal", 0.9, "leopard", 0.4)), frame(), None]):
        v = decide(burst, PolicyConfig(vote=vote, vote_k=3))
        assert v.outcome != "discard", (vote, v)
