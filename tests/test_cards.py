"""Model cards: the packaged cards, lookup order, validation and the sha256 gate."""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import edge_app
from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import (
    FORMATS,
    PACK_MANIFEST,
    PACKAGED_CARDS,
    REPO_MODELS,
    build_class_map,
    card_dirs,
    find_card,
    load_card,
    load_labels,
    parse_card,
    sha256_file,
    verify_model_file,
)
from edge_app.trap.detect.heads import DETECTOR_HEADS
from edge_app.trap.detect.pipeline import Pipeline

CARDS = sorted(p.stem for p in PACKAGED_CARDS.glob("*.toml"))
YOLO = "yolov8n_coco_int8_640"


def card_data(name: str = YOLO) -> dict[str, Any]:
    return tomllib.loads((PACKAGED_CARDS / f"{name}.toml").read_text())


def dump(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the card shapes used here."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    top = [f"{k} = {val(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def test_repo_has_a_card_for_every_model_in_the_pack() -> None:
    assert set(CARDS) >= {YOLO, "yolov8n_coco_int8io_float_320",
                          "mobilenet_v2_imagenet_uint8_224",
                          "ssd_mobilenet_v2_fpnlite_coco_uint8_256",
                          "mobilenet_v1_embedding_uint8_224"}


@pytest.mark.models
def test_every_tflite_in_the_pack_has_a_card(models_dir: Path) -> None:
    carded = {load_card(PACKAGED_CARDS / f"{n}.toml").file for n in CARDS}
    assert {p.name for p in models_dir.glob("*.tflite")} <= carded


@pytest.mark.models
@pytest.mark.parametrize("name", CARDS)
def test_repo_cards_match_the_model_pack(name: str, models_dir: Path) -> None:
    card = load_card(find_card(name, None))
    assert card.name == name
    assert verify_model_file(card, models_dir) == models_dir / card.file
    labels = load_labels(card, models_dir)
    cmap = build_class_map(card, labels)  # every mapped label name exists
    if card.task == "detector":
        assert card.output.format in DETECTOR_HEADS
        assert cmap.names[int(cmap.category_classes[1][0])] == "person"
        assert len(cmap.category_classes[0]) == 10  # bird..giraffe
        assert len(cmap.category_classes[2]) == 5
        assert "background" not in [cmap.names[i] for i in cmap.mapped_classes]
    elif card.task == "classifier":
        assert [len(c) for c in cmap.species_classes] == [4, 1, 3]
        assert "tiger cat" not in [cmap.names[i] for i in cmap.species_classes[1]]
    else:
        assert card.task == "embedding"
        assert labels == ()
        assert card.output.params["dims"] == 1024


@pytest.mark.models
def test_sha256_in_cards_matches_models_md(models_dir: Path) -> None:
    text = (models_dir / "MODELS.md").read_text()
    for name in CARDS:
        card = load_card(PACKAGED_CARDS / f"{name}.toml")
        m = re.search(rf"`{re.escape(card.file)}` \| ([0-9a-f]{{64}})", text)
        assert m is not None, card.file
        assert m.group(1) == card.sha256


def test_pack_card_shadows_packaged_card_but_a_loose_one_does_not(tmp_path: Path) -> None:
    """Issue 11: only a card that came in a (signed, installed) pack overrides a packaged one;
    a card dropped loose into the models folder is ignored. ``tests/test_packs.py`` installs
    real signed packs; here the folder is an unpacked pack (as the installer self-tests it)."""
    (tmp_path / f"{YOLO}.toml").write_text((PACKAGED_CARDS / f"{YOLO}.toml").read_text())
    assert find_card(YOLO, tmp_path) == PACKAGED_CARDS / f"{YOLO}.toml"  # loose: ignored
    assert card_dirs(tmp_path) == [PACKAGED_CARDS]
    (tmp_path / PACK_MANIFEST).write_text("{}")
    assert find_card(YOLO, tmp_path) == tmp_path / f"{YOLO}.toml"
    assert find_card("mobilenet_v2_imagenet_uint8_224", tmp_path).parent == PACKAGED_CARDS
    assert card_dirs(tmp_path) == [tmp_path, PACKAGED_CARDS]
    assert card_dirs(None) == [PACKAGED_CARDS]


def test_cards_are_package_data_not_a_repository_folder() -> None:
    """The cards must sit inside the package, where a wheel install has them (issue 14).

    They used to be read from ``<repo>/models``, which only an editable checkout has. The
    wheel's contents are checked in tests/test_packaging.py; this pins the lookup itself.
    """
    package = Path(edge_app.__file__).resolve().parent
    assert PACKAGED_CARDS.resolve().is_relative_to(package)
    assert Path(str(resources.files("edge_app.trap.detect") / "model_cards")) == PACKAGED_CARDS
    assert len(CARDS) >= 5
    assert REPO_MODELS == PACKAGED_CARDS  # the old name still answers, with the new place
    assert not list((package.parent / "models").glob("*.toml")), (
        "a card in <repo>/models would not ship: put it in edge_app/trap/detect/model_cards")


def test_unknown_card_names_the_paths_it_tried(tmp_path: Path) -> None:
    (tmp_path / PACK_MANIFEST).write_text("{}")  # a pack's folder is searched first
    with pytest.raises(ModelError) as e:
        find_card("nope", tmp_path)
    assert str(tmp_path / "nope.toml") in e.value.reason
    assert str(PACKAGED_CARDS / "nope.toml") in e.value.reason


def test_unknown_card_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model card found"):
        find_card("nope", tmp_path)
    with pytest.raises(ModelError, match="names are"):
        find_card("../etc/passwd", tmp_path)


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.update(colour_order="RGB"), r"colour_order: unknown key"),
    (lambda d: d["input"].update(colour_ordr="BGR"), r"input\.colour_ordr: unknown key"),
    (lambda d: d["input"].update(colour_order="RBG"), r"input\.colour_order: must be one of"),
    (lambda d: d.pop("sha256"), r"sha256: is required"),
    (lambda d: d.update(sha256="abc"), r"sha256: must be 64 hex digits"),
    (lambda d: d.update(schema=2), r"schema"),
    (lambda d: d.update(file="../x.tflite"), r"file: must be a plain file name"),
    (lambda d: d["input"].update(width="640"), r"input\.width: must be an integer"),
    (lambda d: d["input"].update(value_range=[1.0, 0.0]), r"value_range"),
    (lambda d: d["output"].update(format="yolov99"), r"output\.format: must be one of"),
    (lambda d: d["output"].update(format="classifier"), r"is a classifier format"),
    (lambda d: d["output"].update(coords="inches"), r"output\.coords: must be one of"),
    (lambda d: d["output"].update(anchors="x.npy"), r"output\.anchors: unknown key"),
    (lambda d: d["categories"].update(plant=["potted plant"]), r"categories\.plant"),
    (lambda d: d["categories"].update(person="person"), r"must be a list of label names"),
    (lambda d: d.update(second_look_tiles="yes"), r"second_look_tiles: must be true/false"),
    (lambda d: d.update(task="classifier", second_look_tiles=True,
                        output={"format": "classifier"}),
     r"second_look_tiles: only a detector card"),
])
def test_bad_cards_name_the_key(tmp_path: Path, change: Any, match: str) -> None:
    data = card_data()
    change(data)
    with pytest.raises(ModelError, match=match) as e:
        parse_card(data, YOLO, tmp_path / "c.toml")
    assert str(tmp_path / "c.toml") in str(e.value)


SSD_CARD = "ssd_mobilenet_v2_fpnlite_coco_uint8_256"


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d["output"].pop("encoding"), r"output\.encoding: is required"),
    (lambda d: d["output"].update(encoding="diagonal"), r"output\.encoding: must be one of"),
    (lambda d: d["output"].update(variances=[0.1, 0.2]), r"output\.variances: must be 4"),
    (lambda d: d["output"].update(variances=[0.1, 0.1, 0.2, -1]), r"variances"),
    (lambda d: d["output"].update(outputs=["scores", "boxes", "boxes"]),
     r"output\.outputs: must list each of"),
    (lambda d: d["output"].update(activation="relu"), r"output\.activation"),
    (lambda d: d.pop("labels"), r"labels: is required"),
])
def test_bad_ssd_cards_name_the_key(tmp_path: Path, change: Any, match: str) -> None:
    data = card_data(SSD_CARD)
    change(data)
    with pytest.raises(ModelError, match=match):
        parse_card(data, SSD_CARD, tmp_path / "c.toml")


def test_embedding_and_postprocess_cards(tmp_path: Path) -> None:
    data = card_data("mobilenet_v1_embedding_uint8_224")
    card = parse_card(data, "e", tmp_path / "e.toml")
    assert (card.task, card.labels, card.output.params) == ("embedding", "", {"dims": 1024})
    data["output"].pop("dims")
    with pytest.raises(ModelError, match=r"output\.dims: is required"):
        parse_card(data, "e", tmp_path / "e.toml")
    pp = card_data()
    pp["output"] = {"format": "tflite_postprocess", "label_offset": 1}
    card = parse_card(pp, "p", tmp_path / "p.toml")
    assert card.output.params == {"label_offset": 1,
                                  "outputs": ["boxes", "classes", "scores", "count"]}
    pp["output"]["outputs"] = ["scores", "boxes", "count", "classes"]  # TF2 export order
    assert parse_card(pp, "p", tmp_path / "p.toml").output.params["outputs"][0] == "scores"
    pp["output"]["outputs"] = ["boxes"]
    with pytest.raises(ModelError, match="must list each of"):
        parse_card(pp, "p", tmp_path / "p.toml")


def test_card_not_toml(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("schema = = 1")
    with pytest.raises(ModelError, match="not valid TOML"):
        load_card(p)


def test_format_table_is_consistent() -> None:
    for name, spec in FORMATS.items():
        assert spec.task in ("detector", "classifier", "embedding"), name
        for key in spec.choices:
            assert key in spec.params, (name, key)


@pytest.mark.models
def test_label_typo_in_card_is_refused(tmp_path: Path, models_dir: Path) -> None:
    data = card_data()
    data["categories"]["animal"] = [*data["categories"]["animal"], "elefant"]
    card = parse_card(data, YOLO, tmp_path / "c.toml")
    with pytest.raises(ModelError, match=r"'elefant' is not in coco80_labels\.txt"):
        build_class_map(card, load_labels(card, models_dir))


@pytest.mark.models
def test_altered_model_is_refused_with_both_hashes(tmp_path: Path, models_dir: Path) -> None:
    """A model whose bytes differ from its card must never load."""
    data = (models_dir / f"{YOLO}.tflite").read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    (tmp_path / f"{YOLO}.tflite").write_bytes(bytes(bad))
    shutil.copy(models_dir / "coco80_labels.txt", tmp_path)
    actual = hashlib.sha256(bad).hexdigest()
    expected = hashlib.sha256(data).hexdigest()
    with pytest.raises(ModelError) as e:
        Pipeline(DetectorConfig(classifier=""), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / f"{YOLO}.tflite") in msg
    assert expected in msg
    assert actual in msg
    assert e.value.path == str(tmp_path / f"{YOLO}.tflite")


def test_sha256_cache_notices_a_replaced_file(tmp_path: Path) -> None:
    p = tmp_path / "m.tflite"
    p.write_bytes(b"one")
    first = sha256_file(p)
    assert sha256_file(p) == first == hashlib.sha256(b"one").hexdigest()
    p.write_bytes(b"two!")
    assert sha256_file(p) == hashlib.sha256(b"two!").hexdigest()
    p.unlink()
    with pytest.raises(ModelError, match="not found"):
        sha256_file(p)


@pytest.mark.models
def test_card_of_the_wrong_task_is_refused(models_dir: Path) -> None:
    with pytest.raises(ModelError, match="is a classifier, expected a detector"):
        Pipeline(DetectorConfig(detector="mobilenet_v2_imagenet_uint8_224", classifier=""),
                 models_dir)


@pytest.mark.models
def test_card_input_size_must_match_model(tmp_path: Path, models_dir: Path) -> None:
    data = card_data()
    data["input"]["width"] = data["input"]["height"] = 320
    (tmp_path / f"{YOLO}.toml").write_text(dump(data))
    (tmp_path / PACK_MANIFEST).write_text("{}")  # an unpacked pack: its card wins
    for f in (f"{YOLO}.tflite", "coco80_labels.txt"):
        (tmp_path / f).symlink_to(models_dir / f)
    with pytest.raises(ModelError, match="input is 640x640 but card"):
        Pipeline(DetectorConfig(classifier=""), tmp_path)


def test_a_site_head_comes_from_the_active_pack_when_it_carries_one(tmp_path: Path) -> None:
    from edge_app.trap.detect.site_votes import head_path

    models = tmp_path / "models"
    (models / "packs" / "v2").mkdir(parents=True)
    (models / "LL-042-head.npz").write_bytes(b"loose")
    assert head_path("LL-042-head.npz", models) == models / "LL-042-head.npz"  # no pack yet
    (models / "packs" / "v2" / "manifest.json").write_text("{}")
    (models / "current").symlink_to(Path("packs") / "v2")
    assert head_path("LL-042-head.npz", models) == models / "LL-042-head.npz"  # pack lacks it
    (models / "packs" / "v2" / "LL-042-head.npz").write_bytes(b"signed")
    assert head_path("LL-042-head.npz", models).read_bytes() == b"signed"
    assert head_path(str(tmp_path / "abs.npz"), models) == tmp_path / "abs.npz"
