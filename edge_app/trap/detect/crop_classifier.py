"""The crop classifier: which species is in a detector box (or the whole frame).

Apart from the pipeline because naming a species is its own policy — per-species thresholds
on summed class probabilities, then the species rule that keeps a small or village cat from
raising a leopard alert (:mod:`edge_app.trap.detect.species`) — and the second look names
species in what it finds through the same door.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.core.events import SPECIES, Species
from edge_app.trap.detect import decoders
from edge_app.trap.detect.heads import check_classifier
from edge_app.trap.detect.loader import LoadedModel, load_model
from edge_app.trap.detect.preprocess import crop_resized
from edge_app.trap.detect.species import SpeciesRule, evidence, evidence_indices, judge

WholeFrame = Callable[[Image.Image, tuple[int, int]], NDArray[np.uint8]]
"""The pipeline's whole frame stretched to a size (shared with the embedding model)."""


@dataclass(slots=True)
class SpeciesVerdict:
    """The best species verdict of one classifier pass.

    Attributes:
        species: the species named, or None.
        conf: its summed probability (0 when none is named).
        sums: every species' summed probability (SPECIES order), raw: for ``max_scores``.
        top_class: the classifier's likeliest class within the named species.
    """

    species: Species | None
    conf: float
    sums: NDArray[np.float32]
    top_class: str = ""


class CropClassifier:
    """One classifier model and its species evidence groups."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._groups = evidence_indices(model.classes.names)

    @classmethod
    def load(cls, name: str, models_dir: Path, threads: int) -> CropClassifier:
        """Load and check a classifier card.

        Raises:
            ModelError: the card or file is bad, or its output does not fit its labels.
        """
        m = load_model(name, models_dir, threads, "classifier")
        try:
            check_classifier(m)
        except ModelError:
            m.model.close()
            raise
        return cls(m)

    def close(self) -> None:
        """Release the interpreter."""
        self.model.model.close()

    def classify(self, image: Image.Image, bbox: tuple[float, float, float, float] | None,
                 thresholds: NDArray[np.float32], cfg: DetectorConfig,
                 whole_frame: WholeFrame) -> SpeciesVerdict:
        """Classifier pass on a box crop (with context) or on the whole frame.

        The named species is the likeliest of those whose summed probability clears its own
        threshold (``thresholds``, SPECIES order), so a stricter tiger threshold does not
        hide a leopard that clears its own. A leopard or tiger must then pass the species
        rule (:mod:`edge_app.trap.detect.species`): a small, boxless or cat-of-the-village
        crop is demoted to ``other_big_cat`` or a plain animal; ``sums`` stay raw.
        """
        clf = self.model
        spec = clf.card.input
        size = (spec.width, spec.height)
        pixels = (whole_frame(image, size) if bbox is None
                  else crop_resized(image, bbox, cfg.crop_context, size))
        clf.model.set_image(pixels, bgr=spec.colour_order == "BGR")
        probs = decoders.decode_classifier(clf.model.invoke()[0],
                                           bool(clf.card.output.params.get("softmax", False)))
        sums = clf.classes.species_sum(probs)
        passing = np.where((sums >= thresholds) & (sums > 0.0), sums, -1.0)
        j = int(np.argmax(passing))
        if passing[j] < 0.0:
            return SpeciesVerdict(None, 0.0, sums)
        idx = clf.classes.species_classes[j]
        top = clf.classes.names[int(idx[int(np.argmax(probs[idx]))])]
        rule = SpeciesRule(cfg.target_min_height, cfg.target_min_area)
        named, conf = judge(SPECIES[j], float(sums[j]), evidence(probs, self._groups),
                            bbox, rule)
        if named is None:
            return SpeciesVerdict(None, 0.0, sums)
        return SpeciesVerdict(named, conf, sums, top)
