"""Burst vote and decision: a trigger's frame results → alert, keep or discard.

ARCHITECTURE §4: the stand-in models miss about a third of real animals, so ``discard`` must
be a *confident* verdict. A trigger is discarded only when *every stage* agrees it is empty
(:func:`stage_votes`): every frame was analysed, every raw score of every frame
(``FrameResult.max_scores``, which includes scores far below the detection threshold) stays
under ``policy.empty_below`` (detector and classifier), and — when they are on — the site
head says empty, the frame looks like a known empty scene (self-learned background), and the
motion gate saw no large change. Anything else that found nothing is ``keep``: stored
locally, never silently dropped, and the verdict's ``kept_by`` names the stages that kept it.

Two choices beyond the plain rule, both on the side of not losing an event:

* A frame that could not be decoded (``None``) is never evidence of emptiness, and it also
  blocks a discard: the frame we could not read may be the one with the animal in it.
* The label of an alerting trigger is the best *alerting* category: a person at 0.6 next to a
  dog at 0.9 is reported as ``person`` (with ``alert_on`` = person), not as ``animal``.

The vote is a function (:data:`Vote`): :func:`vote_max` (default), :func:`vote_mean` and
:func:`make_vote_k_of_n`, chosen by ``policy.vote``. Whatever the vote, it decides only the
*label* and *alert*: emptiness is judged on the raw scores of every frame, so a stricter vote
can turn an alert into a keep but never a detection into a discard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_app.core.config import PolicyConfig
from edge_app.core.events import CATEGORIES, SPECIES, FrameResult, Label, Outcome, Species, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The burst's score for one category or species, and the frame it came from."""

    score: float
    frame: int


Vote = Callable[[Sequence[FrameResult | None]], dict[str, Evidence]]
"""Frames → per category/species evidence (only for keys something was detected for)."""


def frame_evidence(r: FrameResult) -> dict[str, float]:
    """One frame's above-threshold scores: best box per category, best species confidence."""
    ev: dict[str, float] = {}
    for d in r.detections:
        ev[d.category] = max(ev.get(d.category, 0.0), d.conf)
        if d.species is not None:
            ev[d.species] = max(ev.get(d.species, 0.0), d.species_conf or 0.0)
    # A result without boxes but with a label (e.g. built by another stage) still counts.
    if r.label != "empty" and r.label not in ev:
        ev[r.label] = r.score
    if r.species is not None and r.species not in ev:
        ev[r.species] = r.score
    return ev


def vote_max(results: Sequence[FrameResult | None]) -> dict[str, Evidence]:
    """Max per key over the burst (the earliest frame wins a tie).

    Max is the right first vote for a trap: one clear frame of a leopard walking through the
    edge of the field of view is enough.
    """
    best: dict[str, Evidence] = {}
    for i, r in enumerate(results):
        if r is None:
            continue
        for key, score in frame_evidence(r).items():
            if key not in best or score > best[key].score:
                best[key] = Evidence(score, i)
    return best


def _per_key_scores(results: Sequence[FrameResult | None]) -> tuple[dict[str, list[float]], int]:
    """Key → one score per *analysed* frame (0 where that frame did not detect it)."""
    analysed = [r for r in results if r is not None]
    scores: dict[str, list[float]] = {}
    for j, r in enumerate(analysed):
        for key, score in frame_evidence(r).items():
            scores.setdefault(key, [0.0] * len(analysed))[j] = score
    return scores, len(analysed)


def _frame_index(results: Sequence[FrameResult | None], analysed_index: int) -> int:
    """Position in the burst of the ``analysed_index``-th analysed frame."""
    return [i for i, r in enumerate(results) if r is not None][analysed_index]


def vote_mean(results: Sequence[FrameResult | None]) -> dict[str, Evidence]:
    """Mean per key over the analysed frames (a frame without the key counts 0).

    Damps a single-frame false positive (a sunlit branch called "person" once) at the price
    of also damping a leopard seen in one frame of three; the evidence frame is still the
    best one, so the event carries its boxes. Undecodable frames are left out of the mean:
    they are not evidence of absence.
    """
    scores, n = _per_key_scores(results)
    out: dict[str, Evidence] = {}
    for key, per in scores.items():
        best = max(range(n), key=lambda j: (per[j], -j))
        out[key] = Evidence(sum(per) / n, _frame_index(results, best))
    return out


def make_vote_k_of_n(k: int) -> Vote:
    """A vote where a key counts only when at least ``k`` analysed frames detected it.

    The key's score is the k-th best frame's score ("k frames agree at ≥ this"), and its
    frame the best one. ``k`` is capped at the number of analysed frames, so a burst cut
    short by a shutdown (or with undecodable frames) can still alert on what it did see.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")

    def vote_k_of_n(results: Sequence[FrameResult | None]) -> dict[str, Evidence]:
        scores, n = _per_key_scores(results)
        need = min(k, n)
        out: dict[str, Evidence] = {}
        for key, per in scores.items():
            ranked = sorted(range(n), key=lambda j: (-per[j], j))
            kth = per[ranked[need - 1]]
            if kth > 0.0:
                out[key] = Evidence(kth, _frame_index(results, ranked[0]))
        return out

    return vote_k_of_n


VOTES: dict[str, Callable[[PolicyConfig], Vote]] = {
    "max": lambda _p: vote_max,
    "mean": lambda _p: vote_mean,
    "k_of_n": lambda p: make_vote_k_of_n(p.vote_k),
}
"""``policy.vote`` → a factory of the vote (k-of-n reads ``policy.vote_k``)."""


def vote_for(policy: PolicyConfig) -> Vote:
    """The vote ``policy.vote`` names."""
    return VOTES[policy.vote](policy)

_AS_SPECIES: dict[str, Species] = {s: s for s in SPECIES}
_AS_LABEL: dict[str, Label] = {c: c for c in CATEGORIES}


def _top(keys: Sequence[str], votes: dict[str, Evidence]) -> str | None:
    present = [k for k in keys if k in votes]
    return max(present, key=lambda k: votes[k].score) if present else None


STAGES: tuple[str, ...] = ("detector", "classifier", "head", "background", "motion",
                           "unreadable")
"""Who can keep a trigger, in the order ``Verdict.kept_by`` lists them."""


def stage_votes(results: Sequence[FrameResult | None],
                policy: PolicyConfig) -> dict[str, tuple[int, str]]:
    """Every stage that says the burst is *not* empty: stage → (frame, why).

    The fusion rule of ARCHITECTURE §4: a trigger is discarded only when no stage keeps it.

    * ``detector``: a category's raw score (``max_scores``, below the box threshold too)
      reached ``policy.empty_below``; also a frame with no raw scores at all.
    * ``classifier``: a species' raw score (summed classifier probability) reached it.
    * ``head``: the site head's P(empty) stayed below its threshold (``head_empty`` False).
    * ``background``: the frame is unlike every known empty scene (``background_known``
      False).
    * ``motion``: with the motion gate on, at least ``policy.motion_keep_fraction`` of the
      frame changed against the pre-trigger frame.
    * ``unreadable``: a frame could not be decoded: it may be the one with the animal.

    A stage that did not look (no head, background still learning, gate off) abstains.
    For each stage the frame reported is the one with the strongest evidence.
    """
    below = policy.empty_below
    best: dict[str, tuple[float, int, str]] = {}

    def vote(stage: str, strength: float, frame: int, why: str) -> None:
        if stage not in best or strength > best[stage][0]:
            best[stage] = (strength, frame, why)

    species_keys = set(SPECIES)
    for i, r in enumerate(results):
        if r is None:
            vote("unreadable", 1.0, i, f"frame {i} could not be decoded")
            continue
        if not r.max_scores:
            vote("detector", 1.0, i, f"frame {i} has no raw scores to judge emptiness")
        for key, v in r.max_scores.items():
            if v >= below:
                vote("classifier" if key in species_keys else "detector", v, i,
                     f"nothing detected but {key} reached {v:.2f} (≥ empty_below "
                     f"{below:.2f}) in frame {i}")
        if r.head_empty is False and r.empty_prob is not None:
            vote("head", 1.0 - r.empty_prob, i,
                 f"the site head gives P(empty) {r.empty_prob:.2f}, below its threshold, "
                 f"in frame {i}")
        if r.background_known is False and r.background_sim is not None:
            vote("background", 1.0 - r.background_sim, i,
                 f"frame {i} is unlike every known empty scene (similarity "
                 f"{r.background_sim:.2f})")
        keep_at = policy.motion_keep_fraction
        if keep_at > 0 and r.motion is not None and r.motion >= keep_at:
            vote("motion", r.motion, i, f"{100 * r.motion:.1f} % of frame {i} changed "
                 f"against the pre-trigger frame (≥ motion_keep_fraction {keep_at:g})")
    return {st: (best[st][1], best[st][2]) for st in STAGES if st in best}


def _emptiness(results: Sequence[FrameResult | None],
               policy: PolicyConfig) -> tuple[bool, str, int, tuple[str, ...]]:
    """Is the burst confidently empty? (empty, reason, frame to keep, stages that kept it)."""
    below = policy.empty_below
    worst, worst_frame = -1.0, -1
    for i, r in enumerate(results):
        if r is None:
            continue
        for v in r.max_scores.values():
            if v > worst:
                worst, worst_frame = v, i
    votes = stage_votes(results, policy)
    if votes:
        first = next(iter(votes.values()))
        reason = "; ".join(why for _, why in votes.values())
        frame = worst_frame if "detector" in votes or "classifier" in votes else first[0]
        return False, reason, frame, tuple(votes)
    agreed = [f"every score below empty_below {below:.2f} (max {worst:.2f})"]
    analysed = [r for r in results if r is not None]
    if any(r.head_empty for r in analysed):
        p = min(r.empty_prob or 0.0 for r in analysed)
        agreed.append(f"the site head says empty (P(empty) ≥ {p:.2f})")
    if any(r.background_known for r in analysed):
        sim = min(r.background_sim or 0.0 for r in analysed)
        agreed.append(f"every frame looks like a known empty scene (similarity ≥ {sim:.2f})")
    return True, "; ".join(agreed), worst_frame, ()


def decide(results: Sequence[FrameResult | None], policy: PolicyConfig,
           vote: Vote | None = None) -> Verdict:
    """Decide what happens to one trigger.

    Args:
        results: one entry per burst frame, ``None`` where the frame could not be decoded.
        policy: alert list and emptiness threshold.
        vote: how frames are combined (default: the one ``policy.vote`` names).

    Returns:
        The verdict: ``alert`` when a category or species in ``policy.alert_on`` was detected
        (a named species also counts as ``animal``), ``discard`` only when the burst is
        confidently empty, else ``keep``.
    """
    frozen = tuple(results)
    if not frozen or all(r is None for r in frozen):
        return Verdict("keep", "empty", None, 0.0, -1, frozen,
                       "no frame could be analysed; kept, never dropped unseen",
                       ("unreadable",))
    votes = (vote or vote_for(policy))(frozen)
    alert_on = set(policy.alert_on)

    # Species first: a named species is an animal even if no frame's box said so.
    species_keys: list[str] = list(SPECIES)
    alerting_species = [s for s in species_keys if s in votes and s in alert_on]
    species_name = _top(alerting_species or species_keys, votes)
    species: Species | None = None
    if species_name is not None:
        species = _AS_SPECIES[species_name]
        if "animal" not in votes:
            votes["animal"] = votes[species_name]

    cats: list[str] = [c for c in CATEGORIES if c in votes]
    alerting = [c for c in cats if c in alert_on
                or (c == "animal" and species is not None and species in alert_on)]
    top = _top(alerting or cats, votes)
    if top is not None:
        label = _AS_LABEL[top]
        if label == "animal" and species is not None:
            ev = votes[species]
            what = f"{species} {ev.score:.2f}"
        else:
            ev = votes[label]
            what = f"{label} {ev.score:.2f}"
        outcome: Outcome = "alert" if alerting else "keep"
        reason = (f"{what} in frame {ev.frame} is on the alert list" if alerting
                  else f"{what} in frame {ev.frame}, not on the alert list")
        # Who else agreed it is not empty; a box always counts for its stage.
        kept = set(stage_votes(frozen, policy))
        kept.add("classifier" if species is not None and label == "animal"
                 and _whole_frame_only(frozen) else "detector")
        return Verdict(outcome, label, species, ev.score, ev.frame, frozen, reason,
                       tuple(st for st in STAGES if st in kept))

    empty, reason, frame, kept_by = _emptiness(frozen, policy)
    return Verdict("discard" if empty else "keep", "empty", None, 0.0, frame, frozen, reason,
                   kept_by)


def _whole_frame_only(results: Sequence[FrameResult | None]) -> bool:
    """True when every box of the burst is a whole-frame classifier verdict (no detector
    box): then the classifier, not the detector, is what kept the trigger."""
    boxes = [d for r in results if r is not None for d in r.detections]
    return bool(boxes) and all(d.bbox == (0.0, 0.0, 1.0, 1.0) for d in boxes)

