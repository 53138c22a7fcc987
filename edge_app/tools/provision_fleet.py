"""What one row of the fleet file (:mod:`edge_app.core.fleet`) becomes on a card."""

from __future__ import annotations

import json

from edge_app.core.fleet import FleetRow

__all__ = ["FleetRow", "render_config", "render_lorawan_secrets"]


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def render_config(row: FleetRow, *, client_certs: bool,
                  detector: dict[str, str] | None = None) -> str:
    """The unit's camtrap.toml, in the shape of ``deploy/config/field.toml`` with its values.

    Secrets are named by path only (``/etc/camtrap/...``, where the install script puts
    them); client certificate lines appear only when the credentials hold them, so a unit
    made without ``make-credentials --client-certs`` gets a config that starts. ``detector``
    adds ``[detector]`` keys (the models a provisioned pack holds, the fleet's public key).
    """
    mqtt_tls = [f"ca_file = {_s('/etc/camtrap/ca.crt')}"]
    if client_certs:
        mqtt_tls += [f"cert_file = {_s('/etc/camtrap/unit.crt')}",
                     f"key_file = {_s('/etc/camtrap/unit.key')}"]
    lines = [
        f"# Unit {row.unit_id}, written by `camtrap provision` from the fleet file",
        f"# (deployment {row.deployment_id}). Check on the unit with:",
        "#   camtrap check-config /etc/camtrap/camtrap.toml",
        "",
        "[unit]",
        f"id = {_s(row.unit_id)}",
        f"location = {{ lat = {row.lat!r}, lon = {row.lon!r}, name = {_s(row.site_name)} }}",
        "",
        "[hardware]",
        'backend = "pi"',
        "",
        "[trigger]",
        "pin = 17",
        'device = "edge"',
        "holdoff_s = 5.0",
        "",
        "[camera]",
        'source = "picamera2"',
        "width = 2304",
        "height = 1296",
        "burst_frames = 3",
        "burst_interval_s = 0.3",
        "pre_trigger_frames = 1",
        "",
        "[detector]",
        "num_threads = 4",
        *(f"{k} = {_s(v)}" for k, v in (detector or {}).items()),
        "",
        "[policy]",
        'alert_on = ["leopard", "tiger", "person", "vehicle"]',
        "",
        "[background]",
        "enabled = true",
        "",
        "[storage]",
        f"root = {_s('/var/lib/camtrap')}",
        "",
        "[mqtt]",
        f"host = {_s(row.broker_host)}",
        f"port = {row.broker_port}",
        "tls = true",
        *mqtt_tls,
        f"username = {_s(row.unit_id)}",
        f"password_file = {_s('/etc/camtrap/mqtt-password')}",
    ]
    if row.lorawan:
        lines += ["", "[lorawan]", "enabled = true",
                  f"secrets_file = {_s('/etc/camtrap/lorawan.toml')}"]
    return "\n".join(lines) + "\n"


def render_lorawan_secrets(row: FleetRow) -> str:
    """The file :func:`edge_app.trap.uplink.lorawan.load_secrets` reads (mode 0600 once
    installed)."""
    return (f"# LoRaWAN OTAA keys of unit {row.unit_id}; keep mode 0600\n"
            f'dev_eui = "{row.dev_eui}"\njoin_eui = "{row.join_eui}"\n'
            f'app_key = "{row.app_key}"\n')
