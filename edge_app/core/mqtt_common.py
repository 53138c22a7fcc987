"""What both ends of an MQTT link share (trap and station): MQTT 5 properties and password files.

paho-mqtt is the one third-party library core uses besides numpy: both deployables speak
MQTT 5, and these helpers must behave the same on both.
"""

from __future__ import annotations

from pathlib import Path

from paho.mqtt.properties import Properties

from edge_app.core.errors import ConfigError


def new_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for a packet type (paho's constructor is untyped)."""
    props: Properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    return props


def read_password_file(key: str, path: str) -> str:
    """The password in ``path`` (first line), refusing a file other users could read.

    Args:
        key: the config key naming the file, for the error.
        path: the file.

    Raises:
        ConfigError: missing, unreadable, empty, or with any group/other permission bit
            (mode must be 0600 or stricter).
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(key, f"cannot read {p}: {e.strerror}") from e
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(key, f"{p} has mode {mode:04o}: other users could read the password;"
                          f" run chmod 600 {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(key, f"cannot read {p}: {e}") from e
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(key, f"{p} is empty")
    return password
