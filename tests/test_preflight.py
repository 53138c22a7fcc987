"""``camtrap check-config`` is ``camtrap run`` without the running (edge_app/trap/preflight.py).

The table is the contract: every config ``run`` refuses at start is refused by ``check-config``
with the same key and exit 2, and ``run`` refuses it with exit 2 naming that key *and leaves no
file behind* (no database, no storage folder). Both are real subprocesses, started from a
folder other than the config's, so relative paths are proven to be taken from the config
file's folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lorawan_support import write_secrets

from edge_app.core import config
from edge_app.core.errors import ConfigError
from edge_app.trap import preflight

CAMTRAP = [sys.executable, "-m", "edge_app"]
REPO = Path(__file__).resolve().parents[1]

BASE = """\
[unit]
id = "LL-042"
[hardware]
backend = "sim"
[camera]
source = "synthetic"
[storage]
root = "data"
[mqtt]
enabled = false
"""


def _toml(extra: dict[str, dict[str, str]]) -> str:
    """BASE with keys added or replaced per section (values are TOML literals)."""
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in BASE.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
        else:
            k, v = line.split(" = ", 1)
            sections[current][k] = v
    for sec, kv in extra.items():
        sections.setdefault(sec, {}).update(kv)
    return "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                   for s, kv in sections.items())


def _jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 60)).save(path, "JPEG")


# Each row: (id, files to make in the config folder, keys to change, the key named).
Setup = Callable[[Path], None]


def _file(name: str, text: str = "x", mode: int = 0o600) -> Setup:
    def make(d: Path) -> None:
        (d / name).write_text(text)
        (d / name).chmod(mode)
    return make


def _folder(name: str, jpeg: bool = False) -> Setup:
    def make(d: Path) -> None:
        (d / name).mkdir()
        if jpeg:
            _jpeg(d / name / "a.jpg")
    return make


def _secrets(mode: int) -> Setup:
    def make(d: Path) -> None:
        write_secrets(d / "lorawan.toml", mode=mode)
    return make


MQTT_ON = {"enabled": "true", "host": '"127.0.0.1"', "port": "8883"}
LORA_ON = {"enabled": "true", "port": '"/dev/null"', "secrets_file": '"lorawan.toml"'}

REFUSED: list[tuple[str, list[Setup], dict[str, dict[str, str]], str]] = [
    ("root-under-a-file", [_file("afile")], {"storage": {"root": '"afile/data"'}},
     "storage.root"),
    ("root-not-writable", [], {"storage": {"root": '"/sys/camtrap-test"'}}, "storage.root"),
    ("ca-missing", [], {"mqtt": {**MQTT_ON, "ca_file": '"ca.crt"'}}, "mqtt.ca_file"),
    ("key-missing", [_file("unit.crt")], {"mqtt": {**MQTT_ON, "cert_file": '"unit.crt"',
                                                   "key_file": '"unit.key"'}}, "mqtt.key_file"),
    ("password-missing", [], {"mqtt": {**MQTT_ON, "password_file": '"pw"'}},
     "mqtt.password_file"),
    ("password-readable-by-others", [_file("pw", "s3cret\n", 0o644)],
     {"mqtt": {**MQTT_ON, "password_file": '"pw"'}}, "mqtt.password_file"),
    ("host-is-a-url", [], {"mqtt": {**MQTT_ON, "host": '"mqtts://base.example"'}},
     "mqtt.host"),
    ("replay-folder-missing", [], {"camera": {"source": '"replay"', "images_dir": '"img"'}},
     "camera.images_dir"),
    ("replay-folder-empty", [_folder("img")],
     {"camera": {"source": '"replay"', "images_dir": '"img"'}}, "camera.images_dir"),
    ("models-dir-missing", [], {"detector": {"models_dir": '"no-models"'}},
     "detector.models_dir"),
    ("detector-card-unknown", [], {"detector": {"detector": '"no_such_card"'}},
     "detector.detector"),
    ("classifier-is-a-detector", [],
     {"detector": {"classifier": '"yolov8n_coco_int8_640"'}}, "detector.classifier"),
    ("embedder-unknown", [], {"detector": {"embedder": '"nope"'},
                              "background": {"enabled": "true"}}, "detector.embedder"),
    ("head-missing", [], {"detector": {"head": '"LL-042-head.npz"'}}, "detector.head"),
    ("lorawan-keys-missing", [], {"lorawan": LORA_ON}, "lorawan.secrets_file"),
    ("lorawan-keys-readable", [_secrets(0o644)], {"lorawan": LORA_ON},
     "lorawan.secrets_file"),
    ("nan-threshold", [], {"detector": {"score_threshold": "nan"}},
     "detector.score_threshold"),
    ("inf-backoff", [], {"outbox": {"backoff_max_s": "inf"}}, "outbox.backoff_max_s"),
    ("no-gpio", [_folder("img", jpeg=True)],
     {"hardware": {"backend": '"pi"'}, "camera": {"source": '"replay"', "images_dir": '"img"'}},
     "hardware.backend"),
    ("no-picamera2", [], {"hardware": {"backend": '"pi"'},
                          "camera": {"source": '"picamera2"'}}, "camera.source"),
]


def _env(models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    return {**env, "CAMTRAP_MODELS": str(models_dir), **extra}


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def _key(stderr: str) -> str:
    m = re.search(r"config error: ([\w.\-\[\]]+):", stderr)
    assert m, stderr
    return m.group(1)


@pytest.mark.parametrize(("setup", "changes", "key"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_check_config_refuses_what_run_refuses_and_run_leaves_nothing(
    tmp_path: Path, models_dir: Path, setup: list[Setup],
    changes: dict[str, dict[str, str]], key: str
) -> None:
    if key == "camera.source" and importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here: the Pi camera would really start")
    unit = tmp_path / "unit"
    unit.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for make in setup:
        make(unit)
    cfg = unit / "camtrap.toml"
    cfg.write_text(_toml(changes))
    # A pi backend needs a pin factory for the rows that are not about GPIO; gpiozero's
    # mock factory stands in, exactly as GPIOZERO_PIN_FACTORY would select it on a bench.
    extra = {"GPIOZERO_PIN_FACTORY": "mock"} if key == "camera.source" else {}
    if key == "hardware.backend":
        extra = {"GPIOZERO_PIN_FACTORY": "no-such-factory"}
    before = _files(unit)
    check, run = (subprocess.run([*CAMTRAP, *argv], cwd=elsewhere,
                                 env=_env(models_dir, **extra), capture_output=True, text=True,
                                 timeout=60, check=False)
                  for argv in (["check-config", str(cfg)], ["run", "--config", str(cfg)]))
    assert check.returncode == 2, check.stdout + check.stderr
    assert run.returncode == 2, run.stderr
    assert _key(check.stderr) == key, check.stderr
    assert _key(run.stderr) == key, run.stderr
    assert "Traceback" not in check.stderr + run.stderr
    assert _files(unit) == before, "run left files behind"
    assert _files(elsewhere) == set()


def test_the_base_config_is_accepted_and_runs_with_paths_from_its_folder(
    tmp_path: Path, models_dir: Path
) -> None:
    """The table's base is valid: each refusal above is the row's one change."""
    unit = tmp_path / "unit"
    unit.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg = unit / "camtrap.toml"
    cfg.write_text(_toml({}))
    r = subprocess.run([*CAMTRAP, "check-config", str(cfg)], cwd=elsewhere,
                       env=_env(models_dir), capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert f"models {models_dir}" in r.stdout
    assert _files(unit) == {"camtrap.toml"}  # the storage probe left nothing
    proc = subprocess.Popen([*CAMTRAP, "run", "--config", str(cfg)], cwd=elsewhere,
                            env=_env(models_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (unit / "data" / "camtrap.db").exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "run did not create its database"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, log
    assert "running as LL-042" in log
    assert _files(elsewhere) == set()  # "data" is the config folder's, not the cwd's


def test_field_config_is_refused_by_both_with_the_same_key(tmp_path: Path,
                                                          models_dir: Path) -> None:
    """The bug: check-config said ok to field.toml, run refused it, systemd restart-looped."""
    field = REPO / "deploy" / "config" / "field.toml"
    results = [subprocess.run([*CAMTRAP, *argv], cwd=tmp_path, env=_env(models_dir),
                              capture_output=True, text=True, timeout=60, check=False)
               for argv in (["check-config", str(field)], ["run", "--config", str(field)])]
    assert [r.returncode for r in results] == [2, 2], [r.stderr for r in results]
    assert _key(results[0].stderr) == _key(results[1].stderr)
    r = subprocess.run([*CAMTRAP, "check-config", "--schema-only", str(field)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "schema only" in r.stdout


def test_a_missing_lora_serial_device_is_a_note_not_a_refusal(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refusing would also stop the MQTT alerts; the LoRa stage keeps retrying the port."""
    write_secrets(tmp_path / "lorawan.toml")
    cfg_path = tmp_path / "camtrap.toml"
    cfg_path.write_text(_toml({"lorawan": {**LORA_ON, "port": '"/dev/ttyNOPE9"'}}))
    ready = preflight.check(config.load(cfg_path), str(models_dir))
    assert ready.models_dir == models_dir
    assert len(ready.notes) == 1
    assert "lorawan.port" in ready.notes[0]
    assert "/dev/ttyNOPE9" in ready.notes[0]


# --------------------------------------------------------------------------- storage probe


def test_storage_probe_creates_missing_folders_and_removes_them(tmp_path: Path) -> None:
    preflight.check_writable("storage.root", tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "root").mkdir()
    preflight.check_writable("storage.root", tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


def test_storage_probe_failures_name_the_key_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as e:
        preflight.check_writable("storage.root", tmp_path / "afile" / "data")
    assert e.value.key == "storage.root"
    assert "not a folder" in e.value.reason
    with pytest.raises(ConfigError, match="not writable"):
        preflight.check_writable("storage.root", Path("/sys/camtrap-test/a/b"))
    assert not Path("/sys/camtrap-test").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_storage_probe_sees_a_folder_it_cannot_write(tmp_path: Path) -> None:
    """A folder the trap cannot write is refused. Root writes through permission bits, so
    under root (CI) the folder is a read-only tmpfs; otherwise it is mode 0555."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"cannot mount a read-only tmpfs as root: {r.stderr}"
        mounted = True
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            preflight.check_writable("storage.root", ro / "data")
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True, check=False)
        ro.chmod(0o755)


# --------------------------------------------------------------------------- interpreter-only


def _misfit_pack(models_dir: Path, dest: Path) -> Path:
    """A models folder whose detector card has the right sha256 but the wrong input size:
    only the interpreter can tell (the card is read, the file hashes, the labels map)."""
    from edge_app.trap.detect.cards import PACKAGED_CARDS

    dest.mkdir()
    for name in ("yolov8n_coco_int8_640.tflite", "coco80_labels.txt",
                 "mobilenet_v2_imagenet_uint8_224.tflite", "imagenet_labels.txt"):
        (dest / name).symlink_to(models_dir / name)
    card = (PACKAGED_CARDS / "yolov8n_coco_int8_640.toml").read_text()
    (dest / "yolov8n_coco_int8_640.toml").write_text(
        card.replace("width = 640", "width = 320").replace("height = 640", "height = 320"))
    (dest / "manifest.json").write_text("{}")  # an unpacked model pack: its card wins
    return dest


@pytest.mark.parametrize("root_exists", [False, True], ids=["new-root", "existing-root"])
def test_a_model_only_the_interpreter_refuses(tmp_path: Path, models_dir: Path,
                                              root_exists: bool) -> None:
    """check-config loads the models as the trap does; run does not load them twice, but its
    own load failing names the same key and leaves nothing it created."""
    pack = _misfit_pack(models_dir, tmp_path / "pack")
    unit = tmp_path / "unit"
    unit.mkdir()
    if root_exists:
        (unit / "data").mkdir()
        (unit / "data" / "keep.txt").write_text("the technician's")
    cfg = unit / "camtrap.toml"
    cfg.write_text(_toml({}))
    before = _files(unit)
    results = [subprocess.run([*CAMTRAP, *argv, "--models", str(pack)], cwd=tmp_path,
                              env=_env(models_dir), capture_output=True, text=True, timeout=60,
                              check=False)
               for argv in (["check-config", str(cfg)], ["run", "--config", str(cfg)])]
    for r in results:
        assert r.returncode == 2, r.stderr
        assert _key(r.stderr) == "detector.detector", r.stderr
        assert "says 320x320" in r.stderr
    assert _files(unit) == before

