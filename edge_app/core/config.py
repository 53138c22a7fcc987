"""TOML configuration → typed, validated, frozen dataclasses.

Strict on purpose: a unit in the field is configured once by a technician and then runs for
months, so a typo (``burst_frame = 5``) must fail at ``camtrap check-config`` on the bench, not
silently fall back to a default. Every error names the dotted key and the reason.

Plain dataclasses instead of pydantic: pydantic-core has no wheels for the armv6/armv7 Pis,
and the schema is small enough that ~100 lines of validation are cheaper than a dependency.
Field constraints live in ``metadata``: ``min``/``max`` (inclusive), ``gt`` (exclusive),
``path`` (a file or folder) and ``doc`` (shown by ``camtrap check-config --explain``).

The file is untrusted input like any other (ARCHITECTURE §2, the guarded door): TOML allows
``nan`` and ``inf``, and a NaN threshold turns every comparison false (a trap that alerts on
nothing, silently), so every float key must be finite.

Relative paths are taken from the config file's folder, not from the current directory: the
same file must mean the same trap whether systemd starts it from ``/`` or a technician checks
it from their home folder. Only :func:`load` knows the file, so it resolves them; :func:`parse`
(remote settings, the demo) leaves values as given.

This module checks the file alone. Whether the files and folders it names exist, the models
verify and ``storage.root`` is writable is :mod:`edge_app.trap.preflight`, which ``camtrap
check-config`` and ``camtrap run`` share.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from edge_app.core.errors import ConfigError
from edge_app.core.guard import Refused, finite_number

T = TypeVar("T")


def _f(default: Any, doc: str, **limits: float) -> Any:
    """A dataclass field with a default, a doc line and numeric limits."""
    if isinstance(default, list):
        items: list[Any] = list(default)
        return field(default_factory=lambda: list(items), metadata={"doc": doc, **limits})
    return field(default=default, metadata={"doc": doc, **limits})


def _path(default: str, doc: str) -> Any:
    """A file or folder key: relative values are taken from the config file's folder."""
    return field(default=default, metadata={"doc": doc, "path": True})


PATH_NOTE = "a relative path is taken from the config file's folder"
"""Added to the ``--explain`` line of every path key."""

MAX_PIXELS_DEFAULT = 100_000_000
"""Default ``detector.max_pixels``: 100 MP, half as much again as the largest Pi camera
(64 MP) and well above the 12 MP ones, below the 192 MP of a 16000×12000 frame."""
MAX_PIXELS_LIMIT = 2 * 89_478_485
"""Pillow refuses to open an image above twice its ``Image.MAX_IMAGE_PIXELS`` whatever we
say (``DecompressionBombError``), so a larger ``detector.max_pixels`` could not be honoured."""


@dataclass(frozen=True)
class LocationConfig:
    lat: float = _f(0.0, "latitude, decimal degrees (WGS 84)", min=-90, max=90)
    lon: float = _f(0.0, "longitude, decimal degrees (WGS 84)", min=-180, max=180)
    name: str = _f("", "site name for people, e.g. 'Kedrovaya Pad ridge 3'")


@dataclass(frozen=True)
class UnitConfig:
    id: str = _f("", "unit id, e.g. LL-042; used in topics, event ids and file names")
    location: LocationConfig = field(default_factory=LocationConfig)


@dataclass(frozen=True)
class HardwareConfig:
    backend: Literal["sim", "pi"] = _f(
        "pi", "'pi' drives the real PIR and camera; 'sim' uses gpiozero mock pins and a "
        "replay or synthetic camera"
    )


@dataclass(frozen=True)
class TriggerConfig:
    source: Literal["gpio", "mcu"] = _f(
        "gpio", "where motion comes from: gpio = the PIR on trigger.pin of the Pi; mcu = "
        "TRIGGER frames of the supervisor MCU ([mcu]), stamped by its RTC (triggers taken "
        "while the Pi was off or booting keep their real time)")
    pin: int = _f(17, "BCM pin of the PIR output (active high)", min=0, max=27)
    device: Literal["motion_sensor", "edge"] = _f(
        "motion_sensor", "motion_sensor: gpiozero MotionSensor, sampled at sample_rate_hz "
        "(~0.3 % CPU idle here); edge: gpiozero DigitalInputDevice on pin interrupts (no "
        "wake-ups while idle; best on battery)")
    sample_rate_hz: float = _f(10.0, "motion_sensor: how often gpiozero samples the PIR pin",
                               gt=0, max=1000)
    debounce_s: float = _f(0.05, "a PIR pulse shorter than this is noise", min=0, max=5)
    holdoff_s: float = _f(5.0, "after a trigger, further edges are ignored this long",
                          min=0, max=3600)
    sim_every_s: float = _f(0.0, "sim backend only: a simulated animal walks past every N s "
                            "(0 = never)", min=0)
    warmup_s: float = _f(60.0, "PIR warm-up after power-on: the HC-SR501 needs about a minute "
                         "and gives 0-3 spurious triggers meanwhile (formats-and-field §8.2); "
                         "camtrap walktest ignores triggers this long", min=0, max=600)


@dataclass(frozen=True)
class CameraConfig:
    source: Literal["replay", "synthetic", "picamera2", "picamera2-fake"] = _f(
        "picamera2", "replay: a folder of JPEGs; synthetic: generated scenes; picamera2: the Pi "
        "camera; picamera2-fake: the Pi camera's code over a fake of the picamera2 API showing "
        "the images of camera.images_dir (the live path in simulation)")
    images_dir: str = _path("", "replay, picamera2-fake: the folder of JPEGs")
    order: Literal["sorted", "shuffle"] = _f("sorted", "replay: order of the images")
    seed: int = _f(1, "replay shuffle / synthetic scene seed")
    width: int = _f(1280, "frame width in pixels (synthetic, picamera2)", min=64, max=8192)
    height: int = _f(720, "frame height in pixels (synthetic, picamera2)", min=64, max=8192)
    jpeg_quality: int = _f(85, "JPEG quality of captured frames", min=10, max=100)
    burst_frames: int = _f(3, "frames captured after each trigger", min=1, max=30)
    burst_interval_s: float = _f(0.3, "time between burst frames", min=0, max=10)
    pre_trigger_frames: int = _f(1, "frames kept from just before the trigger (ring buffer)",
                                 min=0, max=10)
    lores_width: int = _f(640, "picamera2: width of the small YUV420 stream that feeds the "
                          "pre-trigger ring and the motion gate (height follows the frame's "
                          "aspect ratio; at most camera.width)", min=64, max=4096)
    capture_timeout_s: float = _f(5.0, "a capture that has not returned after this long is "
                                  "abandoned and the camera is closed and reopened in-process "
                                  "(a frame takes ~33 ms; night exposures up to ~1 s)",
                                  min=0.5, max=120)
    open_timeout_s: float = _f(15.0, "opening the camera (start, exposure settling) or closing "
                               "it is abandoned after this long", min=1, max=300)
    settle_timeout_s: float = _f(2.0, "after start, wait at most this long for exposure and "
                                 "white balance to settle before the first shot (white balance "
                                 "takes 0.5-0.7 s)", min=0, max=30)
    max_reopens: int = _f(3, "reopenings in a row that bring no frame before the camera is "
                          "given up (the capture stage then fails and the MCU is asked for a "
                          "power cycle)", min=1, max=20)
    reopen_backoff_s: float = _f(1.0, "wait before the first reopening; doubles for each "
                                 "further one, up to 30 s", min=0, max=60)


@dataclass(frozen=True)
class ThresholdsConfig:
    animal: float = _f(0.0, "detector confidence for an animal box (0 = detector."
                       "score_threshold)", min=0, max=1)
    person: float = _f(0.0, "detector confidence for a person box (0 = detector."
                       "score_threshold)", min=0, max=1)
    vehicle: float = _f(0.0, "detector confidence for a vehicle box (0 = detector."
                        "score_threshold)", min=0, max=1)
    leopard: float = _f(0.0, "confidence to name a leopard (0 = detector.species_threshold)",
                        min=0, max=1)
    tiger: float = _f(0.0, "confidence to name a tiger (0 = detector.species_threshold)",
                      min=0, max=1)
    other_big_cat: float = _f(0.0, "confidence to name another big cat (0 = detector."
                              "species_threshold)", min=0, max=1)


@dataclass(frozen=True)
class DetectorConfig:
    models_dir: str = _path("", "folder holding the model files; --models wins over it, and "
                            "without either: CAMTRAP_MODELS, /var/lib/camtrap/models, "
                            "../shared/data/models beside a clone")
    detector: str = _f("yolov8n_coco_int8_640", "model card name of the detector")
    classifier: str = _f("mobilenet_v2_imagenet_uint8_224",
                         "model card name of the crop classifier ('' = none)")
    num_threads: int = _f(0, "interpreter threads (0 = number of CPUs)", min=0, max=64)
    max_pixels: int = _f(MAX_PIXELS_DEFAULT, "an image with more pixels than this (read from "
                         "its header, before decoding) is refused as unreadable: camtrap "
                         "detect reports it and goes on, the trap keeps the trigger",
                         min=64 * 64, max=MAX_PIXELS_LIMIT)
    score_threshold: float = _f(0.25, "minimum detector confidence for a box", min=0, max=1)
    iou_threshold: float = _f(0.45, "non-maximum suppression IoU", gt=0, max=1)
    species_threshold: float = _f(0.35, "minimum classifier confidence to name a species",
                                  min=0, max=1)
    whole_frame_species_threshold: float = _f(
        0.5, "species confidence needed when the detector found nothing", min=0, max=1)
    crop_context: float = _f(0.15, "extra margin around a box for the crop classifier, as a "
                             "fraction of the box size", min=0, max=2)
    target_min_height: float = _f(
        0.12, "a leopard or tiger is named only in a detector box at least this fraction of "
        "the frame's height (smaller spotted/striped cats, e.g. a leopard cat, are reported "
        "as other_big_cat); lower it for a camera far from the trail", min=0, max=1)
    target_min_area: float = _f(
        0.015, "likewise, the box's least area as a fraction of the frame's", min=0, max=1)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    motion_gate: bool = _f(False, "skip the detector on burst frames with no change against "
                           "the pre-trigger frame (they take that frame's result)")
    motion_size: int = _f(64, "motion gate: width in pixels of the greyscale copies compared",
                          min=16, max=640)
    motion_pixel_delta: int = _f(25, "motion gate: grey-level change (0-255) that counts a "
                                 "pixel as changed", min=1, max=255)
    motion_min_fraction: float = _f(0.002, "motion gate: a frame with fewer changed pixels "
                                    "than this fraction counts as unchanged", min=0, max=1)
    embedder: str = _f("mobilenet_v1_embedding_uint8_224",
                       "model card of the frame embedding used by detector.head and "
                       "[background] (computed once per frame, only when one of them is on)")
    head: str = _f("", "site head file written by 'camtrap models adapt' ('' = the head the "
                   "active signed model pack ships, if any); a relative path is taken from "
                   "the models folder")
    head_threshold: float = _f(0.0, "the head votes 'empty' at or above this P(empty) (0 = "
                               "the cross-validated threshold stored in the head file)",
                               min=0, max=1)
    second_look_tiles: bool = _f(True, "second look: when every raw score of a frame stays "
                                 "below second_look_below, run the detector again on 2x2 "
                                 "overlapping windows of the frame at full resolution (4 "
                                 "invokes, only on such frames), with a detector whose card "
                                 "says the tiles were measured to help (second_look_tiles in "
                                 "the card: yolov8n_coco_int8_640 keeps 86 of 106 field-set "
                                 "animals instead of 80, every empty still discarded; the "
                                 "SSD's card does not: it keeps a blank frame with them)")
    second_look_ir: bool = _f(False, "second look: on such a frame that is infrared (grey), "
                              "run the detector again on a contrast-stretched copy (1 invoke; "
                              "off: it kept no animal more on the field set)")
    second_look_detector: str = _f("", "second look: model card of a second detector run on "
                                   "such a frame as a second voter ('' = none; the pack's SSD "
                                   "kept 3 animals more but also an empty frame)")
    second_look_below: float = _f(0.15, "the second look runs only when every raw score of the "
                                  "first pass is below this (keep it at policy.empty_below: "
                                  "frames the policy would discard)", min=0, max=1)
    second_look_threshold: float = _f(0.3, "a box the second look finds counts only at this "
                                      "confidence or above (and its category's threshold)",
                                      min=0, max=1)
    second_look_overlap: float = _f(0.2, "second look: fraction of a window's side shared "
                                    "with its neighbour", min=0, max=0.9)
    second_look_ir_saturation: float = _f(0.015, "second look: a frame whose mean colour "
                                          "saturation (0-1) is below this counts as infrared",
                                          min=0, max=1)
    pack_public_key: str = _f("", "the fleet's Ed25519 public key (base64 of the 32 raw bytes, "
                              "the .pub file 'camtrap models keygen' writes) that signed model "
                              "packs must verify against ('' = 'camtrap models install' refuses "
                              "every pack)")


@dataclass(frozen=True)
class PolicyConfig:
    alert_on: list[str] = _f(["leopard", "tiger", "person", "vehicle"],
                             "labels/species that raise an alert (animal, person, vehicle, "
                             "leopard, tiger, other_big_cat)")
    empty_below: float = _f(0.15, "a trigger is confidently empty only when every score in "
                            "every frame stays below this", min=0, max=1)
    audit_every: int = _f(20, "keep 1 in N discarded triggers locally, marked, to measure the "
                          "filter's miss rate (0 = never)", min=0)
    vote: Literal["max", "mean", "k_of_n"] = _f(
        "max", "how a burst's frames are combined per label/species: best frame, mean over "
        "frames, or the k-th best frame (needs vote_k frames to agree)")
    vote_k: int = _f(2, "k_of_n vote: frames that must detect a label/species (capped at the "
                     "frames analysed)", min=1, max=30)
    motion_keep_fraction: float = _f(
        0.1, "with detector.motion_gate: a burst frame where at least this fraction of the "
        "small greyscale copy changed against the pre-trigger frame is kept (the motion "
        "stage's vote; 0 = motion does not vote)", min=0, max=1)


@dataclass(frozen=True)
class BackgroundConfig:
    """The self-learned background (edge_app/trap/detect/background.py)."""

    enabled: bool = _f(False, "learn this site's empty scenes (confidently empty frames and "
                       "scheduled shots) in <storage.root>/background.db and keep any frame "
                       "unlike all of them")
    min_similarity: float = _f(0.85, "a frame whose cosine similarity to every known "
                               "background is below this is kept", min=0, max=1)
    min_entries: int = _f(4, "the background votes only once it knows this many scenes "
                          "(until then it abstains)", min=1, max=4096)
    max_entries: int = _f(256, "most scenes remembered (4 KB of memory, 2 KB of disk each); "
                          "beyond it the oldest is dropped", min=1, max=4096)
    max_age_days: float = _f(30.0, "scenes older than this are forgotten (seasons change)",
                             gt=0)
    dedupe_similarity: float = _f(0.99, "a new scene at least this similar to a known one "
                                  "only refreshes that one's time", min=0, max=1)
    learn_below: float = _f(0.05, "a discarded trigger's frames are learnt only when every "
                            "detector and classifier score stays below this", min=0, max=1)
    shot_every_s: float = _f(10800.0, "take a background shot without a trigger this often "
                             "(0 = never); frames with no detection are learnt", min=0)
    shots_in_sim: bool = _f(False, "also take scheduled shots with hardware.backend = 'sim' "
                            "(a replay camera shows animals, which would poison the set)")


@dataclass(frozen=True)
class StorageConfig:
    root: str = _path("/var/lib/camtrap", "where media and the database live; must be "
                      "writable")
    thumb_px: int = _f(320, "longest side of thumbnails", min=32, max=2048)
    thumb_quality: int = _f(70, "JPEG quality of thumbnails", min=10, max=100)
    thumb_max_kb: float = _f(20.0, "a thumbnail larger than this is encoded again at lower "
                             "quality, then smaller (0 = no limit)", min=0)
    min_free_mb: float = _f(64.0, "below this much free space the card is 'disk_low': stored "
                            "images, then thumbnails, are pruned (oldest first; alerts never)",
                            min=0)
    check_every_s: float = _f(60.0, "how often free space is checked (and pruned)", gt=0)
    reserve_mb: float = _f(8.0, "space held in <root>/.reserve and released when the card is "
                           "full and nothing is left to prune, so alerts can still be stored "
                           "(0 = no reserve)", min=0)


@dataclass(frozen=True)
class OutboxConfig:
    backoff_min_s: float = _f(2.0, "first retry delay after a failed send", gt=0)
    backoff_max_s: float = _f(300.0, "longest retry delay", gt=0)
    inflight_timeout_s: float = _f(60.0, "a sent message with no PUBACK after this is re-sent",
                                   gt=0)
    max_inflight: int = _f(20, "messages awaiting PUBACK at once (capped by the broker's "
                           "Receive Maximum; more helps on high-latency links)", min=1,
                           max=1000)
    alert_expiry_s: float = _f(0.0, "drop undelivered alerts after this (0 = never)", min=0)
    status_expiry_s: float = _f(3600.0, "drop undelivered status messages after this "
                                "(0 = never)", min=0)
    event_expiry_s: float = _f(0.0, "drop undelivered non-alert events after this (0 = never)",
                               min=0)
    thumb_expiry_s: float = _f(0.0, "drop undelivered thumbnails after this (0 = never)", min=0)
    image_expiry_s: float = _f(7 * 86400.0, "drop undelivered full images after this "
                               "(0 = never); the file stays on the card", min=0)
    receipt_timeout_s: float = _f(300.0, "with mqtt.receipts: an event acknowledged by the "
                                  "broker but with no receipt after this is sent again", gt=0)
    receipt_timeout_max_s: float = _f(3600.0, "the receipt timeout doubles per resend up to "
                                      "this", gt=0)
    max_media_attempts: int = _f(10, "a media row is given up ('dead') after this many "
                                 "attempts; alerts and events are never given up", min=1)


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _f(True, "send over MQTT")
    host: str = _f("localhost", "broker host")
    port: int = _f(8883, "broker port", min=1, max=65535)
    topic_prefix: str = _f("camtrap", "first topic level")
    client_id: str = _f("", "fixed client id (default camtrap-<unit id>)")
    keepalive_s: int = _f(60, "MQTT keepalive", min=5, max=65535)
    session_expiry_s: int = _f(7 * 86400, "broker keeps our session this long while we are "
                               "offline", min=0)
    tls: bool = _f(True, "use TLS")
    ca_file: str = _path("", "CA certificate for the broker (TLS)")
    cert_file: str = _path("", "client certificate (TLS, optional)")
    key_file: str = _path("", "client key (TLS, with cert_file)")
    allow_insecure: bool = _f(False, "allow plain TCP to a host that is not loopback")
    reconnect_min_s: float = _f(1.0, "first reconnect delay", gt=0)
    reconnect_max_s: float = _f(120.0, "longest reconnect delay", gt=0)
    username: str = _f("", "MQTT user name (default: the unit id, which the broker's ACL "
                       "pattern camtrap/%u/# expects); used with password_file")
    password_file: str = _path("", "file holding the MQTT password (one line); must be mode "
                               "0600")
    stats_interval_s: float = _f(300.0, "publish health on <prefix>/<unit>/stats this often "
                                 "(0 = never)", min=0)
    receipts: bool = _f(True, "keep events in the outbox ('acked-by-broker') until a "
                        "receiver's receipt on <prefix>/<unit>/ack; off when no receiver runs")
    chunk_bytes: int = _f(32768, "media chunk size", min=256, max=1048576)
    media_window: int = _f(4, "chunks of one media file awaiting PUBACK at once", min=1,
                           max=64)
    max_message_bytes: int = _f(262144, "never publish a message larger than this (keep at or "
                                "below the broker's max_packet_size)", min=1024)
    send_images: bool = _f(True, "send full images (after alerts, status, events, thumbnails)")
    image_min_link_s: float = _f(30.0, "full images only go once the link has been up and "
                                 "clean (no lost message) this long", min=0)


@dataclass(frozen=True)
class LorawanConfig:
    """LoRaWAN alert link (trap/uplink/router.py). Keys live in ``secrets_file``, never here."""

    enabled: bool = _f(False, "send 11-byte alerts (and status) over a LoRaWAN AT modem")
    module: Literal["rak3172", "wio-e5"] = _f("rak3172", "modem: RAK3172 (RUI3 AT firmware) "
                                              "or Seeed Wio-E5")
    port: str = _f("/dev/ttyS0", "serial port or pyserial URL of the modem")
    baudrate: int = _f(0, "serial speed (0 = the module's default: 115200 RAK3172, 9600 "
                       "Wio-E5)", min=0, max=921600)
    region: Literal["RU864", "EU868"] = _f("RU864", "LoRaWAN region (band plan)")
    secrets_file: str = _path("/etc/camtrap/lorawan.toml", "TOML with dev_eui, join_eui, "
                              "app_key; must be mode 0600")
    mode: Literal["always", "fallback"] = _f(
        "always", "always: every alert also goes over LoRa (ARCHITECTURE: alerts go on every "
        "link); fallback: only while MQTT has not delivered it (saves airtime)")
    fallback_after_s: float = _f(60.0, "fallback: while MQTT looks connected, wait this long "
                                 "for it to deliver before using LoRa airtime", min=0)
    confirmed: bool = _f(True, "send alerts as confirmed uplinks (retried until ACKed)")
    adr: bool = _f(True, "adaptive data rate (the network picks the data rate)")
    data_rate: int = _f(0, "data rate when adr is off (DR0 = SF12 … DR5 = SF7)", min=0, max=5)
    duty_cycle: float = _f(0.01, "duty cycle of the default channels' sub-band (a fraction)",
                           gt=0, max=0.1)
    fair_use: bool = _f(False, "also keep TTN's fair-use policy: 30 s airtime and 10 downlinks "
                        "per 24 h")
    max_attempts: int = _f(8, "transmissions of one alert before it is given up on LoRa (it "
                           "still goes by MQTT)", min=1, max=100)
    max_age_s: float = _f(6 * 3600.0, "alerts older than this are not sent over LoRa (stale "
                          "news costs airtime others need)", gt=0)
    priority: list[str] = _f(["person", "vehicle", "tiger", "leopard", "other_big_cat",
                              "animal"], "order in which waiting alerts use the airtime (species "
                             "or label); unlisted ones go last")
    status_every_h: float = _f(6.0, "status report (fPort 11) every N hours (0 = never)",
                               min=0, max=255)
    status_reserve: int = _f(3, "a status is only sent if the airtime left in the window "
                             "still allows this many alerts", min=0, max=100)
    join_backoff_min_s: float = _f(30.0, "first wait after a failed join (doubles, with "
                                   "jitter)", gt=0)
    join_backoff_max_s: float = _f(3600.0, "longest wait between join attempts", gt=0)
    command_timeout_s: float = _f(3.0, "an AT command with no final reply after this has "
                                  "failed", gt=0, max=60)
    accept_commands: bool = _f(True, "act on downlink commands (fPort 20: threshold, status, "
                               "mode)")


@dataclass(frozen=True)
class WatchdogConfig:
    stage_deadline_s: float = _f(
        120.0, "capture, detect and store must each show progress (finish an item, or wait "
        "for one) this often, or the systemd watchdog stops being fed and the service is "
        "restarted; must cover the longest burst and the slowest detection", min=1, max=3600)


@dataclass(frozen=True)
class McuConfig:
    """The supervisor MCU on the Pi's UART (firmware/PROTOCOL.md); in use when
    ``trigger.source = "mcu"`` or ``enabled``."""

    enabled: bool = _f(False, "talk to the supervisor MCU (power, battery, solar, "
                       "temperature, RTC) also with trigger.source = 'gpio'; trigger.source "
                       "= 'mcu' uses it anyway")
    port: str = _f("/dev/serial0", "serial port or pyserial URL of the MCU's UART (Pi "
                   "GPIO14/15); hardware.backend = 'sim' runs the firmware on a pty instead")
    baudrate: int = _f(115200, "UART speed (the firmware's is 115200)", min=9600, max=921600)
    heartbeat_s: float = _f(30.0, "send a heartbeat this often; keep it well under the "
                            "firmware's heartbeat_timeout_s (120 s) or the MCU power-cycles "
                            "a healthy Pi", min=1, max=600)
    status_every_s: float = _f(60.0, "ask for battery, solar, temperature and counters this "
                               "often (the stats message shows the latest)", min=5, max=3600)
    time_sync_every_s: float = _f(3600.0, "set the MCU's RTC from the Pi's clock at most this "
                                  "often, only while NTP or GPS keeps the Pi's clock synced",
                                  min=60, max=86400)
    power_off_timeout_s: int = _f(60, "after POWER_OFF the MCU cuts the Pi's power when the "
                                  "halt pin goes high, or after this many seconds at the "
                                  "latest", min=1, max=600)
    reply_timeout_s: float = _f(0.5, "an MCU command with no reply after this is sent again",
                                gt=0, max=10)
    attempts: int = _f(3, "sends of one MCU command before it has failed", min=1, max=10)


@dataclass(frozen=True)
class PowerConfig:
    """Power modes (edge_app/trap/power.py) and the SCHEDULE the supervisor MCU holds.

    Windows are UTC because the MCU's RTC and the SCHEDULE frame are UTC (minutes after UTC
    midnight) and UTC has no daylight-saving jumps; the doc line gives the Primorye example.
    The MCU's power-off timeout is ``mcu.power_off_timeout_s`` (one key, not two).
    """

    mode: Literal["always-on", "gated", "hybrid"] = _f(
        "always-on", "always-on: the Pi stays up, camera streaming (0.1 s trigger latency, "
        "days on a battery); gated: the MCU powers the Pi per trigger, it shuts down when the "
        "outbox is delivered (boot-time latency, months on a battery); hybrid: always-on in "
        "windows or while the battery is high, gated otherwise; see camtrap power-budget")
    windows: list[str] = _f([], "hybrid: always-on windows 'HH:MM-HH:MM' in UTC (end before "
                            "start wraps midnight; at most 6), e.g. Primorye (UTC+10) dusk to "
                            "dawn 18:00-07:00 local is '08:00-21:00'")
    hybrid_above_v: float = _f(0.0, "hybrid: also always-on while the battery is at or above "
                               "this voltage (0 = windows only)", min=0, max=65.535)
    hybrid_hysteresis_v: float = _f(0.2, "hybrid: the battery rule ends below hybrid_above_v "
                                    "minus this (no flapping on load sag)", min=0, max=5)
    idle_shutdown_s: float = _f(20.0, "gated: shut down once the outbox is delivered and no "
                                "trigger came for this long (each second up costs ~1.6 W on "
                                "a Zero 2 W with the camera on)", min=1, max=3600)
    max_uptime_s: float = _f(300.0, "gated: shut down after this long up per wake even if the "
                             "outbox is not delivered (the link is down; the next wake "
                             "retries)", min=10, max=86400)


@dataclass(frozen=True)
class IrConfig:
    """Day/night (edge_app/trap/daynight.py) and the IR outputs (trap/hardware/ir.py)."""

    enabled: bool = _f(False, "switch the IR-cut filter and pulse the IR illuminator by the "
                       "light level in the camera's metadata (the sun at unit.location until "
                       "the first reading)")
    filter: Literal["none", "level", "pulse"] = _f(
        "pulse", "IR-cut filter drive: none (no switchable filter); level: filter_night_pin "
        "held active at night; pulse: a latching filter moved by a filter_ms pulse on "
        "filter_night_pin (filter out) or filter_day_pin (filter in)")
    filter_night_pin: int = _f(5, "BCM pin: level: active at night; pulse: pulsed to take "
                               "the filter out", min=0, max=27)
    filter_day_pin: int = _f(6, "BCM pin pulsed to put the filter back in (pulse only)",
                             min=0, max=27)
    filter_active_high: bool = _f(True, "the filter pins are active high (false: active low)")
    filter_ms: float = _f(100.0, "pulse length (pulse) or settle wait (level) for the filter "
                          "to move; see the filter's data sheet", min=1, max=1000)
    led_pin: int = _f(13, "BCM pin switching the IR illuminator (a MOSFET or the board's "
                      "enable input)", min=0, max=27)
    led_active_high: bool = _f(True, "the illuminator pin is active high (false: active low)")
    night_below_lux: float = _f(10.0, "day → night when the camera's Lux falls below this",
                                gt=0, max=100000)
    day_above_lux: float = _f(40.0, "night → day when Lux rises above this; keep it well above "
                              "night_below_lux (with the filter out the sensor also sees "
                              "near-IR, so dawn reads brighter in night mode)", gt=0,
                              max=100000)
    night_above_exposure: float = _f(400.0, "without Lux: day → night when ExposureTime (ms) "
                                     "× AnalogueGain rises above this (the camera runs out of "
                                     "exposure)", gt=0, max=1000000)
    day_below_exposure: float = _f(100.0, "without Lux: night → day when ExposureTime (ms) × "
                                   "AnalogueGain falls below this", gt=0, max=1000000)
    dwell_s: float = _f(300.0, "after a switch stay in day or night at least this long "
                        "(headlights, torches, clouds)", min=0, max=86400)
    settle_s: float = _f(0.6, "illuminator on this long before a night frame so exposure "
                         "settles (adds to the night trigger latency)", min=0, max=5)
    max_on_s: float = _f(5.0, "the illuminator is switched off after this long on, even when "
                         "a capture hangs", gt=0, max=120)
    illuminator_w: float = _f(6.0, "the illuminator's draw in W, for the power budget (two "
                              "3 W 850 nm boards)", min=0, max=100)
    shed_below_v: float = _f(0.0, "battery (MCU reading) below this: night frames without the "
                             "illuminator, shed first (0 = never); set it above the MCU's "
                             "low-voltage cut-off", min=0, max=65.535)


WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` → (start, end) in minutes after midnight; end < start wraps midnight.

    Raises:
        ValueError: not that shape, or start == end (empty or whole-day: say which you mean
            with the mode instead).
    """
    m = WINDOW_RE.match(text.strip())
    if m is None:
        raise ValueError(f"must be 'HH:MM-HH:MM' (24 h), got {text!r}")
    start = int(m.group(1)) * 60 + int(m.group(2))
    end = int(m.group(3)) * 60 + int(m.group(4))
    if start == end:
        raise ValueError(f"start and end are the same in {text!r}")
    return start, end


CELLULAR_MAX_WINDOWS = 6
PLAN_MONTH_S = 31 * 86400.0
"""The longest plan month: how long a held full image may wait for the rollover."""


@dataclass(frozen=True)
class CellularConfig:
    """The LTE modem under ModemManager, its link policy and the SIM's data plan
    (edge_app/trap/cellular/)."""

    enabled: bool = _f(False, "manage the LTE modem through ModemManager (D-Bus); off: the "
                       "MQTT link assumes an IP route exists, as before")
    mode: Literal["always", "on-demand", "windows"] = _f(
        "on-demand", "always: the bearer stays up (commands arrive at once, the modem draws "
        "power all day); on-demand: up when the outbox holds work for MQTT, and "
        "status_every_s after it was last up for commands and status, down after "
        "idle_disconnect_s; windows: up only inside the windows")
    windows: list[str] = _f([], "windows mode: 'HH:MM-HH:MM' in the timezone below (end before "
                            "start wraps midnight; at most 6)")
    timezone: str = _f("UTC", "the windows' and the data plan's time zone, an IANA name (e.g. "
                       "Asia/Vladivostok)")
    status_every_s: float = _f(1800.0, "on-demand: connect at least this often so the station's "
                               "commands and the status report get through (0 = only for the "
                               "outbox)", min=0, max=7 * 86400)
    idle_disconnect_s: float = _f(120.0, "on-demand: disconnect once nothing was queued or in "
                                  "flight for this long", min=5, max=86400)
    connect_timeout_s: float = _f(90.0, "a connect that has not given a bearer within this long "
                                  "counts as failed (backoff)", min=5, max=3600)
    retry_base_s: float = _f(30.0, "first wait after a failed connect (doubles, jittered)",
                             min=1, max=86400)
    retry_cap_s: float = _f(1800.0, "longest wait between connect attempts", min=1,
                            max=86400)
    modem_off_when_idle: bool = _f(True, "disable the modem (radio off, low power) while the "
                                   "link is meant to be down")
    apn: str = _f("", "the SIM's APN for Simple.Connect ('' = the modem's default profile)")
    signal_rate_s: int = _f(60, "ModemManager Signal.Setup refresh rate (RSSI/RSRP/SINR; 0 = "
                            "do not ask)", min=0, max=3600)
    plan_mb: float = _f(0.0, "the SIM's monthly data plan in MB (10^6 bytes; 0 = no plan, "
                        "every image goes)", min=0, max=1e7)
    cycle_day: int = _f(1, "day of the month the plan restarts (29-31 mean the last day in "
                        "shorter months)", min=1, max=31)
    full_image_margin: float = _f(0.1, "full images go only while the projected month stays "
                                  "under plan_mb × (1 - this); held ones wait in the outbox "
                                  "(outbox.image_expiry_s must then be 0 or ≥ 31 days)", min=0,
                                  max=0.9)

    def window_minutes(self) -> tuple[tuple[int, int], ...]:
        """The windows as (start, end) minutes after local midnight (checked at parse)."""
        return tuple(parse_window(w) for w in self.windows)


@dataclass(frozen=True)
class Config:
    unit: UnitConfig = field(default_factory=UnitConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    lorawan: LorawanConfig = field(default_factory=LorawanConfig)
    mcu: McuConfig = field(default_factory=McuConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    ir: IrConfig = field(default_factory=IrConfig)
    cellular: CellularConfig = field(default_factory=CellularConfig)

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"camtrap-{self.unit.id}"

    @property
    def mcu_in_use(self) -> bool:
        """The supervisor MCU is talked to (``trigger.source = "mcu"`` or ``mcu.enabled``)."""
        return self.trigger.source == "mcu" or self.mcu.enabled


ALERT_LABELS = frozenset({"animal", "person", "vehicle", "leopard", "tiger", "other_big_cat"})


def _typename(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, tp: Any, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp`` and the field limits."""
    origin = get_origin(tp)
    if is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"must be one of {_typename(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        return [_convert(f"{key}[{i}]", item_tp, v, {}) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported union at {key}")  # pragma: no cover - schema bug
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        try:  # the guarded door's rule (TOML's nan, inf and 1e999; an int beyond a float)
            value = finite_number(value, key)
        except (Refused, OverflowError):
            raise ConfigError(key, f"must be a finite number, got {value}") from None
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported type {tp!r} at {key}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(key, f"must be ≥ {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(key, f"must be ≤ {meta['max']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(key, f"must be > {meta['gt']}, got {value}")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in known:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(key, hints[name], data[name], f.metadata)
        elif f.default is MISSING and f.default_factory is MISSING:  # pragma: no cover
            raise ConfigError(key, "is required")
    return cls(**kwargs)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a host name or IP address, or None when it is one.

    Syntax only (RFC 1123 names, IPv4/IPv6 literals): a trap may start before its network
    is up, so a name that does not resolve *now* is not a config error. The common slips get
    a hint: a URL (``mqtts://broker``) or a port in the host (``broker:8883``).
    """
    if not host:
        return "is required"
    if "://" in host:
        return f"give the host name only, without a scheme, got {host!r}"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if host.count(":") == 1:
        return f"give the port in its own key, got {host!r}"
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        return f"is not a host name or IP address: {host!r}"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ed25519_b64(text: str) -> bool:
    """A raw Ed25519 public key is 32 bytes; anything else cannot verify a pack."""
    import base64
    import binascii

    try:
        return len(base64.b64decode(text.strip(), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _check(cfg: Config) -> None:
    """Rules that span fields."""
    if cfg.detector.pack_public_key and not _is_ed25519_b64(cfg.detector.pack_public_key):
        raise ConfigError("detector.pack_public_key", "must be the base64 of a 32-byte Ed25519 "
                          "public key (the .pub file of 'camtrap models keygen')")
    uid = cfg.unit.id
    if not uid:
        raise ConfigError("unit.id", "is required (e.g. 'LL-042')")
    if not all(c.isalnum() or c in "-_" for c in uid) or len(uid) > 32:
        raise ConfigError("unit.id", f"use at most 32 letters, digits, '-' or '_', got {uid!r}")
    for i, label in enumerate(cfg.policy.alert_on):
        if label not in ALERT_LABELS:
            raise ConfigError(f"policy.alert_on[{i}]",
                              f"unknown label {label!r} (known: {', '.join(sorted(ALERT_LABELS))})")
    if cfg.camera.source in ("replay", "picamera2-fake") and not cfg.camera.images_dir:
        raise ConfigError("camera.images_dir",
                          f"is required when camera.source = {cfg.camera.source!r}")
    if cfg.hardware.backend == "pi" and cfg.camera.source == "picamera2-fake":
        raise ConfigError("camera.source", "picamera2-fake is a simulation: it needs "
                          "hardware.backend = 'sim'")
    if cfg.hardware.backend == "sim" and cfg.camera.source == "picamera2":
        raise ConfigError("camera.source", "picamera2 needs hardware.backend = 'pi'")
    if cfg.camera.source.startswith("picamera2") and cfg.camera.lores_width > cfg.camera.width:
        raise ConfigError("camera.lores_width", f"must be ≤ camera.width ({cfg.camera.width}): "
                          "the camera cannot make the small stream larger than the frame")
    if cfg.camera.open_timeout_s < cfg.camera.settle_timeout_s:
        raise ConfigError("camera.open_timeout_s", "must be ≥ camera.settle_timeout_s (opening "
                          "includes the settling)")
    if cfg.hardware.backend == "pi" and cfg.trigger.sim_every_s:
        raise ConfigError("trigger.sim_every_s", "only allowed with hardware.backend = 'sim'")
    for key, on in (("detector.head", bool(cfg.detector.head)),
                    ("background.enabled", cfg.background.enabled)):
        if on and not cfg.detector.embedder:
            raise ConfigError(key, "needs detector.embedder (the frame embedding model card)")
    if cfg.outbox.backoff_max_s < cfg.outbox.backoff_min_s:
        raise ConfigError("outbox.backoff_max_s", "must be ≥ outbox.backoff_min_s")
    m = cfg.mqtt
    if m.enabled and (problem := host_problem(m.host)) is not None:
        raise ConfigError("mqtt.host", problem)
    if m.reconnect_max_s < m.reconnect_min_s:
        raise ConfigError("mqtt.reconnect_max_s", "must be ≥ mqtt.reconnect_min_s")
    if m.enabled and not m.tls and not m.allow_insecure and not _is_loopback(m.host):
        raise ConfigError("mqtt.tls", f"plain TCP to {m.host!r} would send alerts in clear; "
                          "set mqtt.tls = true (or mqtt.allow_insecure = true on a private net)")
    if m.chunk_bytes > m.max_message_bytes - 1024:
        raise ConfigError("mqtt.chunk_bytes", "must leave 1 KiB of mqtt.max_message_bytes for "
                          "the topic and properties")
    if cfg.outbox.receipt_timeout_max_s < cfg.outbox.receipt_timeout_s:
        raise ConfigError("outbox.receipt_timeout_max_s", "must be ≥ outbox.receipt_timeout_s")
    if m.cert_file and not m.key_file:
        raise ConfigError("mqtt.key_file", "is required with mqtt.cert_file")
    if not m.topic_prefix or any(c in m.topic_prefix for c in "#+"):
        raise ConfigError("mqtt.topic_prefix", "must be non-empty without '#' or '+'")
    _check_lorawan(cfg)
    if cfg.mcu_in_use and cfg.hardware.backend == "pi" and not cfg.mcu.port:
        raise ConfigError("mcu.port", "is required when the supervisor MCU is in use "
                          "(trigger.source = 'mcu' or mcu.enabled)")
    _check_power(cfg)
    _check_ir(cfg)
    _check_cellular(cfg)


def _check_power(cfg: Config) -> None:
    pw = cfg.power
    if len(pw.windows) > 6:
        raise ConfigError("power.windows", f"at most 6 windows (the MCU's SCHEDULE holds 6), "
                          f"got {len(pw.windows)}")
    for i, text in enumerate(pw.windows):
        try:
            parse_window(text)
        except ValueError as e:
            raise ConfigError(f"power.windows[{i}]", str(e)) from None
    if pw.max_uptime_s <= pw.idle_shutdown_s:
        raise ConfigError("power.max_uptime_s", "must be > power.idle_shutdown_s")
    if pw.hybrid_above_v and pw.hybrid_hysteresis_v >= pw.hybrid_above_v:
        raise ConfigError("power.hybrid_hysteresis_v", "must be < power.hybrid_above_v")
    if pw.mode == "hybrid" and not pw.windows and not pw.hybrid_above_v:
        raise ConfigError("power.windows", "hybrid needs windows or power.hybrid_above_v "
                          "(without either it is gated)")
    if pw.mode != "always-on" and not cfg.mcu_in_use:
        raise ConfigError("power.mode", f"{pw.mode!r} needs the supervisor MCU (mcu.enabled = "
                          "true or trigger.source = 'mcu'): without it nothing powers the Pi "
                          "back on")


IR_CAPTURE_MARGIN_S = 1.0
"""``ir.max_on_s`` must exceed the planned illuminator on-time by this (a full-resolution
capture can take ~0.2 s, formats-and-field §8.7)."""


def _check_cellular(cfg: Config) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    cell = cfg.cellular
    if len(cell.windows) > CELLULAR_MAX_WINDOWS:
        raise ConfigError("cellular.windows", f"at most {CELLULAR_MAX_WINDOWS} windows")
    for i, w in enumerate(cell.windows):
        try:
            parse_window(w)
        except ValueError as e:
            raise ConfigError(f"cellular.windows[{i}]", str(e)) from None
    if cell.mode == "windows" and not cell.windows:
        raise ConfigError("cellular.windows", "windows mode needs at least one window")
    try:
        ZoneInfo(cell.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("cellular.timezone",
                          f"not a known IANA time zone: {cell.timezone!r}") from None
    if cell.retry_cap_s < cell.retry_base_s:
        raise ConfigError("cellular.retry_cap_s", "must be ≥ retry_base_s")
    expiry = cfg.outbox.image_expiry_s
    if cell.enabled and cell.plan_mb > 0 and 0 < expiry < PLAN_MONTH_S:
        raise ConfigError("outbox.image_expiry_s", f"with a data plan (cellular.plan_mb) full "
                          f"images may be held until the month rolls over: set it to 0 (never) "
                          f"or ≥ {PLAN_MONTH_S:.0f} s (31 days), got {expiry:g}")


def _check_ir(cfg: Config) -> None:
    ir, cam = cfg.ir, cfg.camera
    if ir.day_above_lux <= ir.night_below_lux:
        raise ConfigError("ir.day_above_lux", f"must be > ir.night_below_lux "
                          f"({ir.night_below_lux:g}): the gap is the hysteresis")
    if ir.night_above_exposure <= ir.day_below_exposure:
        raise ConfigError("ir.night_above_exposure", f"must be > ir.day_below_exposure "
                          f"({ir.day_below_exposure:g}): the gap is the hysteresis")
    if not ir.enabled:
        return
    pins = {"ir.led_pin": ir.led_pin}
    if ir.filter != "none":
        pins["ir.filter_night_pin"] = ir.filter_night_pin
    if ir.filter == "pulse":
        pins["ir.filter_day_pin"] = ir.filter_day_pin
    if cfg.trigger.source == "gpio":
        pins = {"trigger.pin": cfg.trigger.pin, **pins}
    seen: dict[int, str] = {}
    for key, pin in pins.items():
        if pin in seen:
            raise ConfigError(key, f"BCM {pin} is already {seen[pin]}")
        seen[pin] = key
    # The same rule as edge_app.trap.hardware.ir.longest_on_s (core cannot import trap):
    # the illuminator stays on between burst frames unless the gap is over 2 × settle_s.
    longest = ir.settle_s
    if cam.burst_interval_s <= 2 * ir.settle_s:
        longest += (cam.burst_frames - 1) * cam.burst_interval_s
    if ir.max_on_s < longest + IR_CAPTURE_MARGIN_S:
        raise ConfigError("ir.max_on_s", f"must be ≥ {longest + IR_CAPTURE_MARGIN_S:g} s: a "
                          f"night burst keeps the illuminator on for {longest:g} s plus the "
                          "captures (or shorten the burst)")


def _check_lorawan(cfg: Config) -> None:
    lw = cfg.lorawan
    if lw.join_backoff_max_s < lw.join_backoff_min_s:
        raise ConfigError("lorawan.join_backoff_max_s", "must be ≥ lorawan.join_backoff_min_s")
    for i, name in enumerate(lw.priority):
        if name not in ALERT_LABELS:
            raise ConfigError(f"lorawan.priority[{i}]",
                              f"unknown label {name!r} (known: {', '.join(sorted(ALERT_LABELS))})")
    if lw.enabled and not lw.port:
        raise ConfigError("lorawan.port", "is required when lorawan.enabled = true")
    if lw.enabled and not lw.secrets_file:
        raise ConfigError("lorawan.secrets_file", "is required when lorawan.enabled = true")
    if lw.enabled and lw.mode == "fallback" and not cfg.mqtt.enabled:
        raise ConfigError("lorawan.mode", "'fallback' needs mqtt.enabled; use 'always' for a "
                          "LoRa-only trap")


def parse(data: dict[str, Any]) -> Config:
    """Validate an already-parsed TOML document."""
    cfg = _build(Config, data, "")
    _check(cfg)
    return cfg


def _leaves(cls: type[Any] = Config, prefix: str = "") -> Iterator[tuple[str, Field[Any], Any]]:
    """Every leaf setting of the schema: (dotted key, dataclass field, type), in file order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if is_dataclass(tp):
            yield from _leaves(tp, key)  # type: ignore[arg-type]
        else:
            yield key, f, tp


def path_keys() -> list[str]:
    """The dotted keys that name a file or folder (``path`` in their metadata)."""
    return [key for key, f, _tp in _leaves() if f.metadata.get("path")]


def resolve_paths(cfg: Config, base: Path) -> Config:
    """``cfg`` with every relative path key made absolute against ``base`` (``~`` expanded).

    Empty values stay empty (they mean "none" or "the default").
    """

    def walk(obj: Any) -> Any:
        changes: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value) and not isinstance(value, type):
                changes[f.name] = walk(value)
            elif f.metadata.get("path") and value:
                p = Path(value).expanduser()
                changes[f.name] = str(p if p.is_absolute() else base / p)
        return dataclasses.replace(obj, **changes)

    resolved: Config = walk(cfg)
    return resolved


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; relative paths in it are made absolute against
    the file's own folder.

    Raises:
        ConfigError: with the dotted key (``file`` for unreadable or malformed TOML).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("file", f"cannot read {p}: {e.strerror}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("file", f"{p} is not valid TOML: {e}") from e
    return resolve_paths(parse(data), p.absolute().parent)


def explain() -> list[str]:
    """Every key with its default and doc line, for ``check-config --explain`` and the README."""
    out: list[str] = []
    for key, f, tp in _leaves():
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every field has a default
            default = None
        doc = f.metadata.get("doc", "")
        if f.metadata.get("path"):
            doc = f"{doc}; {PATH_NOTE}"
        out.append(f"{key} = {default!r}  # {_typename(tp)}; {doc}")
    return out
