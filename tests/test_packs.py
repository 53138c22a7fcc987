"""Signed model packs: build, install, self-test, atomic switch, rollback, power loss.

Packs hold one detector, the smallest real model (YOLOv8n 320, 3.3 MB), and two real sample
frames (a blank and a bear), so every install runs a real self-test in well under a second.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edge_app.core.config import DetectorConfig, parse
from edge_app.core.errors import ConfigError, ModelError
from edge_app.tools import models_cli, pack_build
from edge_app.trap.detect.cards import PACKAGED_CARDS, card_dirs, find_card, load_card
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.packs import install as packs
from edge_app.trap.packs.manifest import decode_public_key

pytestmark = pytest.mark.models

DET = "yolov8n_coco_int8io_float_320"
MODEL = f"{DET}.tflite"
CAMTRAP_CMD = [sys.executable, "-m", "edge_app", "models"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = pack_build.keygen(d / "fleet.key")
    other, other_pub = pack_build.keygen(d / "other.key")
    return {"priv": priv, "pub": pub, "other": other, "other_pub": other_pub}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, cameratrapai_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("samples")
    for name in ("blank.jpg", "american_black_bear.jpg"):
        shutil.copyfile(cameratrapai_dir / name, d / name)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], models_dir: Path,
          samples: Path) -> dict[str, Path]:
    """Packs v1, v2, v3 of the same detector, signed with the fleet key."""
    d = tmp_path_factory.mktemp("packs")
    out = {}
    for v in ("v1", "v2", "v3"):
        out[v] = d / f"{v}.pack"
        pack_build.build(keys["priv"], models_dir, [DET], out[v], version=v, samples=samples)
    return out


@pytest.fixture
def unit(tmp_path: Path, keys: dict[str, Path]) -> Path:
    """A unit's config whose models folder starts empty."""
    (tmp_path / "models").mkdir()
    cfg = tmp_path / "camtrap.toml"
    cfg.write_text('[unit]\nid = "LL-1"\n[hardware]\nbackend = "sim"\n[camera]\n'
                   'source = "synthetic"\n[storage]\nroot = "data"\n[mqtt]\nenabled = false\n'
                   f'[detector]\nmodels_dir = "models"\ndetector = "{DET}"\nclassifier = ""\n'
                   f'pack_public_key = "{keys["pub"].read_text().strip()}"\n')
    return cfg


def key_of(keys: dict[str, Path], which: str = "pub") -> bytes:
    return decode_public_key(keys[which].read_text())


def cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    models_cli.add_arguments(p)
    return models_cli.main(p.parse_args(list(argv)))


def rewrite(src: Path, dst: Path, change: dict[str, bytes] | None = None,
            extra: list[tarfile.TarInfo] | None = None) -> None:
    """Copy a pack, replacing some members' bytes and/or adding raw members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:") as tout:
        for m in tin:
            f = tin.extractfile(m)
            assert f is not None
            data = (change or {}).get(m.name, f.read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        for info in extra or []:
            tout.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)


def member(pack: Path, name: str) -> bytes:
    with tarfile.open(pack) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def assert_unchanged(root: Path, version: str | None) -> None:
    assert packs.active(root) == version
    assert not list((root / "packs").glob("*.staging"))


# --------------------------------------------------------------------------- install


def test_signed_pack_installs_and_models_resolve_from_it(unit: Path, built: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    root = unit.parent / "models"
    assert cli("install", str(built["v1"]), "--config", str(unit)) == 0
    assert "model pack v1 active" in capsys.readouterr().out
    assert os.readlink(root / "current") == "packs/v1"
    assert card_dirs(root) == [root / "current", PACKAGED_CARDS]
    assert find_card(DET, root) == root / "current" / f"{DET}.toml"
    manifest = json.loads((root / "current" / "manifest.json").read_text())
    with Pipeline(DetectorConfig(detector=DET, classifier="", num_threads=1), root) as p:
        assert p.detector_model.path.resolve() == (root / "packs" / "v1" / MODEL).resolve()
        for rec in manifest["record"]:
            got = p.analyse(root / "current" / rec["file"]).to_json()
            assert (got["label"], got["score"]) == (rec["label"], rec["score"])
    assert {r["label"] for r in manifest["record"]} == {"empty", "animal"}
    assert cli("verify", str(root), "--card", DET) == 0


def test_tampered_model_is_refused_naming_the_file_and_both_hashes(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path], models_dir: Path) -> None:
    good = member(built["v1"], MODEL)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    pack = tmp_path / "bad.pack"
    rewrite(built["v1"], pack, {MODEL: bytes(bad)})
    root = tmp_path / "models"
    with pytest.raises(ModelError) as e:
        packs.install(pack, root, key_of(keys))
    import hashlib

    msg = str(e.value)
    assert MODEL in msg
    assert hashlib.sha256(good).hexdigest() in msg
    assert hashlib.sha256(bytes(bad)).hexdigest() in msg
    assert_unchanged(root, None)


def test_tampered_manifest_is_refused(tmp_path: Path, built: dict[str, Path],
                                      keys: dict[str, Path]) -> None:
    raw = member(built["v1"], "manifest.json").replace(b'"version": "v1"', b'"version": "v9"')
    assert b'"v9"' in raw
    pack = tmp_path / "bad.pack"
    rewrite(built["v1"], pack, {"manifest.json": raw})
    root = tmp_path / "models"
    packs.install(built["v1"], root, key_of(keys))
    with pytest.raises(ModelError, match=r"manifest\.json.*signature does not verify"):
        packs.install(pack, root, key_of(keys))
    assert_unchanged(root, "v1")


def test_wrong_key_is_refused(tmp_path: Path, built: dict[str, Path],
                              keys: dict[str, Path]) -> None:
    root = tmp_path / "models"
    with pytest.raises(ModelError, match="signed with another key"):
        packs.install(built["v1"], root, key_of(keys, "other_pub"))
    assert_unchanged(root, None)
    assert not (root / "current").exists()


def test_unset_or_bad_public_key(unit: Path, built: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="pack_public_key"):
        decode_public_key("")
    base = {"unit": {"id": "LL-1"}, "hardware": {"backend": "sim"},
            "camera": {"source": "synthetic"}}
    with pytest.raises(ConfigError) as e:
        parse({**base, "detector": {"pack_public_key": base64.b64encode(b"short").decode()}})
    assert e.value.key == "detector.pack_public_key"


def test_path_traversal_and_links_are_refused(tmp_path: Path, built: dict[str, Path],
                                              keys: dict[str, Path]) -> None:
    root = tmp_path / "unit" / "models"
    for i, info in enumerate((tarfile.TarInfo("../evil"), tarfile.TarInfo("/tmp/evil"),
                              tarfile.TarInfo("samples/../../evil"))):
        info.size = 4
        pack = tmp_path / f"trav{i}.pack"
        rewrite(built["v1"], pack, extra=[info])
        with pytest.raises(ModelError, match="refused"):
            packs.install(pack, root, key_of(keys))
    link = tarfile.TarInfo("coco.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    pack = tmp_path / "link.pack"
    rewrite(built["v1"], pack, extra=[link])
    with pytest.raises(ModelError, match="not a regular file"):
        packs.install(pack, root, key_of(keys))
    assert not list(tmp_path.rglob("evil"))
    assert_unchanged(root, None)


def test_an_unsigned_extra_file_is_refused(tmp_path: Path, built: dict[str, Path],
                                           keys: dict[str, Path]) -> None:
    extra = tarfile.TarInfo(f"{DET}_site.toml")
    extra.size = 8
    pack = tmp_path / "extra.pack"
    rewrite(built["v1"], pack, extra=[extra])
    with pytest.raises(ModelError, match="not in the signed manifest"):
        packs.install(pack, tmp_path / "models", key_of(keys))


# --------------------------------------------------------------------------- self-test


def test_card_that_misdescribes_the_model_fails_the_self_test(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path],
        models_dir: Path) -> None:
    """Right sha256, wrong input size: only loading the model can tell; not switched to."""
    card = (PACKAGED_CARDS / f"{DET}.toml").read_text()
    (tmp_path / f"{DET}.toml").write_text(card.replace("width = 320", "width = 640")
                                          .replace("height = 320", "height = 640"))
    pack = tmp_path / "misfit.pack"
    pack_build.build(keys["priv"], models_dir, [str(tmp_path / f"{DET}.toml")], pack,
                     version="v2")
    root = tmp_path / "models"
    packs.install(built["v1"], root, key_of(keys))
    with pytest.raises(ModelError, match="input is 320x320 but card"):
        packs.install(pack, root, key_of(keys))
    assert_unchanged(root, "v1")
    assert not (root / "packs" / "v2").exists()


def test_samples_that_disagree_with_the_record_fail_the_self_test(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path], models_dir: Path,
        samples: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    manifest = pack_build.stage(models_dir, [DET], None, samples, stage, "v2", "test")
    record = pack_build.record(stage, manifest)
    (stage / "manifest.json").unlink()
    bear = next(r for r in record if "bear" in r["file"])
    assert bear["label"] == "animal"
    bear["label"] = "person"  # what a different (or broken) model would have said
    manifest["record"] = record
    pack = tmp_path / "lying.pack"
    pack_build.write_pack(stage, manifest, keys["priv"].read_bytes(), pack)
    root = tmp_path / "models"
    packs.install(built["v1"], root, key_of(keys))
    with pytest.raises(ModelError, match=r"self-test: recorded person .* gives animal"):
        packs.install(pack, root, key_of(keys))
    assert_unchanged(root, "v1")


# --------------------------------------------------------------------------- rollback


def test_rollback_restores_the_previous_pack(unit: Path, built: dict[str, Path]) -> None:
    root = unit.parent / "models"
    with pytest.raises(ModelError, match="no previous model pack"):
        cli("rollback", "--config", str(unit))
    for v in ("v1", "v2"):
        assert cli("install", str(built[v]), "--config", str(unit)) == 0
    assert (packs.active(root), packs.active(root, "previous")) == ("v2", "v1")
    assert cli("rollback", "--config", str(unit)) == 0
    assert (packs.active(root), packs.active(root, "previous")) == ("v1", "v2")
    assert find_card(DET, root).resolve().parent == (root / "packs" / "v1").resolve()
    assert cli("install", str(built["v3"]), "--config", str(unit)) == 0
    assert sorted(p.name for p in (root / "packs").iterdir() if p.is_dir()) == ["v1", "v3"]
    with pytest.raises(ModelError, match="already the active pack"):
        cli("install", str(built["v3"]), "--config", str(unit))


def test_a_loose_card_no_longer_overrides_but_a_packed_one_does(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / f"{DET}.toml").write_text("schema = 1\n")  # would be INVALID if it were read
    assert find_card(DET, root) == PACKAGED_CARDS / f"{DET}.toml"
    assert "ignoring loose model card" in caplog.text
    packs.install(built["v1"], root, key_of(keys))
    assert load_card(find_card(DET, root)).path == root / "current" / f"{DET}.toml"


# --------------------------------------------------------------------------- power loss


@pytest.mark.parametrize("step", packs.STEPS)
def test_power_loss_at_each_step_leaves_a_working_unit(
        step: str, unit: Path, built: dict[str, Path], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    root = unit.parent / "models"
    assert cli("install", str(built["v1"]), "--config", str(unit)) == 0
    r = subprocess.run([*CAMTRAP_CMD, "install", str(built["v2"]), "--config", str(unit)],
                       env={**os.environ, "CAMTRAP_PACK_KILL_AT": step},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 137, r.stderr  # killed at that step, not finished or failed
    switched = packs.STEPS.index(step) >= packs.STEPS.index("switched")
    assert packs.active(root) == ("v2" if switched else "v1")
    packs.verify_pack_dir(root / "current", key_of(keys))
    capsys.readouterr()
    assert cli("verify", str(root), "--card", DET) == 0
    assert f"{root / 'current' / MODEL}: sha256 ok" in capsys.readouterr().out
    left = list((root / "packs").glob("*.staging"))
    assert bool(left) == (step in ("extract_mid", "verify", "selftest", "rename")), left
    # the next install cleans what was left and completes
    assert cli("install", str(built["v3"]), "--config", str(unit)) == 0
    assert packs.active(root) == "v3"
    assert not list((root / "packs").glob("*.staging"))
    assert not list(root.glob(".*.new"))


def test_one_install_at_a_time(tmp_path: Path, built: dict[str, Path],
                               keys: dict[str, Path]) -> None:
    import fcntl

    root = tmp_path / "models"
    (root / "packs").mkdir(parents=True)
    fd = os.open(root / "packs" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another install holds it
        with pytest.raises(ModelError, match="another model pack install"):
            packs.install(built["v1"], root, key_of(keys))
    finally:
        os.close(fd)
    assert packs.install(built["v1"], root, key_of(keys)).version == "v1"


@pytest.mark.parametrize(("change", "reason"), [
    (lambda m: m.update(version="../v1"), "version"),
    (lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "size": 1}}), "file name"),
    (lambda m: m["files"][MODEL].update(size=-1), "size"),
    (lambda m: m["record"][0].update(score=float("nan")), "not JSON"),
    (lambda m: m["record"][0].update(score=1.5), "record score"),
    (lambda m: m.update(detector="not_in_pack"), "detector"),
    (lambda m: m.update(cards=[]), "cards"),
])
def test_a_signed_but_malformed_manifest_is_refused(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path],
        change: Any, reason: str) -> None:
    """Even a manifest the fleet key signed (a buggy build) is parsed with limits."""
    manifest = json.loads(member(built["v1"], "manifest.json"))
    change(manifest)
    raw = json.dumps(manifest).encode()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(keys["priv"].read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    pack = tmp_path / "bad.pack"
    rewrite(built["v1"], pack, {"manifest.json": raw, "manifest.sig": key.sign(raw)})
    with pytest.raises(ModelError, match="bad pack manifest") as e:
        packs.install(pack, tmp_path / "models", key_of(keys))
    assert reason in str(e.value)
    assert_unchanged(tmp_path / "models", None)


def test_an_oversized_member_is_refused_before_it_is_written(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_app.trap.packs import archive

    monkeypatch.setattr(archive, "MAX_FILE_BYTES", 1 << 20)  # the model is 3.3 MB
    with pytest.raises(ModelError, match=rf"{MODEL}.* limit 1048576"):
        packs.install(built["v1"], tmp_path / "models", key_of(keys))
    assert not list((tmp_path / "models").rglob(MODEL))


# -- a new pack is on trial until the daemon has run healthy with it ---------------------------


def test_a_pack_that_never_runs_healthy_is_rolled_back_after_its_starts(
        unit: Path, built: dict[str, Path]) -> None:
    from edge_app.core import config as config_mod
    from edge_app.trap.packs.on_start import PackTrial
    from edge_app.trap.packs.trial import MAX_TRIAL_STARTS, TRIAL

    root = unit.parent / "models"
    cfg = config_mod.load(unit)
    packs.install(built["v1"], root, decode_public_key(cfg.detector.pack_public_key))
    assert not (root / TRIAL).exists()  # nothing to roll back to: no trial
    packs.install(built["v2"], root, decode_public_key(cfg.detector.pack_public_key))
    assert (root / TRIAL).exists()
    for _ in range(MAX_TRIAL_STARTS):  # systemd restarting a daemon that keeps dying
        assert not PackTrial.for_config(cfg, None).count_start()
        assert packs.active(root) == "v2"
    assert PackTrial.for_config(cfg, None).count_start()  # one start too many
    assert (packs.active(root), packs.active(root, "previous")) == ("v1", "v2")
    assert not (root / TRIAL).exists()
    assert not PackTrial.for_config(cfg, None).count_start()  # v1 is not on trial


def test_a_pack_the_daemon_refuses_at_start_is_rolled_back(
        unit: Path, built: dict[str, Path]) -> None:
    from edge_app.core import config as config_mod

    root = unit.parent / "models"
    cfg = config_mod.load(unit)
    key = decode_public_key(cfg.detector.pack_public_key)
    packs.install(built["v1"], root, key)
    packs.install(built["v2"], root, key)
    model = next(p for p in (root / "packs" / "v2").iterdir() if p.suffix == ".tflite")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))  # broken after its self-test passed

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_app", "run", "--config", str(unit)],
                              capture_output=True, text=True, timeout=120, check=False)

    r = run()
    assert r.returncode == 1, r.stderr[-2000:]  # systemd restarts it on the previous pack
    assert "failed on trial" in r.stderr
    assert packs.active(root) == "v1"
    (root / "packs" / "v1" / model.name).write_bytes(b"x")
    r = run()  # v1 is not on trial: a broken v1 is a config error, exit 2, as before
    assert r.returncode == 2, r.stderr[-2000:]
    assert packs.active(root) == "v1"


def test_healthy_running_confirms_the_pack_and_a_sick_tick_restarts_the_count(
        unit: Path, built: dict[str, Path]) -> None:
    from edge_app.core import config as config_mod
    from edge_app.core.clock import FakeClock
    from edge_app.trap.packs.on_start import PackTrial
    from edge_app.trap.packs.trial import CONFIRM_AFTER_S, TRIAL

    root = unit.parent / "models"
    cfg = config_mod.load(unit)
    for v in ("v1", "v2"):
        packs.install(built[v], root, decode_public_key(cfg.detector.pack_public_key))
    clock = FakeClock()
    hook = PackTrial.for_config(cfg, None).watch(clock)
    assert hook is not None
    hook(True)
    clock.advance(CONFIRM_AFTER_S - 1)
    hook(False)  # a stage was late: the healthy time starts again
    hook(True)
    clock.advance(CONFIRM_AFTER_S - 1)
    hook(True)
    assert (root / TRIAL).exists()
    clock.advance(2)
    hook(True)
    assert not (root / TRIAL).exists()
    assert packs.active(root) == "v2"
