"""Offline validation of a Camtrap DP 1.0.2 package against the profile shipped in the package.

Why two steps: the profile (``datapackage.json`` rules) is JSON Schema draft 4 that ``$ref``s
the Frictionless Data Package schema and GeoJSON by URL, and the package names its table
schemas by URL too; a field laptop or a unit has no network. So:

1. ``datapackage.json`` is checked with ``jsonschema`` (Draft 4) against the vendored profile,
   its GeoJSON ``$ref`` resolved to the vendored ``geojson.json``; the base Data Package rules
   it also ``$ref``s are left to step 2 (frictionless applies them itself).
2. ``frictionless`` validates a copy of the descriptor, in a temporary folder beside copies of
   the CSV files, whose three resource ``schema`` URLs name the vendored table schemas and
   whose ``profile`` is the built-in ``data-package``: field types, required fields, enums,
   ranges, patterns, primary and foreign keys. Media files are not part of this check.

Nothing global is patched: both libraries get local paths only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

VERSION = "1.0.2"
BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}"
PROFILE_URL = f"{BASE_URL}/camtrap-dp-profile.json"
TABLES = ("deployments", "media", "observations")
GEOJSON_URL = "http://json.schemastore.org/geojson.json"
DATA_PACKAGE_URL = "https://specs.frictionlessdata.io/schemas/data-package.json"
MAX_PROBLEMS = 50


def schema_url(table: str) -> str:
    """The published URL of a table schema, as a package must name it."""
    return f"{BASE_URL}/{table}-table-schema.json"


def vendored(name: str) -> Path:
    """A file of the vendored Camtrap DP 1.0.2 copy (package data)."""
    path = Path(str(resources.files("edge_app.tools") / "camtrap_dp_1_0_2" / name))
    if not path.is_file():
        raise FileNotFoundError(f"vendored Camtrap DP file missing from the package: {path}")
    return path


def _load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(vendored(name).read_text(encoding="utf-8"))
    return value


def check_descriptor(descriptor: dict[str, Any]) -> list[str]:
    """Problems of ``datapackage.json`` against the Camtrap DP profile (step 1)."""
    from jsonschema import Draft4Validator, FormatChecker  # type: ignore[import-untyped]
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    registry: Registry[Any] = Registry().with_resources([
        (GEOJSON_URL, Resource.from_contents(_load("geojson.json"),
                                             default_specification=DRAFT4)),
        (DATA_PACKAGE_URL, Resource.from_contents({}, default_specification=DRAFT4)),
    ])
    # Every format jsonschema knows (``date`` is not a draft-4 format, yet the profile uses it
    # for ``temporal``, and frictionless does not check ``temporal`` at all).
    validator = Draft4Validator(_load("camtrap-dp-profile.json"), registry=registry,
                                format_checker=FormatChecker())
    out = []
    for e in sorted(validator.iter_errors(descriptor), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        out.append(f"datapackage.json {where}: {e.message[:300]}")
    return out


def check_tables(folder: Path, descriptor: dict[str, Any]) -> list[str]:
    """Problems of the tables against the vendored table schemas (step 2, frictionless)."""
    import frictionless

    copy = json.loads(json.dumps(descriptor))
    copy["profile"] = "data-package"
    with tempfile.TemporaryDirectory(prefix="camtrap-cdp-") as tmp:
        work = Path(tmp)
        for res in copy.get("resources", []):
            if not isinstance(res, dict):
                continue
            path = res.get("path")
            if isinstance(path, str) and "/" not in path and (folder / path).is_file():
                shutil.copyfile(folder / path, work / path)
            name = res.get("name")
            if name in TABLES and res.get("schema") == schema_url(name):
                local = f"{name}-table-schema.json"
                shutil.copyfile(vendored(local), work / local)
                res["schema"] = local
        (work / "datapackage.json").write_text(json.dumps(copy), encoding="utf-8")
        report = frictionless.Package(str(work / "datapackage.json")).validate()
        rows = report.flatten(["type", "message"])
    return [f"{kind}: {message[:300]}" for kind, message in rows]


def validate(folder: str | Path) -> list[str]:
    """Every problem found in the package in ``folder`` (empty: valid), at most 50.

    Raises:
        OSError: ``datapackage.json`` cannot be read.
    """
    folder = Path(folder)
    try:
        descriptor = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"datapackage.json is not JSON: {e}"]
    if not isinstance(descriptor, dict):
        return ["datapackage.json is not a JSON object"]
    try:
        problems = check_descriptor(descriptor)
        problems += check_tables(folder, descriptor)
    except ImportError as e:
        return [f"cannot validate ({e}): pip install 'camtrap[export]', or --no-validate"]
    return problems[:MAX_PROBLEMS]
