"""``station.toml``: the base station's one config file, checked before anything starts.

The station's config is a file a person edits on a server, so it gets the trap's treatment: every
key known (a typo is an error, not a silently ignored line), every value typed and in range,
paths resolved against the file's folder, secrets named by file (never inline), and a refusal is
a :class:`~edge_app.core.errors.ConfigError` naming the key — ``camtrap station check`` and
``camtrap station`` refuse exactly the same things, because both call :func:`load`.

Sections: ``[station]`` (store, time zone, fleet file, how often units report), ``[mqtt]`` (the
broker, the account, the shared-subscription group), ``[web]`` (the page) and ``[notify]``
(phone notifications; its keys are :mod:`edge_app.station.notify`'s to check).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_app.core.config import host_problem
from edge_app.core.errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class MqttSection:
    """How the station reaches the broker."""

    host: str = "localhost"
    port: int = 8883
    prefix: str = "camtrap"
    ca_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    client_id: str = ""
    shared_group: str = ""
    receipts: bool = True
    lorawan: bool = True
    lorawan_devices: Path | None = None


@dataclass(frozen=True)
class WebSection:
    """The rangers' page."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    secret_file: Path | None = None
    boundary_file: Path | None = None
    tile_url: str = ""


@dataclass(frozen=True)
class ReviewSection:
    """What the review loop needs to train a unit's head and send it (``[review]``)."""

    models_dir: Path
    key_file: Path
    cards: tuple[str, ...]
    embedder: str = ""
    broker: str = ""
    ca_file: Path | None = None
    username: str = ""
    password_file: Path | None = None


@dataclass(frozen=True)
class StationConfig:
    """The whole file, checked."""

    path: Path
    store: Path
    timezone: str = "UTC"
    fleet_file: Path | None = None
    expected_interval_s: float = 900.0
    mqtt: MqttSection = field(default_factory=MqttSection)
    web: WebSection = field(default_factory=WebSection)
    notify: dict[str, Any] = field(default_factory=dict)
    review: ReviewSection | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


_STATION_KEYS = {"store", "timezone", "fleet_file", "expected_interval_s"}
_MQTT_KEYS = {"broker", "prefix", "ca_file", "username", "password_file", "client_id",
              "shared_group", "receipts", "lorawan", "lorawan_devices"}
_WEB_KEYS = {"enabled", "host", "port", "public_url", "secret_file", "boundary_file",
             "tile_url"}


def load(path: str | Path) -> StationConfig:
    """Read and check ``station.toml``.

    Raises:
        ConfigError: the first problem, with its dotted key.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), f"cannot read: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), f"is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(p), f"is not valid TOML: {e}") from e
    return parse(data, p.resolve().parent, p)


def parse(data: dict[str, Any], base: Path, path: Path | None = None) -> StationConfig:
    """Check a parsed file; relative paths are resolved against ``base``."""
    _only(data, {"station", "mqtt", "web", "notify", "review"}, "")
    st = _section(data, "station")
    _only(st, _STATION_KEYS, "station.")
    if "store" not in st:
        raise ConfigError("station.store", "is required: the folder for the station's "
                          "database and media")
    tz = _str(st, "station.timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("station.timezone", f"unknown time zone {tz[:60]!r} (e.g. "
                          "'Asia/Vladivostok')") from None
    interval = _num(st, "station.expected_interval_s", 900.0, 10.0, 30 * 86400.0)
    mqtt = _mqtt(_section(data, "mqtt"), base)
    return StationConfig(
        path=path or base / "station.toml",
        store=_path(st, "station.store", base) or base,
        timezone=tz,
        fleet_file=_path(st, "station.fleet_file", base),
        expected_interval_s=interval,
        mqtt=mqtt,
        web=_web(_section(data, "web"), base),
        notify=_section(data, "notify"),
        review=_review(data["review"], base, mqtt) if "review" in data else None,
    )


_REVIEW_KEYS = {"models_dir", "key_file", "cards", "embedder", "broker", "ca_file", "username",
                "password_file"}


def _review(r: Any, base: Path, mqtt: MqttSection) -> ReviewSection:
    """``[review]``: the models and signing key the station trains and signs heads with, and
    an operator account for the push (the receiver's own account would be taken over: the
    shipped broker allows one connection per account)."""
    if not isinstance(r, dict):
        raise ConfigError("review", "must be a table")
    _only(r, _REVIEW_KEYS, "review.")
    models = _path(r, "review.models_dir", base)
    if models is None or not models.is_dir():
        raise ConfigError("review.models_dir", "must be the folder of the units' model files")
    key = _path(r, "review.key_file", base)
    if key is None or not key.is_file():
        raise ConfigError("review.key_file", "must be the fleet's private signing key "
                          "('camtrap models keygen')")
    cards = r.get("cards")
    if (not isinstance(cards, list) or not cards or len(cards) > 8
            or not all(isinstance(c, str) and _NAME_RE.match(c) for c in cards)):
        raise ConfigError("review.cards", "must list the units' model cards, the detector "
                          "first (e.g. [\"yolov8n_coco_int8_640\"])")
    broker = _str(r, "review.broker", f"{mqtt.host}:{mqtt.port}")
    pw = _path(r, "review.password_file", base)
    if pw is not None and not pw.is_file():
        raise ConfigError("review.password_file", f"{pw} does not exist")
    user = _str(r, "review.username", "")
    if user and user == mqtt.username:
        raise ConfigError("review.username", "must be another account than mqtt.username "
                          "(the broker allows one connection per account)")
    return ReviewSection(models_dir=models, key_file=key, cards=tuple(cards),
                         embedder=_str(r, "review.embedder", ""), broker=broker,
                         ca_file=_path(r, "review.ca_file", base) or mqtt.ca_file,
                         username=user, password_file=pw)


def _mqtt(m: dict[str, Any], base: Path) -> MqttSection:
    _only(m, _MQTT_KEYS, "mqtt.")
    broker = _str(m, "mqtt.broker", "localhost:8883")
    host, sep, port_text = broker.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError("mqtt.broker", f"must be HOST:PORT, got {broker[:60]!r}")
    problem = host_problem(host.strip("[]"))
    if problem:
        raise ConfigError("mqtt.broker", problem)
    group = _str(m, "mqtt.shared_group", "")
    if group and not _NAME_RE.match(group):
        raise ConfigError("mqtt.shared_group", "must be 1-64 letters, digits, - or _")
    prefix = _str(m, "mqtt.prefix", "camtrap")
    if not prefix or any(c in prefix for c in "#+") or prefix.startswith("$"):
        raise ConfigError("mqtt.prefix", "must be a plain topic level (no #, +, leading $)")
    ca = _path(m, "mqtt.ca_file", base)
    pw = _path(m, "mqtt.password_file", base)
    devices = _path(m, "mqtt.lorawan_devices", base)
    for key, f in (("mqtt.ca_file", ca), ("mqtt.password_file", pw),
                   ("mqtt.lorawan_devices", devices)):
        if f is not None and not f.is_file():
            raise ConfigError(key, f"{f} does not exist")
    return MqttSection(host=host, port=int(port_text), prefix=prefix, ca_file=ca,
                       username=_str(m, "mqtt.username", ""), password_file=pw,
                       client_id=_str(m, "mqtt.client_id", ""), shared_group=group,
                       receipts=_bool(m, "mqtt.receipts", True),
                       lorawan=_bool(m, "mqtt.lorawan", True), lorawan_devices=devices)


def _web(w: dict[str, Any], base: Path) -> WebSection:
    _only(w, _WEB_KEYS, "web.")
    host = _str(w, "web.host", "127.0.0.1")
    problem = host_problem(host)
    if problem:
        raise ConfigError("web.host", problem)
    port = _num(w, "web.port", 8080, 0, 65535)
    if port != int(port):
        raise ConfigError("web.port", "must be an integer")
    url = _str(w, "web.public_url", "")
    if url and not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
        raise ConfigError("web.public_url", "must be an http(s) URL such as "
                          "'https://station.example/'")
    tiles = _str(w, "web.tile_url", "")
    if tiles and not (tiles.startswith(("https://", "http://")) and "{z}" in tiles):
        raise ConfigError("web.tile_url", "must be an http(s) URL with {z}, {x} and {y}")
    boundary = _path(w, "web.boundary_file", base)
    if boundary is not None and not boundary.is_file():
        raise ConfigError("web.boundary_file", f"{boundary} does not exist")
    return WebSection(enabled=_bool(w, "web.enabled", True), host=host, port=int(port),
                      public_url=url, secret_file=_path(w, "web.secret_file", base),
                      boundary_file=boundary, tile_url=tiles)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    v = data.get(name, {})
    if not isinstance(v, dict):
        raise ConfigError(name, "must be a table")
    return v


def _only(d: dict[str, Any], allowed: set[str], prefix: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        known = ", ".join(sorted(allowed))
        raise ConfigError(f"{prefix}{extra[0]}", f"unknown key (known: {known})")


def _str(d: dict[str, Any], key: str, default: str) -> str:
    v = d.get(key.rpartition(".")[2], default)
    if not isinstance(v, str) or len(v) > 1024:
        raise ConfigError(key, "must be a string (at most 1024 characters)")
    return v


def _bool(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key.rpartition(".")[2], default)
    if not isinstance(v, bool):
        raise ConfigError(key, "must be true or false")
    return v


def _num(d: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = d.get(key.rpartition(".")[2], default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(key, "must be a finite number")
    if not lo <= v <= hi:
        raise ConfigError(key, f"must be {lo:g} to {hi:g}, got {v:g}")
    return float(v)


def _path(d: dict[str, Any], key: str, base: Path) -> Path | None:
    v = _str(d, key, "")
    if not v:
        return None
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p
