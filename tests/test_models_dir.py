"""One models-folder search for every command (edge_app/core/models_dir.py).

The order is --models, detector.models_dir, CAMTRAP_MODELS, the installed default, the shared
pack beside a clone. The unit tests move the installed default and the shared pack to
``tmp_path`` folders; the command tests then prove that every command that loads models goes
through the same function, by the one error it gives when nothing is anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_app import cli
from edge_app.core import models_dir as md
from edge_app.core.errors import ModelError
from edge_app.core.models_dir import resolve_models_dir, shared_data_dir


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Five existing folders, one per place; the environment points at none of them yet."""
    out = {}
    for name in ("cli", "cfg", "env", "installed", "shared"):
        out[name] = tmp_path / name
        out[name].mkdir()
    (out["shared"] / "data" / "models").mkdir(parents=True)
    monkeypatch.delenv("CAMTRAP_MODELS", raising=False)
    monkeypatch.setenv("CAMTRAP_SHARED", str(out["shared"]))
    return out


def test_first_place_that_is_given_wins(places: dict[str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    inst = places["installed"]
    monkeypatch.setenv("CAMTRAP_MODELS", str(places["env"]))
    assert resolve_models_dir(str(places["cli"]), str(places["cfg"]), installed=inst) \
        == places["cli"]
    assert resolve_models_dir(None, str(places["cfg"]), installed=inst) == places["cfg"]
    assert resolve_models_dir("", "", installed=inst) == places["env"]
    monkeypatch.delenv("CAMTRAP_MODELS")
    assert resolve_models_dir(None, "", installed=inst) == inst
    inst.rmdir()
    assert resolve_models_dir(None, "", installed=inst) \
        == places["shared"] / "data" / "models"


def test_an_explicit_place_that_is_missing_is_an_error_not_a_fall_through(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --models must not quietly load the installed pack instead."""
    inst = places["installed"]
    with pytest.raises(ModelError, match=r"typo.*does not exist.*--models"):
        resolve_models_dir(str(places["cli"] / "typo"), "", installed=inst)
    with pytest.raises(ModelError, match=r"gone.*detector\.models_dir"):
        resolve_models_dir(None, str(places["cfg"] / "gone"), installed=inst)
    monkeypatch.setenv("CAMTRAP_MODELS", str(places["env"] / "gone"))
    with pytest.raises(ModelError, match=r"gone.*CAMTRAP_MODELS"):
        resolve_models_dir(None, "", installed=inst)


def test_nothing_anywhere_lists_every_place_looked_at(places: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMTRAP_SHARED", str(places["shared"] / "nothing-here"))
    with pytest.raises(ModelError) as e:
        resolve_models_dir(None, "", installed=places["installed"] / "none")
    text = str(e.value)
    for place in ("--models", "detector.models_dir", "CAMTRAP_MODELS",
                  str(places["installed"] / "none"), "../shared/data/models"):
        assert place in text


def test_shared_pack_is_only_used_from_a_checkout(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """An installed wheel has no ``../shared``: the fallback is for a clone only."""
    monkeypatch.delenv("CAMTRAP_SHARED", raising=False)
    monkeypatch.setattr(md, "_CHECKOUT", tmp_path / "site-packages")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert shared_data_dir() is None  # no pyproject.toml: not a checkout
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "pyproject.toml").write_text("")
    assert shared_data_dir() == tmp_path / "shared" / "data"


def _no_models_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAMTRAP_MODELS", raising=False)
    monkeypatch.setenv("CAMTRAP_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setattr(md, "INSTALLED_MODELS_DIR", tmp_path / "no-installed")


def test_every_command_searches_the_same_places(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """With no models anywhere, every command that needs them gives the one search error."""
    _no_models_anywhere(tmp_path, monkeypatch)
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "unit.toml"
    cfg.write_text('[unit]\nid = "LL-1"\n[hardware]\nbackend = "sim"\n[camera]\n'
                   'source = "synthetic"\n[storage]\nroot = "data"\n[mqtt]\nenabled = false\n')
    commands = {
        "detect": ["detect", str(images)],
        "eval": ["eval", str(images)],
        "bench detect": ["bench", "detect"],
        "models verify": ["models", "verify"],
        "models adapt": ["models", "adapt", "--images", str(images), "--out",
                         str(tmp_path / "head.npz")],
        "check-config": ["check-config", str(cfg)],
        "run": ["run", "--config", str(cfg)],
        "demo": ["demo", "--seconds", "1"],
    }
    for name, argv in commands.items():
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert "no model folder found" in err, (name, err)
        assert str(tmp_path / "no-installed") in err, (name, err)
    assert not (tmp_path / "data").exists()  # check-config and run created nothing


@pytest.mark.models
def test_detect_finds_the_pack_through_the_environment(
    models_dir: Path, cameratrapai_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_models_anywhere(tmp_path, monkeypatch)
    monkeypatch.setenv("CAMTRAP_MODELS", str(models_dir))
    assert cli.main(["detect", "--json", str(cameratrapai_dir / "human.jpg")]) == 0
    assert '"label": "person"' in capsys.readouterr().out
