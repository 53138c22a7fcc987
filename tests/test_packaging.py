"""Packaging: what a plain install of the wheel has, and the numpy rule the Pi install relies on.

Every other test imports the checkout (an editable install), where files beside the source tree
are always there; a unit runs a plain ``pip install`` of the wheel, where they are not (issue 14:
the model cards were missing from the wheel and ``camtrap detect`` refused to start). These tests
build the sdist and wheel and look inside; ``deploy/dev/wheel-check`` (run by deploy/dev/test,
so by CI) goes further and installs the wheel into a fresh venv and runs it.

The numpy rule: a Pi's venv is made with ``--system-site-packages`` and must keep the OS's own
numpy, which apt's picamera2 and simplejpeg are compiled against. The README's Pi section states
the rule per Raspberry Pi OS release; ``pyproject.toml`` enforces it with environment markers.
These tests hold the two to each other and to the scripts that exercise the rule.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from edge_app.trap.detect.cards import PACKAGED_CARDS

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
README = (REPO / "README.md").read_text(encoding="utf-8")
CARD_DIR = "edge_app/trap/detect/model_cards"
CARDS = sorted(p.name for p in PACKAGED_CARDS.glob("*.toml"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel built from it, as ``python -m build`` makes them.

    ``--no-isolation`` uses this venv's setuptools (the dev extra has it) instead of fetching
    one, so the test needs no network and takes seconds; the wheel is built from the sdist, so
    a file the sdist lacks is missing from the wheel too.
    """
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = out.glob("camtrap-*.tar.gz")
    (wheel,) = out.glob("camtrap-*-py3-none-any.whl")
    return sdist, wheel


def test_the_source_tree_has_the_cards() -> None:
    assert len(CARDS) >= 5, f"no cards in {PACKAGED_CARDS}"


def test_wheel_holds_every_card_byte_for_byte(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for card in CARDS:
            member = f"{CARD_DIR}/{card}"
            assert member in names, f"{card} is not in {wheel.name}"
            assert z.read(member) == (PACKAGED_CARDS / card).read_bytes()
        assert "edge_app/cli.py" in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "camtrap = edge_app.cli:main" in z.read(entry_points).decode()


def test_sdist_holds_every_card(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {f"{CARD_DIR}/{c}" for c in CARDS} <= names
    assert "pyproject.toml" in names


def test_unpacked_wheel_finds_its_cards_without_the_checkout(
        dist: tuple[Path, Path], tmp_path: Path) -> None:
    """The wheel's own files, imported from elsewhere, find the cards through importlib.resources.

    No venv here (deploy/dev/wheel-check installs one): the wheel is unpacked and put first on
    the path, and the test checks that the code and the cards really came from there.
    """
    _, wheel = dist
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # noqa: S202 - the wheel this test run just built
    code = ("import json\n"
            "from edge_app.trap.detect import cards\n"
            "print(json.dumps([cards.__file__, str(cards.PACKAGED_CARDS),\n"
            "                  [cards.load_card(cards.find_card(p.stem, None)).name\n"
            "                   for p in sorted(cards.PACKAGED_CARDS.glob('*.toml'))]]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CAMTRAP_MODELS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    module, card_dir, names = json.loads(proc.stdout)
    assert Path(module).is_relative_to(site), f"imported {module}, not the unpacked wheel"
    assert Path(card_dir) == site / CARD_DIR
    assert [f"{n}.toml" for n in names] == CARDS


# --------------------------------------------------------------------------- numpy rule


def numpy_rule(python: str, machine: str) -> SpecifierSet:
    """The numpy specifier pyproject.toml's dependencies give on this Python and machine."""
    env = {"python_version": python, "python_full_version": f"{python}.0",
           "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux"}
    specs = []
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == "numpy" and (req.marker is None or req.marker.evaluate(env)):
            specs.append(req.specifier)
    assert len(specs) == 1, f"{len(specs)} numpy requirements apply to {python} on {machine}"
    return specs[0]


def readme_rule_rows() -> list[dict[str, str]]:
    """The rows of the numpy table in the README's Pi section, by column heading."""
    section = README.split("## Running on a Raspberry Pi", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"<!-- numpy-rule:start -->\n(.*?)<!-- numpy-rule:end -->", section, re.S)
    assert m, "the README's Pi section lost its numpy-rule table"
    lines = [ln.strip().strip("|").split("|") for ln in m.group(1).strip().splitlines()]
    head = [c.strip() for c in lines[0]]
    return [dict(zip(head, (c.strip().strip("`") for c in row), strict=True))
            for row in lines[2:]]


def test_readme_names_bookworm_and_trixie() -> None:
    rows = readme_rule_rows()
    releases = {r["Raspberry Pi OS (64-bit)"].split()[0]: r for r in rows}
    assert set(releases) == {"Bookworm", "Trixie"}
    assert releases["Bookworm"]["Python"] == "3.11"
    assert releases["Trixie"]["Python"] == "3.13"


@pytest.mark.parametrize("row", readme_rule_rows(),
                         ids=lambda r: r["Raspberry Pi OS (64-bit)"].split()[0])
def test_readme_numpy_rule_is_what_pyproject_enforces(row: dict[str, str]) -> None:
    spec = numpy_rule(row["Python"], "aarch64")
    said = Requirement(row["camtrap's numpy rule there"])
    assert said.name == "numpy"
    assert said.specifier == spec, (
        f"README says {said} for {row['Raspberry Pi OS (64-bit)']}, pyproject.toml gives "
        f"numpy{spec}")
    # The OS's own numpy must satisfy the rule, or pip installs another one over it.
    apt = row["apt python3-numpy"]
    versions = ([Version(f"{apt[:-2]}.0"), Version(f"{apt[:-2]}.99")] if apt.endswith(".x")
                else [Version(apt)])
    for v in versions:
        assert spec.contains(v), f"apt's numpy {v} does not satisfy numpy{spec}"
    # Where apt's picamera2 is built against numpy 1.x, numpy 2 must never be allowed in.
    built = row["apt picamera2 built against"]
    if built == "numpy 1.x":
        assert not spec.contains(Version("2.0")), f"numpy{spec} lets numpy 2 in"
    else:
        assert built == "numpy 2.x", built


def test_ci_runs_numpy_2_and_the_wheel_check_runs_bookworms_numpy() -> None:
    """Both lines of numpy are exercised: the suite on 2.x, the installed wheel on Bookworm's."""
    bookworm = next(r for r in readme_rule_rows()
                    if r["Raspberry Pi OS (64-bit)"].startswith("Bookworm"))
    x86 = numpy_rule("3.11", "x86_64")
    assert x86.contains(Version("2.0"))
    pin = re.search(r"^BOOKWORM_NUMPY=(\S+)", (REPO / "deploy/dev/wheel-check").read_text(),
                    re.M)
    assert pin, "deploy/dev/wheel-check lost its BOOKWORM_NUMPY pin"
    assert pin.group(1) == bookworm["apt python3-numpy"]
    assert x86.contains(Version(pin.group(1)))
    apt = re.search(r"^APT_NUMPY=(\S+)", (REPO / "deploy/dev/arm-smoke").read_text(), re.M)
    assert apt, "deploy/dev/arm-smoke lost its APT_NUMPY"
    assert apt.group(1) == bookworm["apt python3-numpy"]


def test_ci_calls_the_wheel_check() -> None:
    test = (REPO / "deploy/dev/test").read_text()
    assert re.search(r"^deploy/dev/wheel-check\b", test, re.M)
    for script in ("wheel-check", "arm-smoke", "compare-detect"):
        assert (REPO / "deploy/dev" / script).stat().st_mode & 0o111, f"{script} not executable"


def test_wheel_holds_the_station_pages_templates_and_static_files(
        dist: tuple[Path, Path]) -> None:
    """The page is server-rendered from package data: a wheel without its templates or its
    CSS/JS would serve errors on a station installed with pip."""
    _, wheel = dist
    web = REPO / "edge_app/station/web"
    files = sorted(p.relative_to(REPO).as_posix() for sub in ("templates", "static")
                   for p in (web / sub).iterdir() if p.is_file())
    assert any(f.endswith(".html") for f in files)
    assert any(f.endswith(".css") for f in files)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for f in files:
            assert f in names, f"{f} is not in {wheel.name}"
