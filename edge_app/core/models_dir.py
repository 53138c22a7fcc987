"""Where the model files are: one search order for every command.

``camtrap detect``, ``eval``, ``bench detect``, ``models ls/verify/adapt``, ``run``,
``check-config`` and ``demo`` all call :func:`resolve_models_dir`, so a folder that works for
one works for all of them. The order, first match wins:

1. ``--models DIR`` on the command line;
2. ``detector.models_dir`` in the config (relative to the config file's folder);
3. the ``CAMTRAP_MODELS`` environment variable;
4. :data:`INSTALLED_MODELS_DIR`, ``/var/lib/camtrap/models``, the installed default;
5. ``../shared/data/models`` beside a source checkout (``CAMTRAP_SHARED`` moves it), the
   development pack the tests and the quick start use.

Why ``/var/lib/camtrap/models`` rather than ``/usr/share/camtrap/models``: models are state a
unit changes in the field (signed model packs are installed and rolled back on the unit), and
under the systemd unit's ``ProtectSystem=strict`` ``/var/lib/camtrap`` is the one tree the
service may write; ``/usr/share`` belongs to the package manager.

A place named explicitly (1-3) that does not exist is an error, not a reason to go on to the
next one: a typo in ``--models`` must not quietly load another model pack. The defaults (4, 5)
are only used when they exist. When nothing is found, the error lists every place looked at.

Pure path logic (stdlib only) so that ``core`` can hold it for every deployable.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_app.core.errors import ModelError

INSTALLED_MODELS_DIR = Path("/var/lib/camtrap/models")
"""The installed default models folder (see the module docstring for why there)."""

SEARCH_HELP = ("model folder (else detector.models_dir, CAMTRAP_MODELS, "
               f"{INSTALLED_MODELS_DIR}, ../shared/data/models beside a clone)")
"""The ``--models`` help text every command shows."""

_CHECKOUT = Path(__file__).resolve().parents[2]
"""The repository root when running from a source checkout (an editable install)."""


def shared_data_dir() -> Path | None:
    """The shared photo and model pack of a development checkout, if there is one.

    ``CAMTRAP_SHARED`` names it; otherwise ``../shared`` beside the repository, but only when
    this package *is* a checkout (a ``pyproject.toml`` above it): an installed wheel on a unit
    has nothing beside it, and must not pick up whatever folder happens to be there.
    """
    env = os.environ.get("CAMTRAP_SHARED")
    if env:
        root = Path(env).expanduser()
    elif (_CHECKOUT / "pyproject.toml").is_file():
        root = _CHECKOUT.parent / "shared"
    else:
        return None
    data = root / "data"
    return data if data.is_dir() else None


def resolve_models_dir(cli_value: str | None, cfg_value: str, *,
                       installed: Path | None = None) -> Path:
    """The models folder, searched in the order of the module docstring.

    Args:
        cli_value: ``--models`` (None or '' when not given).
        cfg_value: ``detector.models_dir`` ('' when not set, or when the command has no
            config).
        installed: the installed default (None: :data:`INSTALLED_MODELS_DIR`; a parameter
            only so tests can move it).

    Returns:
        An existing folder.

    Raises:
        ModelError: an explicitly named folder does not exist (the message says who named
            it), or no place has one (the message lists every place looked at).
    """
    installed = INSTALLED_MODELS_DIR if installed is None else installed
    env = os.environ.get("CAMTRAP_MODELS", "")
    looked: list[str] = []
    for value, how in ((cli_value, "--models"), (cfg_value, "detector.models_dir"),
                       (env, "CAMTRAP_MODELS")):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ModelError(str(path), f"model folder does not exist (set by {how})")
            return path
        looked.append(f"{how} (not set)")
    if installed.is_dir():
        return installed
    looked.append(f"{installed} (installed default: no such folder)")
    shared = shared_data_dir()
    if shared is not None and (shared / "models").is_dir():
        return shared / "models"
    looked.append("../shared/data/models beside a clone ("
                  + ("no such folder" if shared is not None else "no shared pack here") + ")")
    raise ModelError("models", "no model folder found; looked at: " + "; ".join(looked)
                     + ". Pass --models DIR, set detector.models_dir in the config, set "
                     f"CAMTRAP_MODELS, or install the models in {installed}")
