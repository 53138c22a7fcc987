"""Loading a model the way its card says: find the card, verify the sha256, load, check the fit.

Shared by the detector, the crop classifier and the embedder (and ``camtrap models verify``),
so every model is trusted on the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import (
    ClassMap,
    ModelCard,
    build_class_map,
    find_card,
    load_card,
    load_labels,
    verify_model_file,
)
from edge_app.trap.detect.runtime import TfliteModel


@dataclass(slots=True)
class LoadedModel:
    """A card, its verified and loaded model, labels and class map."""

    card: ModelCard
    model: TfliteModel
    labels: tuple[str, ...]
    classes: ClassMap


def load_model(name: str, models_dir: Path, num_threads: int, task: str) -> LoadedModel:
    """Find the card, verify the file's sha256, load the model and check it fits the card.

    Raises:
        ModelError: missing/invalid card, missing or altered model file, wrong task, or a
            model whose tensors do not match the card.
    """
    card = load_card(find_card(name, models_dir))
    if card.task != task:
        raise ModelError(str(card.path), f"card {name!r} is a {card.task}, expected a {task}")
    path = verify_model_file(card, models_dir)
    labels = load_labels(card, models_dir)
    classes = build_class_map(card, labels)
    model = TfliteModel(path, num_threads, card.input.value_range)
    want = (card.input.width, card.input.height)
    if model.input_size != want:
        model.close()
        raise ModelError(str(path), f"input is {model.input_size[0]}x{model.input_size[1]} but "
                         f"card {card.path} says {want[0]}x{want[1]}")
    model.warm_up()
    return LoadedModel(card, model, labels, classes)
