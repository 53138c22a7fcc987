"""The ``[cellular]`` section: when the LTE bearer is up, and the SIM's monthly plan.

The section lives in :class:`edge_app.core.config.Config` (``cfg.cellular``) like every other,
with its cross-field rules in core's ``_check``; this module re-exports it for the cellular
package and keeps :func:`parse_cellular`, the door for the section alone (the policy and
budget tests build one without a whole config) with the same errors
(``ConfigError("cellular.<key>", reason)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from edge_app.core.config import CELLULAR_MAX_WINDOWS as MAX_WINDOWS
from edge_app.core.config import CellularConfig, Config, _build, _check_cellular, parse_window

__all__ = ["MAX_WINDOWS", "SECTION", "CellularConfig", "LinkMode", "check", "parse_cellular",
           "parse_window"]

LinkMode = Literal["always", "on-demand", "windows"]
SECTION = "cellular"


def parse_cellular(data: Mapping[str, Any]) -> CellularConfig:
    """The ``[cellular]`` table → :class:`CellularConfig`.

    Raises:
        ConfigError: an unknown key, a wrong type, a value out of its limits, a bad window or
            time zone, or ``windows`` mode without windows; ``key`` is ``cellular.<key>``.
    """
    cfg = _build(CellularConfig, dict(data), SECTION)
    check(cfg)
    return cfg


def check(cfg: CellularConfig) -> None:
    """The rules across keys (core's, for a section built on its own)."""
    _check_cellular(Config(cellular=cfg))
