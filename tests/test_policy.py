"""decide(): the burst vote and the alert / keep / discard rule of ARCHITECTURE §4."""

from __future__ import annotations

from edge_app.config import PolicyConfig
from edge_app.detect.policy import VOTES, decide, vote_max
from edge_app.events import CATEGORIES, SPECIES, Detection, FrameResult

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
    assert VOTES["max"] is vote_max
