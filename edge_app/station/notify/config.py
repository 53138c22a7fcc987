"""The station's ``[notify]`` section → frozen, validated dataclasses.

Strict for the same reason as the trap's config (:mod:`edge_app.core.config`): the station is
set up once and then trusted for months, and a rule that silently never matches (``labels =
["leapard"]``, ``min_score = "0.5"``, a target name with a typo) means rangers are *not* woken
for a leopard while everyone believes they would be. So every unknown key, wrong type,
non-finite number, unknown target or group, and impossible time range is a
:class:`~edge_app.core.errors.ConfigError` naming the dotted key.

Parsing is pure (a dict in, dataclasses out) so the lead can feed it from the station's TOML
file, and tests from literals. Reading ``url_file`` secrets is the one I/O step, kept apart in
:func:`target_urls` so that ``parse`` never touches the disk. Whether Apprise understands a URL
is checked where Apprise is imported (:mod:`edge_app.station.notify.sender`), so that this
module, and with it ``check-config``, works without the optional dependency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_app.core.errors import ConfigError
from edge_app.core.events import CATEGORIES, SPECIES

SECTION = "notify"
KNOWN_LABELS: frozenset[str] = frozenset((*CATEGORIES, *SPECIES, "empty"))
"""What a rule's ``labels`` may name: an event's label or its species."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
MAX_URL_FILE_BYTES = 16 * 1024
"""An Apprise URL is a line; a larger file is a mistake (a key file, a log), not a URL."""


@dataclass(frozen=True)
class QuietHours:
    """A daily local-time range in minutes after midnight; ``start > end`` spans midnight.

    Attributes:
        start: first quiet minute (inclusive).
        end: first minute that is no longer quiet (exclusive).
    """

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        """True if ``minute`` (after local midnight) falls inside the range."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        (a, b), (c, d) = divmod(self.start, 60), divmod(self.end, 60)
        return f"{a:02d}:{b:02d}-{c:02d}:{d:02d}"


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` messages to a target in any ``per_s`` seconds."""

    count: int
    per_s: float


@dataclass(frozen=True)
class Target:
    """One Apprise destination; exactly one of ``url`` and ``url_file`` is set.

    ``url_file`` exists because an Apprise URL *is* the secret (a bot token, an SMTP
    password), and the station's TOML is often readable by more people than the token should be.
    """

    name: str
    url: str | None = None
    url_file: str | None = None


@dataclass(frozen=True)
class Rule:
    """Which alerts go to which targets, and when.

    Attributes:
        key: the rule's dotted key (``notify.rules[0]``), for logs.
        targets: target names, at least one.
        labels: labels or species that match (empty: any).
        units: unit ids or ``fnmatch`` globs, groups already expanded (empty: any unit).
        min_score: the event's score must be at least this.
        quiet_hours: local range during which this rule's messages are held for a digest.
        urgent: ignore ``quiet_hours`` (a tiger at 3 am must wake someone).
        rate_limit: per target; what exceeds it is held for one digest.
    """

    key: str
    targets: tuple[str, ...]
    labels: frozenset[str] = frozenset()
    units: tuple[str, ...] = ()
    min_score: float = 0.0
    quiet_hours: QuietHours | None = None
    urgent: bool = False
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """The whole ``[notify]`` section.

    Attributes:
        base_url: the station's public address ending in ``/`` (links go to
            ``base_url + "alerts/<unit>/<event id>"``); empty: messages carry no link.
        timezone: IANA zone for quiet hours and the times in messages.
        targets: the destinations, names unique.
        rules: evaluated all together; an event goes to each target at most once.
        groups: group name → unit ids or globs, as written.
    """

    base_url: str = ""
    timezone: str = "UTC"
    targets: tuple[Target, ...] = ()
    rules: tuple[Rule, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        """The zone object (validated by :func:`parse`)."""
        return ZoneInfo(self.timezone)

    def alert_link(self, unit: str, event_id: str) -> str:
        """The alert page of ``(unit, event_id)``, or "" without a ``base_url``."""
        if not self.base_url:
            return ""
        from urllib.parse import quote

        return f"{self.base_url}alerts/{quote(unit, safe='')}/{quote(event_id, safe='')}"


def parse(raw: Mapping[str, Any], section: str = SECTION) -> NotifyConfig:
    """Validate the ``[notify]`` table.

    Args:
        raw: the table as TOML parsed it.
        section: the dotted prefix for error keys.

    Raises:
        ConfigError: naming the first offending key.
    """
    _known(raw, section, {"base_url", "timezone", "targets", "rules", "groups"})
    base_url = _str(raw, "base_url", section, "")
    if base_url:
        if not re.match(r"https?://[^\s/]+", base_url) or any(c.isspace() for c in base_url):
            raise ConfigError(f"{section}.base_url",
                              f"must be an http:// or https:// address, got {base_url!r}")
        base_url = base_url if base_url.endswith("/") else base_url + "/"
    timezone = _str(raw, "timezone", section, "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"{section}.timezone",
                          f"unknown time zone {timezone!r} (e.g. 'Asia/Vladivostok')") from e
    targets = _targets(raw.get("targets", []), f"{section}.targets")
    groups = _groups(raw.get("groups", {}), f"{section}.groups")
    names = {t.name for t in targets}
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{section}.rules", "must be an array of tables ([[notify.rules]])")
    rules = tuple(_rule(r, f"{section}.rules[{i}]", names, groups)
                  for i, r in enumerate(rules_raw))
    return NotifyConfig(base_url=base_url, timezone=timezone, targets=targets, rules=rules,
                        groups=groups)


def target_urls(config: NotifyConfig, section: str = SECTION) -> dict[str, str]:
    """Each target's Apprise URL, reading ``url_file`` secrets.

    Raises:
        ConfigError: a ``url_file`` is missing, unreadable, empty, too large, or readable by
            group or others (the URL holds the token: mode must be 0600 or stricter).
    """
    out: dict[str, str] = {}
    for i, t in enumerate(config.targets):
        if t.url is not None:
            out[t.name] = t.url
            continue
        key = f"{section}.targets[{i}].url_file"
        p = Path(t.url_file or "")
        try:
            st = p.stat()
            if st.st_mode & 0o077:
                raise ConfigError(key, f"{p} has mode {st.st_mode & 0o777:04o}: the URL holds a "
                                  f"secret; run chmod 600 {p}")
            if st.st_size > MAX_URL_FILE_BYTES:
                raise ConfigError(key, f"{p} is {st.st_size} bytes, not one URL")
            text = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(key, f"cannot read {p}: {e}") from e
        if not text or "\n" in text:
            raise ConfigError(key, f"{p} must hold exactly one URL on one line")
        out[t.name] = text
    return out


# --- helpers ---------------------------------------------------------------------------------


def _known(raw: Any, where: str, known: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"must be a table, got {type(raw).__name__}")
    for k in raw:
        if k not in known:
            raise ConfigError(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")


def _str(raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}", "is required")
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}", f"must be a string, got {value!r}")
    return value


def _strings(raw: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}", f"must be a list of strings, got {value!r}")
    for j, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}.{key}[{j}]", f"must be a non-empty string, got {v!r}")
    return list(value)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    return float(value)


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(key, f"use 1-64 letters, digits, '.', '-' or '_', got {value!r}")
    return value


def _targets(raw: Any, where: str) -> tuple[Target, ...]:
    if not isinstance(raw, list):
        raise ConfigError(where, "must be an array of tables ([[notify.targets]])")
    out: list[Target] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        key = f"{where}[{i}]"
        _known(t, key, {"name", "url", "url_file"})
        name = _name(t.get("name"), f"{key}.name")
        if name in seen:
            raise ConfigError(f"{key}.name", f"target {name!r} is defined twice")
        seen.add(name)
        url = t.get("url")
        url_file = t.get("url_file")
        if (url is None) == (url_file is None):
            raise ConfigError(f"{key}.url", "give exactly one of url and url_file")
        for k, v in (("url", url), ("url_file", url_file)):
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{key}.{k}", "must be a non-empty string")
        if url is not None and "://" not in url:
            raise ConfigError(f"{key}.url", "must be an Apprise URL (scheme://…)")
        out.append(Target(name=name, url=url, url_file=url_file))
    return tuple(out)


def _groups(raw: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"must be a table of lists, got {type(raw).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for name in raw:
        _name(name, f"{where}.{name}")
        out[name] = tuple(_strings(raw, name, where))
        if not out[name]:
            raise ConfigError(f"{where}.{name}", "must name at least one unit")
    return out


def _rule(raw: Any, key: str, targets: set[str],
          groups: Mapping[str, tuple[str, ...]]) -> Rule:
    _known(raw, key, {"labels", "units", "groups", "min_score", "targets", "quiet_hours",
                      "urgent", "rate_limit"})
    labels = _strings(raw, "labels", key)
    for j, label in enumerate(labels):
        if label not in KNOWN_LABELS:
            raise ConfigError(f"{key}.labels[{j}]", f"unknown label {label!r} "
                              f"(known: {', '.join(sorted(KNOWN_LABELS))})")
    units = _strings(raw, "units", key)
    for j, g in enumerate(_strings(raw, "groups", key)):
        if g not in groups:
            raise ConfigError(f"{key}.groups[{j}]", f"unknown group {g!r} "
                              f"(defined: {', '.join(sorted(groups)) or 'none'})")
        units.extend(groups[g])
    min_score = _number(raw.get("min_score", 0.0), f"{key}.min_score")
    if not 0.0 <= min_score <= 1.0:
        raise ConfigError(f"{key}.min_score", f"must be between 0 and 1, got {min_score}")
    names = _strings(raw, "targets", key)
    if not names:
        raise ConfigError(f"{key}.targets", "must name at least one target")
    for j, n in enumerate(names):
        if n not in targets:
            raise ConfigError(f"{key}.targets[{j}]", f"unknown target {n!r} "
                              f"(defined: {', '.join(sorted(targets)) or 'none'})")
    urgent = raw.get("urgent", False)
    if not isinstance(urgent, bool):
        raise ConfigError(f"{key}.urgent", f"must be true or false, got {urgent!r}")
    quiet = raw.get("quiet_hours")
    return Rule(key=key, targets=tuple(dict.fromkeys(names)), labels=frozenset(labels),
                units=tuple(units), min_score=min_score,
                quiet_hours=None if quiet is None else _quiet(quiet, f"{key}.quiet_hours"),
                urgent=urgent,
                rate_limit=_rate(raw["rate_limit"], f"{key}.rate_limit")
                if "rate_limit" in raw else None)


def _quiet(value: Any, key: str) -> QuietHours:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string like '22:00-06:00', got {value!r}")
    parts = value.replace(" ", "").split("-")
    ends = [_HHMM.fullmatch(p) for p in parts]
    if len(parts) != 2 or ends[0] is None or ends[1] is None:
        raise ConfigError(key, f"must be 'HH:MM-HH:MM' (local time, 00:00-23:59), got {value!r}")
    start, end = (int(m.group(1)) * 60 + int(m.group(2)) for m in ends if m is not None)
    if start == end:
        raise ConfigError(key, f"start and end are equal ({value!r}): say what is quiet")
    return QuietHours(start, end)


def _rate(value: Any, key: str) -> RateLimit:
    _known(value, key, {"count", "per_s"})
    count = value.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{key}.count", f"must be an integer ≥ 1, got {count!r}")
    if "per_s" not in value:
        raise ConfigError(f"{key}.per_s", "is required")
    per_s = _number(value["per_s"], f"{key}.per_s")
    if per_s <= 0:
        raise ConfigError(f"{key}.per_s", f"must be > 0, got {per_s}")
    return RateLimit(count=count, per_s=per_s)
