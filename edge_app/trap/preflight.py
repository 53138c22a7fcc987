"""Everything ``camtrap run`` needs from the machine, checked before anything is created.

``camtrap check-config FILE`` is ``camtrap run`` without the running: both call :func:`check`
on the loaded config, so a config that check-config accepts is one run starts with, and one
run refuses is one check-config refuses, with the same key. Before this, check-config only
read the schema: it said ok to the field config while run then stopped on a missing CA file,
systemd restarted it every 5 s, and an unwritable ``storage.root`` ended in a traceback.

What is checked, cheapest first (the models' sha256 last), each failure a
:class:`~edge_app.core.errors.ConfigError` naming the key (exit 2):

* ``hardware.backend = 'pi'``: gpiozero finds a GPIO pin factory on this machine;
* ``camera.source``: picamera2 importable (Pi camera), or the replay folder holds JPEGs;
* ``storage.root``: writable, proven by creating and removing a probe file (and any folder
  the probe needed), so nothing is left behind;
* ``mqtt.*``: the TLS files and the password file (mode 0600), through the link's own
  :func:`~edge_app.trap.uplink.mqtt.check_credentials`, and the TLS files readable;
* ``lorawan.*``: the keys file (mode 0600, valid keys), through the router's own
  :func:`~edge_app.trap.uplink.lorawan.load_secrets`;
* ``detector.*``: the models folder (:func:`~edge_app.core.models_dir.resolve_models_dir`,
  the search every command uses) and every model the config names: the detector, the
  classifier, the embedder when a site head or the background uses it, and the site head
  file. Each card is read, the model file's sha256 checked against it and its labels mapped.
  ``check-config`` then loads them in the interpreter exactly as the trap does (a card whose
  input size does not fit its model is only seen there), when a runtime is installed; ``run``
  does not load them twice: ``App`` loads them, and a failure there is mapped to the same key
  and undone (:class:`StartUndo`).

A missing LoRa serial device is a *note*, not a refusal: the LoRaWAN stage keeps retrying the
port (a USB modem may enumerate after boot), and refusing to start would also stop the MQTT
alerts, which is worse than a trap without its backup link.

Nothing here writes anything that outlives the call, which is what lets ``run`` promise that a
failed start leaves no database and no folder behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.clock import SystemClock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, ModelError
from edge_app.core.models_dir import resolve_models_dir
from edge_app.trap.detect.cards import (
    ModelCard,
    build_class_map,
    find_card,
    load_card,
    load_labels,
    verify_model_file,
)
from edge_app.trap.detect.site_head import load_head
from edge_app.trap.detect.site_votes import head_path
from edge_app.trap.hardware.factory import make_camera

PROBE_PREFIX = ".camtrap-probe-"
"""Name prefix of the file that proves ``storage.root`` is writable (removed at once)."""


@dataclass(frozen=True)
class Ready:
    """What the checks found, for ``run`` to start with.

    Attributes:
        models_dir: the models folder the search found.
        notes: things worth a warning that do not stop the trap.
    """

    models_dir: Path
    notes: tuple[str, ...] = ()


def check(cfg: Config, models: str | None = None, *, load_models: bool = False) -> Ready:
    """Check everything ``run`` needs from this machine; create nothing.

    Args:
        cfg: a config from :func:`edge_app.core.config.load` (schema already valid, paths
            already absolute).
        models: ``--models``, when given.
        load_models: also load the models in the interpreter, as ``App`` will (for
            ``check-config``; without a runtime installed this becomes a note).

    Returns:
        The models folder and any notes.

    Raises:
        ConfigError: naming the key of the first problem.
    """
    notes: list[str] = []
    check_hardware(cfg)
    check_camera(cfg)
    check_writable("storage.root", Path(cfg.storage.root))
    check_mqtt(cfg)
    check_lorawan(cfg, notes)
    models_dir = check_models(cfg, models)
    if load_models:
        load_pipeline(cfg, models_dir, notes)
    return Ready(models_dir, tuple(notes))


def check_hardware(cfg: Config) -> None:
    """``hardware.backend = 'pi'``: gpiozero must find a pin factory for the PIR.

    Uses gpiozero's own :meth:`Device.ensure_pin_factory` (documented for reading board
    information without a device): it opens the GPIO chip but claims no pin. ``run`` then
    drives the PIR through that same factory.
    """
    if cfg.hardware.backend != "pi":
        return
    try:
        from gpiozero import Device
    except ImportError as e:
        raise ConfigError("hardware.backend", f"'pi' needs gpiozero: {e}") from None
    with warnings.catch_warnings():  # one "falling back from ..." warning per factory tried
        warnings.simplefilter("ignore")
        try:
            Device.ensure_pin_factory()
        except Exception as e:  # noqa: BLE001 - gpiozero documents "a number of" exceptions
            raise ConfigError("hardware.backend", f"'pi' but gpiozero finds no GPIO here "
                              f"({e}); on a Pi install python3-lgpio, elsewhere use "
                              "'sim'") from None


def check_camera(cfg: Config) -> None:
    """The camera's library or images, without opening the camera."""
    cam = cfg.camera
    if cam.source == "picamera2" and importlib.util.find_spec("picamera2") is None:
        raise ConfigError("camera.source", "picamera2 is not importable by this Python: "
                          "apt install python3-picamera2 and make the venv with "
                          "--system-site-packages")
    if cam.source == "replay":
        make_camera(cam, cfg.hardware.backend, SystemClock())  # lists the folder's JPEGs


def _card(key: str, name: str, models_dir: Path, task: str) -> ModelCard:
    """Read ``name``'s card, verify its model file and labels; errors name ``key``."""
    try:
        card = load_card(find_card(name, models_dir))
        if card.task != task:
            raise ModelError(str(card.path), f"card {name!r} is a {card.task}, expected a "
                             f"{task}")
        verify_model_file(card, models_dir)
        build_class_map(card, load_labels(card, models_dir))
    except ModelError as e:
        raise ConfigError(key, str(e)) from None
    return card


def check_models(cfg: Config, models: str | None) -> Path:
    """The models folder and every model the config names (see the module docstring)."""
    det = cfg.detector
    try:
        models_dir = resolve_models_dir(models, det.models_dir)
    except ModelError as e:
        raise ConfigError("--models" if models else "detector.models_dir", str(e)) from None
    _card("detector.detector", det.detector, models_dir, "detector")
    if det.classifier:
        _card("detector.classifier", det.classifier, models_dir, "classifier")
    if det.head or cfg.background.enabled:
        emb = _card("detector.embedder", det.embedder, models_dir, "embedding")
        if det.head:
            try:
                load_head(head_path(det.head, models_dir), emb.sha256,
                          int(emb.output.params["dims"]))
            except ModelError as e:
                raise ConfigError("detector.head", str(e)) from None
    return models_dir


class StartUndo:
    """What ``storage.root`` held before a start, so a start that fails can leave nothing.

    Everything :func:`check` can see is checked before anything is created; this covers what
    it cannot (the interpreter refusing a model its card describes wrongly, after the store
    made its folder). Only what appeared since this object was made is removed: the outermost
    folder the start created, or the new entries of a root that already existed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fresh: Path | None = None
        p = root
        while not p.exists() and p != p.parent:
            self.fresh = p
            p = p.parent
        self.before = set(root.iterdir()) if self.fresh is None and root.is_dir() else set()

    def undo(self) -> None:
        """Remove what the failed start created (best effort; never raises)."""
        if self.fresh is not None:
            shutil.rmtree(self.fresh, ignore_errors=True)
            return
        with contextlib.suppress(OSError):
            for p in set(self.root.iterdir()) - self.before:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def model_key(cfg: Config, models_dir: Path, error: ModelError) -> str:
    """The config key of the model a :class:`ModelError` is about (by the file it names)."""
    det = cfg.detector
    for key, name in (("detector.detector", det.detector), ("detector.classifier",
                                                              det.classifier),
                      ("detector.embedder", det.embedder)):
        if not name:
            continue
        try:
            card = load_card(find_card(name, models_dir))
        except ModelError:
            continue
        if error.path in (str(card.path), str(card.model_path(models_dir)),
                          str(card.labels_path(models_dir)), name):
            return key
    if det.head and error.path == str(head_path(det.head, models_dir)):
        return "detector.head"
    return "detector.models_dir"


def load_pipeline(cfg: Config, models_dir: Path, notes: list[str]) -> None:
    """Load the detection pipeline as ``App`` does, then release it.

    Raises:
        ConfigError: the key of the model the interpreter refused.
    """
    from edge_app.trap.detect.pipeline import Pipeline
    from edge_app.trap.detect.runtime import interpreter_class

    try:
        interpreter_class()
    except ModelError as e:
        notes.append(f"models checked by sha256 only: {e.reason}")
        return
    try:
        Pipeline(cfg.detector, models_dir, embed=cfg.background.enabled).close()
    except ModelError as e:
        raise ConfigError(model_key(cfg, models_dir, e), str(e)) from None


PROBE_ATTEMPTS = 3
"""Probe attempts: another probe of the same fresh root (a technician's check-config while
systemd starts the unit) may create or remove a shared folder under ours; that race is retried,
a real refusal is not."""


def check_writable(key: str, folder: Path) -> None:
    """Prove ``folder`` can hold files: create it if need be, write a probe, remove both.

    Only a real write is proof: permission bits do not show a read-only mount, a full card or
    an ACL, and ``os.access`` answers for the real uid, not the effective one.

    Raises:
        ConfigError: ``key``, with the reason (not a folder, permission, read-only, full).
    """
    for attempt in range(PROBE_ATTEMPTS):
        try:
            _probe(key, folder)
            return
        except (FileNotFoundError, FileExistsError) as e:  # a concurrent probe's folder
            if attempt == PROBE_ATTEMPTS - 1:
                raise ConfigError(key, f"{folder} is not writable: {e.strerror}") from None
        except OSError as e:
            raise ConfigError(key, f"{folder} is not writable: {e.strerror or e}") from None


def _probe(key: str, folder: Path) -> None:
    """One attempt of :func:`check_writable`; removes only folders this attempt created."""
    missing: list[Path] = []
    existing = folder
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is not a folder")
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
        probe = folder / f"{PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"camtrap")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):  # someone else wrote into it meanwhile
                d.rmdir()


def check_mqtt(cfg: Config) -> None:
    """TLS and password files, exactly as the MQTT link checks them at start, plus readable."""
    from edge_app.trap.uplink.mqtt import check_credentials

    check_credentials(cfg)
    m = cfg.mqtt
    if not (m.enabled and m.tls):
        return
    for key, value in (("mqtt.ca_file", m.ca_file), ("mqtt.cert_file", m.cert_file),
                       ("mqtt.key_file", m.key_file)):
        if value:
            try:
                with open(value, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(key, f"cannot read {value}: {e.strerror}") from None


def check_lorawan(cfg: Config, notes: list[str]) -> None:
    """The keys file as the router reads it; a missing serial device is only a note."""
    lw = cfg.lorawan
    if not lw.enabled:
        return
    from edge_app.trap.uplink.lorawan import load_secrets

    load_secrets(lw.secrets_file)
    if "://" not in lw.port and not Path(lw.port).exists():
        notes.append(f"lorawan.port: {lw.port} does not exist now; the LoRaWAN stage will "
                     "keep trying it (alerts still go over MQTT)")
