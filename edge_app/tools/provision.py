"""``camtrap provision``: turn a freshly flashed Raspberry Pi OS card into one unit, offline.

Writes onto the card's boot partition (FAT, the only partition a laptop of any OS can
write) everything the unit needs to come up as itself with no network, under ``camtrap/``:

* ``camtrap.toml``: its config (``deploy/config/field.toml``'s shape, the fleet row's values);
* ``secrets/``: ``ca.crt``, ``mqtt-password``, ``unit.crt`` + ``unit.key`` when the
  credentials hold client certificates, ``lorawan.toml`` when the row has LoRaWAN keys;
* ``wheelhouse/``: the offline wheels of camtrap and its dependencies (``--wheelhouse``);
* ``models.pack``: a signed model pack (``--pack``, with the fleet's public key ``--pack-key``),
  checked here against the key (signature, every file, the cards) so a wrong pack is found on
  the laptop; the config then names its models and carries the key, and the install script
  installs it with ``camtrap models install`` (a unit with no models cannot start);
* ``deploy/``: ``install-camtrap`` and the systemd unit and polkit rule it installs;
* ``unit.json``: the unit id, deployment id and the sha256 of every file above. It is how a
  second run knows the card is this unit's (and refuses another unit's without ``--force``)
  and how the install script knows the card is whole.

and on the partition's root, between marker comments, never twice: ``user-data`` (cloud-init:
runs the install script once at first boot) and ``config.txt`` lines for the UART and the
camera. The FAT partition is readable by every account on the Pi, so the install script moves
the secrets to ``/etc/camtrap`` (mode 0600) and deletes them from the card.

Idempotent: a file whose bytes are already on the card is not written again, so a second run
leaves a card image byte-identical and reports ``unchanged``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.core import config
from edge_app.core.errors import ConfigError
from edge_app.core.fleet import FleetRow, read_fleet
from edge_app.core.guard import Limits, Refused, parse_object
from edge_app.tools.bootcard import BootCard, open_card
from edge_app.tools.provision_fleet import render_config, render_lorawan_secrets

CARD_DIR = "camtrap"
MARKER = f"{CARD_DIR}/unit.json"
BEGIN = "# camtrap-provision:start (written by `camtrap provision`; edited there, not here)"
END = "# camtrap-provision:end"
#: config.txt: the supervisor MCU and LoRa modem on the PL011 UART (/dev/serial0 = ttyAMA0,
#: Bluetooth moved off it), the camera detected, I2C on (the RTC and sensors).
CONFIG_TXT = ("enable_uart=1", "dtoverlay=disable-bt", "camera_auto_detect=1",
              "dtparam=i2c_arm=on")
BOOT_MOUNT = "/boot/firmware"  # Bookworm and Trixie mount the boot partition here
MAX_SECRET_BYTES = 64 * 1024
MAX_MARKER = Limits(max_bytes=1024 * 1024, max_depth=4, max_nodes=20_000)
DEPLOY_FILES = {"install-camtrap": "pi/install-camtrap",
                "camtrap.service": "systemd/camtrap.service",
                "camtrap-poweroff.rules": "systemd/camtrap-poweroff.rules"}


@dataclass
class Result:
    unit_id: str
    boot: str
    first_boot: str
    actions: dict[str, str] = field(default_factory=dict)  # path -> written/unchanged/deleted

    @property
    def status(self) -> str:
        return "unchanged" if all(a == "unchanged" for a in self.actions.values()) else "changed"

    def as_dict(self) -> dict[str, Any]:
        return {"unit_id": self.unit_id, "boot": self.boot, "status": self.status,
                "first_boot": self.first_boot, "files": self.actions}


def deploy_dir() -> Path:
    """``deploy/`` of the checkout this module runs from (provisioning runs from one)."""
    return Path(__file__).resolve().parents[2] / "deploy"


def read_credentials(creds: Path, unit_id: str) -> dict[str, bytes]:
    """The unit's files from ``make-credentials OUT_DIR`` (``OUT_DIR/units/<ID>/``), checked
    for size and shape so a wrong file is found on the laptop, not on a hill."""
    udir = creds / "units" / unit_id
    if not udir.is_dir():
        raise ConfigError("credentials", f"{udir} not found: run deploy/mosquitto/"
                          f"make-credentials {creds} --unit {unit_id} ... first")
    out: dict[str, bytes] = {}
    for name in ("ca.crt", "mqtt-password", "unit.crt", "unit.key"):
        p = udir / name
        if not p.is_file():
            continue
        if p.stat().st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"credentials: {name}", f"{p} is larger than {MAX_SECRET_BYTES}")
        out[name] = p.read_bytes()
    for name in ("ca.crt", "mqtt-password"):
        if name not in out:
            raise ConfigError(f"credentials: {name}", f"{udir / name} is missing")
    if ("unit.crt" in out) != ("unit.key" in out):
        raise ConfigError("credentials: unit.key", f"{udir} holds only one of unit.crt and "
                          "unit.key")
    for name in ("ca.crt", "unit.crt"):
        if name in out and b"-----BEGIN CERTIFICATE-----" not in out[name]:
            raise ConfigError(f"credentials: {name}", "is not a PEM certificate")
    if "unit.key" in out and b"PRIVATE KEY-----" not in out["unit.key"]:
        raise ConfigError("credentials: unit.key", "is not a PEM private key")
    pw = out["mqtt-password"].strip()
    if not pw or b"\n" in pw or len(pw) > 256:
        raise ConfigError("credentials: mqtt-password", "must be one line of 1-256 bytes")
    return out


@dataclass(frozen=True)
class ModelPack:
    """A pack for the card: its bytes and the ``[detector]`` keys its models need."""

    data: bytes
    detector: dict[str, str]


def read_pack_key(pack_key: Path) -> str:
    """The fleet's public key as the config holds it (the .pub file's one line).

    Raises:
        ConfigError: unreadable, or not an Ed25519 public key.
    """
    from edge_app.core.errors import ModelError
    from edge_app.trap.packs.manifest import decode_public_key

    try:
        text = pack_key.read_text().strip()
        decode_public_key(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("pack-key", f"cannot read {pack_key}: {e}") from e
    except ModelError as e:
        raise ConfigError("pack-key", f"{pack_key}: {e}") from e
    return text


def read_pack(pack: Path, pack_key: Path) -> ModelPack:
    """Verify ``pack`` against the fleet key as the unit will (signature, every sha256, the
    cards), and name its models by task for the unit's config.

    Raises:
        ConfigError: the key or the pack is refused (the key ``pack`` names why).
    """
    import tempfile

    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import load_card
    from edge_app.trap.packs.archive import extract
    from edge_app.trap.packs.install import verify_pack_dir
    from edge_app.trap.packs.manifest import decode_public_key

    key_text = read_pack_key(pack_key)
    key = decode_public_key(key_text)
    detector = {"pack_public_key": key_text}
    with tempfile.TemporaryDirectory(prefix="camtrap-pack-") as tmp:
        try:
            extract(pack, Path(tmp))
            m = verify_pack_dir(Path(tmp), key)
            for name in m.cards:
                task = load_card(Path(tmp) / f"{name}.toml").task
                detector.setdefault({"detector": "detector", "classifier": "classifier",
                                     "embedding": "embedder"}[task], name)
        except ModelError as e:
            raise ConfigError("pack", f"{pack} is refused: {e}") from e
    detector.setdefault("classifier", "")  # a pack without one: the config must not ask
    return ModelPack(pack.read_bytes(), detector)


def card_files(row: FleetRow, creds: dict[str, bytes], wheelhouse: Path | None,
               deploy: Path, pack: ModelPack | None = None) -> dict[str, bytes]:
    """Every file under ``camtrap/`` except the marker, by card path."""
    toml = render_config(row, client_certs="unit.key" in creds,
                         detector=None if pack is None else pack.detector)
    config.parse(tomllib.loads(toml))  # what `check-config --schema-only` checks
    files = {f"{CARD_DIR}/camtrap.toml": toml.encode()}
    if pack is not None and pack.data:
        files[f"{CARD_DIR}/models.pack"] = pack.data
    for name, data in creds.items():
        files[f"{CARD_DIR}/secrets/{name}"] = data
    if row.lorawan:
        files[f"{CARD_DIR}/secrets/lorawan.toml"] = render_lorawan_secrets(row).encode()
    for name, rel in DEPLOY_FILES.items():
        src = deploy / rel
        if not src.is_file():
            raise ConfigError("deploy", f"{src} not found: run camtrap provision from a "
                              "checkout of camtrap")
        files[f"{CARD_DIR}/deploy/{name}"] = src.read_bytes()
    if wheelhouse is not None:
        wheels = sorted(p for p in wheelhouse.glob("*.whl") if p.is_file())
        if not wheels:
            raise ConfigError("wheelhouse", f"no .whl files in {wheelhouse} (deploy/pi/"
                              "README.md says how to build one)")
        for p in wheels:
            files[f"{CARD_DIR}/wheelhouse/{p.name}"] = p.read_bytes()
    return files


def marker(row: FleetRow, files: dict[str, bytes]) -> bytes:
    hashes = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}
    body = {"unit_id": row.unit_id, "deployment_id": row.deployment_id, "format": 1,
            "files": hashes,
            "sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()}
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def read_marker(card: BootCard) -> dict[str, Any] | None:
    raw = card.read(MARKER)
    if raw is None:
        return None
    try:
        return parse_object(raw, MAX_MARKER)
    except Refused:
        return {"unit_id": "(unreadable camtrap/unit.json)", "files": {}}


def _block(lines: list[str]) -> str:
    return "\n".join([BEGIN, *lines, END]) + "\n"


def _strip_block(text: str) -> str:
    """``text`` without our block (and the line break before it that we added)."""
    start = text.find(BEGIN)
    end = text.find(END, start)
    if start < 0 or end < 0:
        return text
    return text[:start] + text[end + len(END):].lstrip("\n")


def merge_config_txt(text: str) -> str:
    """``config.txt`` with our block at the end holding only lines not already active for
    every board (before any ``[filter]`` or under ``[all]``): never a duplicate."""
    rest = _strip_block(text)
    present: set[str] = set()
    section = "all"
    for line in rest.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip().lower()
        elif s and not s.startswith("#") and section == "all":
            present.add(s)
    want = [line for line in CONFIG_TXT if line not in present]
    if not want:
        return rest
    sep = "" if not rest or rest.endswith("\n") else "\n"
    return rest + sep + _block(["[all]", *want])


def merge_user_data(text: str | None) -> str:
    """cloud-init ``user-data`` running the install script once, at first boot.

    An existing file (Imager's: user, SSH keys, Wi-Fi) is kept and our ``runcmd`` appended;
    if it already has a ``runcmd`` of its own, two keys would not merge, so we refuse rather
    than silently drop one.
    """
    run = _block(["runcmd:",
                  f"  - [bash, {BOOT_MOUNT}/{CARD_DIR}/deploy/install-camtrap, --boot, "
                  f"{BOOT_MOUNT}]"])
    if text is None or not text.strip():
        return "#cloud-config\n" + run
    rest = _strip_block(text)
    if any(line.startswith("runcmd:") for line in rest.splitlines()):
        raise ConfigError("boot: user-data", "already has a runcmd: add "
                          f"'bash {BOOT_MOUNT}/{CARD_DIR}/deploy/install-camtrap' to it by "
                          "hand, or remove it")
    sep = "" if rest.endswith("\n") else "\n"
    return rest + sep + run


def first_boot_kind(present: set[str], cmdline: bytes | None) -> str:
    """``cloud-init`` (current Trixie images: the hook runs by itself) or ``by-hand``."""
    if "meta-data" in present or "network-config" in present:
        return "cloud-init"
    if cmdline is not None and b"firstrun.sh" in cmdline:
        return "by-hand (firstrun.sh image: run install-camtrap over SSH)"
    return "by-hand (no cloud-init files on the card: run install-camtrap over SSH)"


def provision(row: FleetRow, creds: Path, card: BootCard, *, wheelhouse: Path | None = None,
              force: bool = False, deploy: Path | None = None,
              pack: ModelPack | None = None) -> Result:
    present = card.files()
    if "config.txt" not in present:
        raise ConfigError("boot", f"{card.label} has no config.txt: not a Raspberry Pi boot "
                          "partition")
    old = read_marker(card)
    if old is not None and old.get("unit_id") != row.unit_id and not force:
        raise ConfigError("boot", f"{card.label} is provisioned for unit "
                          f"{str(old.get('unit_id'))[:64]}; give --force to overwrite it "
                          f"with {row.unit_id}")
    files = card_files(row, read_credentials(creds, row.unit_id), wheelhouse,
                       deploy or deploy_dir(), pack)
    result = Result(row.unit_id, card.label, first_boot_kind(present, card.read("cmdline.txt")))
    # The marker first: a card pulled half-way says whose it is, and its hashes do not match
    # the files, so the install script refuses it until a run completes.
    planned = {MARKER: marker(row, files), **files}
    planned["user-data"] = merge_user_data(_text(card.read("user-data"))).encode()
    planned["config.txt"] = merge_config_txt(_text(card.read("config.txt")) or "").encode()
    for rel, data in planned.items():
        if card.read(rel) == data:
            result.actions[rel] = "unchanged"
        else:
            card.write(rel, data)
            result.actions[rel] = "written"
    stale = old.get("files") if old else None
    if isinstance(stale, dict):
        for rel in sorted(stale):
            if (isinstance(rel, str) and rel.startswith(f"{CARD_DIR}/") and ".." not in rel
                    and rel not in planned and rel.lower() in present):
                card.delete(rel)
                result.actions[rel] = "deleted"
    return result


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.description = ("Write one unit's config, secrets, offline wheelhouse and first-boot "
                      "hook onto a freshly flashed Raspberry Pi OS card's boot partition "
                      "(deploy/pi/README.md).")
    ap.add_argument("--fleet", required=True, type=Path, metavar="FLEET.csv",
                    help="one row per unit (columns: deploy/pi/README.md)")
    ap.add_argument("--unit", required=True, metavar="UNIT_ID", help="the row to write")
    ap.add_argument("--credentials", required=True, type=Path, metavar="DIR",
                    help="OUT_DIR of deploy/mosquitto/make-credentials (uses units/UNIT_ID/)")
    ap.add_argument("--boot", required=True, metavar="BOOT",
                    help="the mounted boot partition, a FAT image file, or IMAGE@OFFSET "
                         "(bytes) for the partition inside a whole-disk image")
    ap.add_argument("--wheelhouse", type=Path, metavar="DIR",
                    help="folder of aarch64 wheels to install from offline")
    ap.add_argument("--pack", type=Path, metavar="PACK",
                    help="signed model pack ('camtrap models pack') installed at first boot")
    ap.add_argument("--pack-key", type=Path, metavar="KEY.pub",
                    help="the fleet's public key ('camtrap models keygen'): --pack is checked "
                         "against it, and the unit takes packs signed by it")
    ap.add_argument("--force", action="store_true",
                    help="overwrite a card provisioned for another unit")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    rows = read_fleet(args.fleet)
    row = rows.get(args.unit)
    if row is None:
        raise ConfigError("unit", f"{args.unit[:40]!r} is not in {args.fleet} "
                          f"({len(rows)} units)")
    if args.pack is not None and args.pack_key is None:
        raise ConfigError("pack-key", "--pack needs --pack-key (the fleet's public key that "
                          "signed it)")
    pack = None
    if args.pack_key is not None:
        pack = (read_pack(args.pack, args.pack_key) if args.pack is not None
                else ModelPack(b"", {"pack_public_key": read_pack_key(args.pack_key)}))
    result = provision(row, args.credentials, open_card(args.boot),
                       wheelhouse=args.wheelhouse, force=args.force, pack=pack)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    for rel, action in result.actions.items():
        if action != "unchanged":
            print(f"  {action:9} {rel}")
    print(f"{result.boot}: unit {result.unit_id}: {result.status}; first boot: "
          f"{result.first_boot}")
    return 0
