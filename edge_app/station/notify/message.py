"""The words of a notification: pure text from an :class:`Outgoing` and the time.

Written for a ranger glancing at a phone lock screen, possibly at 3 am: the title says what,
where and how sure (``Leopard at Kedrovaya 3 (LL-042), 0.87``), so the decision to get up can
be made without opening the message; the body adds local time and age (a LoRa alert can be
minutes old by the time it is read), the coordinates, which link carried it (a LoRa alert has
no picture yet, which explains a text-only message) and the alert page.

Kept apart from the sender so that the exact text is tested without Apprise, threads or
sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from edge_app.station.notify.config import NotifyConfig
from edge_app.station.notify.policy import Alert, Outgoing

MAX_DIGEST_LINES = 30
"""Lines listed in a digest; more would be cut by SMS gateways and Telegram alike."""
_LINKS = {"lorawan": "LoRa (11-byte alert, no picture yet)", "mqtt": "MQTT"}


@dataclass(frozen=True)
class Message:
    """A rendered notification: Apprise's title and body, plus the picture to attach."""

    title: str
    body: str
    picture: str | None = None


def render(out: Outgoing, config: NotifyConfig, now: float) -> Message:
    """The message for ``out`` at wall time ``now`` (for the "5 min ago")."""
    tz = config.tz
    if out.kind == "digest":
        return _digest(out, config, tz)
    a = out.alerts[0]
    if out.kind == "followup":
        lines = [f"Picture of the alert sent over LoRa at {_clock(a.ts, tz)} {config.timezone}."]
        link = config.alert_link(a.unit, a.id)
        if link:
            lines.append(f"Alert: {link}")
        return Message(f"Picture: {title(a)}", "\n".join(lines), a.picture)
    lines = [f"{_clock(a.ts, tz)} {config.timezone}, {_ago(now - a.ts)}"]
    lines.append(f"Unit: {a.unit}" + (f", {a.site}" if a.site else ""))
    if a.lat is not None and a.lon is not None:
        lines.append(f"Position: {a.lat:.5f}, {a.lon:.5f}")
    lines.append(f"Via: {_LINKS.get(a.source, a.source)}")
    if out.reason:
        lines.append(f"Held by {out.reason}")
    link = config.alert_link(a.unit, a.id)
    if link:
        lines.append(f"Alert: {link}")
    return Message(title(a), "\n".join(lines), a.picture)


def title(a: Alert) -> str:
    """``Leopard at Kedrovaya 3 (LL-042), 0.87`` (``at LL-042`` without a site name)."""
    what = a.what.replace("_", " ").capitalize()
    where = f"{a.site} ({a.unit})" if a.site else a.unit
    return f"{what} at {where}, {a.score:.2f}"


def _digest(out: Outgoing, config: NotifyConfig, tz: ZoneInfo) -> Message:
    n = len(out.alerts)
    why = f" (held by {out.reason})" if out.reason else ""
    lines = [f"{n} more alerts{why}:"]
    for a in out.alerts[:MAX_DIGEST_LINES]:
        where = f" {a.site}" if a.site else ""
        line = f"{a.unit}{where} {a.what} {a.score:.2f} at {_clock(a.ts, tz)}"
        link = config.alert_link(a.unit, a.id)
        lines.append(f"{line} {link}" if link else line)
    if n > MAX_DIGEST_LINES:
        lines.append(f"… and {n - MAX_DIGEST_LINES} more")
    if config.base_url:
        lines.append(f"All alerts: {config.base_url}alerts/")
    best = max(out.alerts, key=lambda a: a.score)
    return Message(f"{n} more alerts, best: {title(best)}", "\n".join(lines))


def _clock(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M")


def _ago(seconds: float) -> str:
    if seconds < 60:
        return "just now"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min ago"
    return f"{minutes // 60} h ago"
