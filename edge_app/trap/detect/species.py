"""Species the park has: a leopard or tiger is named only when its size and its cat evidence
both fit (issue 13, item 4).

The crop classifier is an ImageNet MobileNetV2. It knows no Amur leopard cat (*Prionailurus
bengalensis euptilurus*), the small spotted cat on the same trails as the Amur leopard, so a
small spotted cat lands on the nearest spotted classes it has: ``leopard``, ``jaguar``,
``cheetah``. The card sums those four (with ``snow leopard``) into ``leopard``, and measured
on every image we have (14 cameratrapai + 119 field frames, the three detector cards, default
thresholds) that named two wild small spotted cats leopard: the night ocelot and the zamba
serval. The 22 field frames labelled leopard are all jaguars (there is no Amur leopard or
tiger in our images, so tiger recall cannot be measured at all).

Figures (P = leopard + jaguar + snow leopard, C = cheetah; box height and area as fractions
of the frame's; yolov8n 640 / SSD 256 / yolov8n 320):

* ocelot: no box with any detector (whole-frame pass), P .43-.48, C .12-.15. Mirrored or
  cropped by 10 %, its whole frame gives P up to .79: the jaguars' whole frames give P
  .53-.95, so without a box the evidence cannot tell the two apart.
* serval: whole frame with 640 (P .49, C .17); a box with SSD (h .30, area .13, P .21,
  C .58) and 320 (h .30, area .13, P .36, C .42): close to the lens it is as big as a distant
  jaguar, but the evidence goes to the cheetah.
* jaguars in boxes (32 crops over the three cards): h .16-.99, area .027-.96; P ≥ C in all
  but one (640's RL_1: P .30, C .60), P .45-.96 in the others.

Hence the rules, in order, for a ``leopard`` or ``tiger`` the card's sums proposed:

1. **Domestic cat or lynx evidence at least as strong as the target's** (``tabby``, ``tiger
   cat``, ``Egyptian cat``, ``Persian cat``, ``Siamese cat``, ``lynx`` against P + C, or
   against ``tiger``): never a target. It becomes ``other_big_cat`` when lynx outweighs the
   domestic classes (a Eurasian lynx), else a plain ``animal`` (the card names no domestic
   cat).
2. **No box** (the classifier looked at the whole frame): size unknown, so ``other_big_cat``.
3. **A box smaller than a leopard at trap distance**: height below ``target_min_height``
   (0.12) or area below ``target_min_area`` (0.015): ``other_big_cat``. A leopard cat is
   about 40 % of a leopard's length and height, so where the smallest jaguar box (h .16) was,
   a leopard cat would be about .07 high; the defaults sit 1.3× (height) and 1.8× (area)
   below the smallest jaguar box. A camera set far from the trail may need them lower: they
   are config keys. A leopard cat right in front of the lens is as big as a leopard further
   away: size is only a guard.
4. **Cheetah-dominated spotted evidence** (C > P, leopard only): ``other_big_cat``. There are
   no cheetahs in Primorye; on our images this is where a slender small spotted cat goes
   (the serval in a box, both cards), while 31 of 32 jaguar crops have P ≥ C.

The detector's box confidence is not used: the jaguars' boxes scored 0.25-0.94 under COCO
names (giraffe, bear, zebra, sheep, even person), so it says nothing about species.

Effect (false leopard alerts; jaguars named leopard, of 22): yolov8n 640 (default) 2 → 0;
14 → 10 (its three whole-frame jaguars and RL_1). SSD 256: 2 → 0; 14 → 14. yolov8n 320:
2 → 0; 12 → 7 (five whole-frame jaguars). False tiger: 0 before and after. A demoted jaguar
is ``other_big_cat``: still kept, never discarded, only not alerted.

Everything here only *demotes* (a target → ``other_big_cat`` or ``animal``): it can cost a
leopard alert, never create one, and it never makes a trigger discardable: the classifier's
raw sums still go into ``max_scores``. A detector card that names species itself (none of
ours does) is not judged here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_app.core.events import Species

EVIDENCE_CLASSES: Mapping[str, tuple[str, ...]] = {
    "panthera": ("leopard", "jaguar", "snow leopard"),
    "cheetah": ("cheetah",),
    "tiger": ("tiger",),
    "lynx": ("lynx",),
    "domestic": ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"),
}
"""Evidence group → the ImageNet classes (first name of a label line) that vote for it."""

TARGETS: tuple[Species, ...] = ("leopard", "tiger")
"""The species that raise an alert by default, and so the ones this module guards."""

DEFAULT_MIN_HEIGHT = 0.12
"""Box height / frame height below which a spotted or striped cat is too small for a target."""
DEFAULT_MIN_AREA = 0.015
"""Box area / frame area below which a spotted or striped cat is too small for a target."""

Box = tuple[float, float, float, float]
"""A normalised box (x, y, width, height), as in :class:`edge_app.core.events.Detection`."""


@dataclass(frozen=True, slots=True)
class CatEvidence:
    """The classifier's summed probability per evidence group of one pass."""

    panthera: float = 0.0
    cheetah: float = 0.0
    tiger: float = 0.0
    lynx: float = 0.0
    domestic: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeciesRule:
    """The size limits of rule 3 (``detector.target_min_height`` / ``target_min_area``)."""

    min_height: float = DEFAULT_MIN_HEIGHT
    min_area: float = DEFAULT_MIN_AREA


def evidence_indices(names: Sequence[str]) -> dict[str, NDArray[np.intp]]:
    """Evidence group → indices of its classes in a classifier's short label names.

    Classes a classifier does not have are left out (an empty group always sums 0).
    """
    where = {n: i for i, n in enumerate(names)}
    return {g: np.array([where[c] for c in classes if c in where], np.intp)
            for g, classes in EVIDENCE_CLASSES.items()}


def evidence(probs: NDArray[np.float32], groups: Mapping[str, NDArray[np.intp]]) -> CatEvidence:
    """One pass's :class:`CatEvidence` from its class probabilities."""
    def s(g: str) -> float:
        idx = groups.get(g)
        return float(probs[idx].sum()) if idx is not None and idx.size else 0.0

    return CatEvidence(s("panthera"), s("cheetah"), s("tiger"), s("lynx"), s("domestic"))


def _ok(x: float) -> bool:
    return math.isfinite(x) and x >= 0.0


def too_small(box: Box, rule: SpeciesRule) -> bool:
    """True when the box is smaller than a target at trap distance (or is not a real box)."""
    _, _, w, h = box
    if not (_ok(w) and _ok(h)):
        return True
    w, h = min(w, 1.0), min(h, 1.0)
    return h < rule.min_height or w * h < rule.min_area


def judge(species: Species | None, conf: float, ev: CatEvidence, box: Box | None,
          rule: SpeciesRule) -> tuple[Species | None, float]:
    """The species to report for one classifier pass, and its confidence.

    Args:
        species: what the card's summed groups proposed (None: nothing cleared a threshold).
        conf: its summed probability.
        ev: the pass's cat evidence.
        box: the detector box the crop came from, None for a whole-frame pass.
        rule: the size limits.

    Returns:
        ``species`` unchanged unless it is a target that fails a rule of the module
        docstring; then ``other_big_cat`` with the same confidence, or ``None`` (a plain
        animal) for a domestic cat.
    """
    if species not in TARGETS:
        return species, conf
    leopard = species == "leopard"
    target = ev.panthera + ev.cheetah if leopard else ev.tiger
    rival = ev.lynx + ev.domestic
    if not (_ok(target) and _ok(rival)) or rival >= target:  # rule 1
        if _ok(ev.lynx) and _ok(ev.domestic) and ev.domestic > ev.lynx:
            return None, 0.0
        return "other_big_cat", conf
    if box is None or too_small(box, rule):  # rules 2 and 3
        return "other_big_cat", conf
    if leopard and ev.cheetah > ev.panthera:  # rule 4
        return "other_big_cat", conf
    return species, conf
