"""camtrap provision: a FAT card image provisioned offline, read back with mtools.

The credentials come from the real ``deploy/mosquitto/make-credentials``; the image is made
with ``mkfs.vfat`` and never mounted. The tools are installed by ``deploy/dev/test``: a
missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from edge_app import cli
from edge_app.core import config
from edge_app.core.errors import ConfigError
from edge_app.core.fleet import read_fleet
from edge_app.tools import provision
from edge_app.tools.provision_fleet import render_config
from edge_app.trap.uplink.lorawan import load_secrets

REPO = Path(__file__).resolve().parents[1]
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
APP_KEY = "00112233445566778899AABBCCDDEEFF"
FLEET = f"""unit_id,site_name,lat,lon,deployment_id,dev_eui,join_eui,app_key,broker_host,broker_port
LL-042,"Kedrovaya Pad, ridge 3",43.105,131.567,KP-2026-01,70B3D57ED0000001,\
0000000000000000,{APP_KEY},base.example,8883
LL-043,Ridge 4,43.2,131.6,KP-2026-02,,,,base.example,
LL-044,Ridge 5,43.3,131.7,KP-2026-03,,,,10.0.0.2,1883
"""
STOCK_CONFIG_TXT = "# stock\ncamera_auto_detect=1\ndtoverlay=vc4-kms-v3d\n[pi4]\nenable_uart=1\n"


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.fail(f"{t} is not installed (deploy/dev/test installs dosfstools, mtools, "
                        "openssl and mosquitto)")


def make_pki(tmp: Path) -> Path:
    """LL-042 and LL-043 with client certificates, LL-044 with a password only."""
    need("openssl", "mosquitto_passwd")
    pki = tmp / "pki"
    mk = str(REPO / "deploy/mosquitto/make-credentials")
    subprocess.run([mk, str(pki), "--server-name", "base.example", "--unit", "LL-042",
                    "--unit", "LL-043", "--client-certs"], check=True, capture_output=True)
    subprocess.run([mk, str(pki), "--server-name", "base.example", "--unit", "LL-044"],
                   check=True, capture_output=True)
    return pki


def make_fleet(tmp: Path, text: str = FLEET) -> Path:
    p = tmp / "fleet.csv"
    p.write_text(text)
    return p


def run(*argv: str) -> tuple[int, str, str]:
    """``camtrap provision ARGV``: the module's own parser and main, with the CLI's handling
    of a ConfigError (exit 2, message on stderr)."""
    ap = argparse.ArgumentParser()
    provision.add_arguments(ap)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = provision.main(ap.parse_args(list(argv)))
        except ConfigError as e:
            print(f"camtrap: config error: {e}", file=err)
            rc = 2
    return rc, out.getvalue(), err.getvalue()


def mcopy_in(img: str, name: str, data: bytes, tmp: Path) -> None:
    src = tmp / "mcopy-src"
    src.write_bytes(data)
    subprocess.run(["mcopy", "-o", "-i", img, str(src), f"::/{name}"], check=True,
                   env=MTOOLS_ENV, capture_output=True)


def mtype(img: str, name: str) -> bytes:
    return subprocess.run(["mcopy", "-n", "-i", img, f"::/{name}", "-"], check=True,
                          env=MTOOLS_ENV, capture_output=True).stdout


def mdir(img: str) -> set[str]:
    out = subprocess.run(["mdir", "-/", "-b", "-i", img, "::/"], check=True, env=MTOOLS_ENV,
                         capture_output=True, text=True).stdout
    return {line.strip()[3:] for line in out.splitlines()
            if line.startswith("::/") and not line.strip().endswith("/")}


def make_card(tmp: Path, *, offset: int = 0) -> tuple[Path, str]:
    """A fresh FAT "boot partition" like a flashed Trixie card: config.txt and meta-data.

    Returns the image file and the mtools ``-i`` spec (``IMG@@OFFSET``)."""
    need("mkfs.vfat", "mcopy", "mdir", "mtype", "mmd", "mdel")
    fat = tmp / "fat.img"
    subprocess.run(["mkfs.vfat", "-C", str(fat), "65536"], check=True, capture_output=True)
    if offset:
        img = tmp / "disk.img"
        img.write_bytes(b"\0" * offset + fat.read_bytes())
        fat.unlink()
        spec = f"{img}@@{offset}"
    else:
        img, spec = fat, str(fat)
    mcopy_in(spec, "config.txt", STOCK_CONFIG_TXT.encode(), tmp)
    mcopy_in(spec, "meta-data", b"instance-id: rpios-image\n", tmp)
    return img, spec


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_card_holds_the_units_files(tmp_path: Path, pki: Path) -> None:
    img, spec = make_card(tmp_path)
    rc, out, err = run("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-042",
                       "--credentials", str(pki), "--boot", str(img), "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["status"] == "changed"
    assert result["first_boot"] == "cloud-init"
    names = mdir(spec)
    expected = {f"camtrap/{n}" for n in (
        "unit.json", "camtrap.toml", "secrets/ca.crt", "secrets/mqtt-password",
        "secrets/unit.crt", "secrets/unit.key", "secrets/lorawan.toml",
        "deploy/install-camtrap", "deploy/camtrap.service", "deploy/camtrap-poweroff.rules")}
    assert names == expected | {"config.txt", "meta-data", "user-data"}

    # The config: the unit's values, valid as `check-config --schema-only` sees it.
    (tmp_path / "camtrap.toml").write_bytes(mtype(spec, "camtrap/camtrap.toml"))
    assert cli.main(["check-config", "--schema-only", str(tmp_path / "camtrap.toml")]) == 0
    cfg = config.load(tmp_path / "camtrap.toml")
    assert (cfg.unit.id, cfg.unit.location.name) == ("LL-042", "Kedrovaya Pad, ridge 3")
    assert (cfg.unit.location.lat, cfg.unit.location.lon) == (43.105, 131.567)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("base.example", 8883, "LL-042")
    assert cfg.mqtt.cert_file == "/etc/camtrap/unit.crt"
    assert cfg.lorawan.enabled
    assert cfg.lorawan.secrets_file == "/etc/camtrap/lorawan.toml"

    # The secrets: byte for byte what make-credentials made; LoRaWAN keys as load_secrets reads.
    unit_dir = pki / "units/LL-042"
    for name in ("ca.crt", "mqtt-password", "unit.crt", "unit.key"):
        assert mtype(spec, f"camtrap/secrets/{name}") == (unit_dir / name).read_bytes()
    lw = tmp_path / "lorawan.toml"
    lw.write_bytes(mtype(spec, "camtrap/secrets/lorawan.toml"))
    lw.chmod(0o600)
    keys = load_secrets(lw)
    assert (keys.dev_eui, keys.join_eui, keys.app_key) == (
        "70B3D57ED0000001", "0000000000000000", APP_KEY)

    # The marker names the unit and hashes every file it lists.
    marker = json.loads(mtype(spec, "camtrap/unit.json"))
    assert (marker["unit_id"], marker["deployment_id"]) == ("LL-042", "KP-2026-01")
    assert set(marker["files"]) == expected - {"camtrap/unit.json"}
    for rel, digest in marker["files"].items():
        assert hashlib.sha256(mtype(spec, rel)).hexdigest() == digest, rel
    assert mtype(spec, "camtrap/deploy/install-camtrap") == (
        REPO / "deploy/pi/install-camtrap").read_bytes()

    # First boot: cloud-init runs the install script; config.txt gains only missing lines.
    user_data = mtype(spec, "user-data").decode()
    assert user_data.startswith("#cloud-config\n")
    assert "bash, /boot/firmware/camtrap/deploy/install-camtrap" in user_data
    config_txt = mtype(spec, "config.txt").decode()
    assert config_txt.startswith(STOCK_CONFIG_TXT)
    block = config_txt[len(STOCK_CONFIG_TXT):].splitlines()
    assert block[1:-1] == ["[all]", "enable_uart=1", "dtoverlay=disable-bt",
                           "dtparam=i2c_arm=on"]  # camera_auto_detect=1 was there already
    assert mtype(spec, "meta-data") == b"instance-id: rpios-image\n"


def test_second_run_changes_nothing(tmp_path: Path, pki: Path) -> None:
    img, _spec = make_card(tmp_path)
    args = ("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-042", "--credentials",
            str(pki), "--boot", str(img))
    assert run(*args)[0] == 0
    before = img.read_bytes()
    rc, out, err = run(*args, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["status"] == "unchanged"
    assert set(result["files"].values()) == {"unchanged"}
    assert img.read_bytes() == before
    rc, out, _ = run(*args)
    assert out.strip().endswith("unit LL-042: unchanged; first boot: cloud-init")


def test_another_units_card_is_refused_without_force(tmp_path: Path, pki: Path) -> None:
    img, spec = make_card(tmp_path)
    fleet = str(make_fleet(tmp_path))
    assert run("--fleet", fleet, "--unit", "LL-042", "--credentials", str(pki),
               "--boot", str(img))[0] == 0
    before = img.read_bytes()
    rc, _out, err = run("--fleet", fleet, "--unit", "LL-044", "--credentials", str(pki),
                        "--boot", str(img))
    assert rc == 2
    assert "provisioned for unit LL-042" in err
    # The same through the camtrap command.
    assert cli.main(["provision", "--fleet", fleet, "--unit", "LL-044", "--credentials",
                     str(pki), "--boot", str(img)]) == 2
    assert "--force" in err
    assert img.read_bytes() == before

    rc, out, err = run("--fleet", fleet, "--unit", "LL-044", "--credentials", str(pki),
                       "--boot", str(img), "--force", "--json")
    assert rc == 0, err
    files = json.loads(out)["files"]
    # LL-044 has no client certificate and no LoRaWAN keys: LL-042's are taken off the card.
    for gone in ("unit.crt", "unit.key", "lorawan.toml"):
        assert files[f"camtrap/secrets/{gone}"] == "deleted"
        assert f"camtrap/secrets/{gone}" not in mdir(spec)
    assert json.loads(mtype(spec, "camtrap/unit.json"))["unit_id"] == "LL-044"
    assert mtype(spec, "camtrap/secrets/mqtt-password") == (
        pki / "units/LL-044/mqtt-password").read_bytes()
    toml = tomllib.loads(mtype(spec, "camtrap/camtrap.toml").decode())
    assert "cert_file" not in toml["mqtt"]
    assert "lorawan" not in toml
    assert toml["mqtt"]["host"] == "10.0.0.2"
    assert toml["mqtt"]["port"] == 1883
    # Our config.txt block and user-data hook are still there once, not twice.
    assert mtype(spec, "config.txt").decode().count(provision.BEGIN) == 1
    assert mtype(spec, "user-data").decode().count("install-camtrap") == 1


def test_partition_inside_a_disk_image(tmp_path: Path, pki: Path) -> None:
    img, spec = make_card(tmp_path, offset=1024 * 1024)
    rc, _out, err = run("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-043",
                        "--credentials", str(pki), "--boot", f"{img}@{1024 * 1024}")
    assert rc == 0, err
    assert json.loads(mtype(spec, "camtrap/unit.json"))["unit_id"] == "LL-043"
    assert img.read_bytes()[:1024 * 1024] == b"\0" * (1024 * 1024)  # nothing outside it


def test_wheelhouse_is_copied(tmp_path: Path, pki: Path) -> None:
    img, spec = make_card(tmp_path)
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    (wh / "camtrap-0.1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 not really a wheel")
    (wh / "notes.txt").write_text("not a wheel: not copied")
    rc, _out, err = run("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-043",
                        "--credentials", str(pki), "--boot", str(img), "--wheelhouse", str(wh))
    assert rc == 0, err
    wheels = {n for n in mdir(spec) if n.startswith("camtrap/wheelhouse/")}
    assert wheels == {"camtrap/wheelhouse/camtrap-0.1.0-py3-none-any.whl"}
    marker = json.loads(mtype(spec, "camtrap/unit.json"))
    assert "camtrap/wheelhouse/camtrap-0.1.0-py3-none-any.whl" in marker["files"]
    (wh / "camtrap-0.1.0-py3-none-any.whl").unlink()
    rc, _out, err = run("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-043",
                        "--credentials", str(pki), "--boot", str(img), "--wheelhouse", str(wh))
    assert rc == 2
    assert "no .whl files" in err


@pytest.mark.parametrize(("row", "column"), [
    ("LL-9,Site,nan,131.6,D1,,,,base.example,", "lat"),
    ("LL-9,Site,91,131.6,D1,,,,base.example,", "lat"),
    ("LL-9,Site,43.1,1e999,D1,,,,base.example,", "lon"),
    ("LL-9,Site,43.1,east,D1,,,,base.example,", "lon"),
    ("LL 9,Site,43.1,131.6,D1,,,,base.example,", "unit_id"),
    ("LL-9,,43.1,131.6,D1,,,,base.example,", "site_name"),
    ("LL-9,Site,43.1,131.6,D/1,,,,base.example,", "deployment_id"),
    ("LL-9,Site,43.1,131.6,D1,70B3D57ED000000,0000000000000000,"
     f"{APP_KEY},base.example,", "dev_eui"),
    ("LL-9,Site,43.1,131.6,D1,70B3D57ED0000001,0000000000000000,,base.example,", "app_key"),
    ("LL-9,Site,43.1,131.6,D1,,,,mqtts://base.example,", "broker_host"),
    ("LL-9,Site,43.1,131.6,D1,,,,base.example,70000", "broker_port"),
    ("LL-042,Again,43.1,131.6,D1,,,,base.example,", "unit_id"),
    ("LL-9,Site " + "x" * 300 + ",43.1,131.6,D1,,,,base.example,", "site_name"),
])
def test_a_bad_fleet_row_is_refused_naming_the_column(tmp_path: Path, pki: Path, row: str,
                                                      column: str) -> None:
    img, _spec = make_card(tmp_path)
    before = img.read_bytes()
    fleet = make_fleet(tmp_path, FLEET + row + "\n")
    rc, _out, err = run("--fleet", str(fleet), "--unit", "LL-042", "--credentials", str(pki),
                        "--boot", str(img))
    assert rc == 2
    assert f"fleet.csv line 5: {column}:" in err
    assert APP_KEY not in err  # a key is never echoed
    assert img.read_bytes() == before  # the whole file is checked before anything is written


def test_fleet_header_and_unknown_unit(tmp_path: Path, pki: Path) -> None:
    img, _spec = make_card(tmp_path)
    rc, _o, err = run("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-999",
                      "--credentials", str(pki), "--boot", str(img))
    assert rc == 2
    assert "'LL-999' is not in" in err
    assert "3 units" in err
    bad = make_fleet(tmp_path, FLEET.replace("broker_port", "broker_prot", 1))
    with pytest.raises(ConfigError, match="unknown column 'broker_prot'"):
        read_fleet(bad)
    bad = make_fleet(tmp_path, FLEET.replace(",lat,", ",latitude,", 1))
    with pytest.raises(ConfigError, match="unknown column 'latitude'"):
        read_fleet(bad)


def test_not_a_boot_partition_and_missing_credentials(tmp_path: Path, pki: Path) -> None:
    need("mkfs.vfat")
    empty = tmp_path / "empty.img"
    subprocess.run(["mkfs.vfat", "-C", str(empty), "8192"], check=True, capture_output=True)
    fleet = str(make_fleet(tmp_path))
    rc, _o, err = run("--fleet", fleet, "--unit", "LL-042", "--credentials", str(pki),
                      "--boot", str(empty))
    assert rc == 2
    assert "no config.txt" in err
    img, _spec = make_card(tmp_path)
    rc, _o, err = run("--fleet", fleet, "--unit", "LL-042", "--credentials",
                      str(tmp_path / "nowhere"), "--boot", str(img))
    assert rc == 2
    assert "make-credentials" in err


def test_generated_config_has_field_tomls_shape() -> None:
    """Every key field.toml sets, the generated config sets (and nothing it does not)."""

    def keys(d: dict[str, object], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    field = tomllib.loads((REPO / "deploy/config/field.toml").read_text())
    fleet = read_fleet_text(FLEET)
    ours = tomllib.loads(render_config(fleet["LL-043"], client_certs=True))
    assert keys(ours) - {"mqtt.username"} == keys(field)
    assert keys(tomllib.loads(render_config(fleet["LL-043"], client_certs=False))) == (
        keys(ours) - {"mqtt.cert_file", "mqtt.key_file"})


def read_fleet_text(text: str) -> dict[str, provision.FleetRow]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return read_fleet(make_fleet(Path(d), text))


def test_config_txt_merge_is_idempotent_and_never_duplicates() -> None:
    once = provision.merge_config_txt(STOCK_CONFIG_TXT)
    assert provision.merge_config_txt(once) == once
    assert once.count("enable_uart=1") == 2  # the [pi4] one does not cover every board
    assert once.count("camera_auto_detect=1") == 1
    full = "\n".join(provision.CONFIG_TXT) + "\n"
    assert provision.merge_config_txt(full) == full  # all present: no block at all
    # Our block is replaced in place of an older one, not stacked.
    older = STOCK_CONFIG_TXT + provision.BEGIN + "\n[all]\nenable_uart=0\n" + provision.END
    merged = provision.merge_config_txt(older + "\n")
    assert merged == once
    assert "enable_uart=0" not in merged


def test_user_data_keeps_imagers_and_refuses_a_second_runcmd() -> None:
    imager = "#cloud-config\nhostname: trap-0042\nusers:\n  - name: tech\n"
    merged = provision.merge_user_data(imager)
    assert merged.startswith(imager)
    assert merged.count("runcmd:") == 1
    assert provision.merge_user_data(merged) == merged
    with pytest.raises(ConfigError, match="already has a runcmd"):
        provision.merge_user_data(imager + "runcmd:\n  - [echo, hi]\n")


def test_a_mounted_boot_folder_works_the_same(tmp_path: Path, pki: Path) -> None:
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "config.txt").write_text(STOCK_CONFIG_TXT)
    (boot / "network-config").write_text("network: {config: disabled}\n")
    args = ("--fleet", str(make_fleet(tmp_path)), "--unit", "LL-043", "--credentials",
            str(pki), "--boot", str(boot), "--json")
    rc, out, err = run(*args)
    assert rc == 0, err
    assert json.loads(out)["first_boot"] == "cloud-init"
    assert (boot / "camtrap/secrets/unit.key").read_bytes() == (
        pki / "units/LL-043/unit.key").read_bytes()
    assert (boot / "camtrap/secrets/unit.key").stat().st_mode & 0o077 == 0
    mtimes = {p: p.stat().st_mtime_ns for p in boot.rglob("*")}
    rc, out, err = run(*args)
    assert rc == 0, err
    assert json.loads(out)["status"] == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in boot.rglob("*")} == mtimes
    assert not list(boot.rglob(".provision-*"))  # no temporary file left behind
