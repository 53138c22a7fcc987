"""Every figure the data budget uses, each with where it comes from.

Why a module of constants (the :mod:`edge_app.tools.power_figures` pattern): a budget is only
as good as its inputs, and a reader must be able to check each one. Each :class:`Figure`
carries its value, unit and source; ``estimate=True`` marks the ones that are not measured.
``camtrap data-budget`` prints them under "Sources" and its ``--json`` carries them.

The measured figures are TCP payload bytes (the TLS records) and TCP segments of one trap
session, counted by the kernel (``TCP_INFO``) on a relay in front of the broker, with the
trap's own MQTT 5 session: ``clean_start=False`` with a session expiry, the retained
``online`` status and the ack + command subscriptions on connect, QoS 1 publishes. Measured
with::

    camtrap data-budget --measure 127.0.0.1:PORT --ca-file PKI/ca.crt --user trap-01 \\
        --password-file PKI/units/trap-01/mqtt-password

against mosquitto 2.0.11 with the shipped ``deploy/mosquitto/mosquitto.conf`` and credentials
from ``deploy/mosquitto/make-credentials`` (EC P-256 CA and server certificate, password
login; the broker set up as ``tests/station_support.deploy_broker`` does), client paho-mqtt
2.2.0 on Python 3.11 with OpenSSL 3.0.19; negotiated TLS 1.3, TLS_AES_256_GCM_SHA384;
keepalive 5 s over 3 pings. 2026-12-03, Linux 6.18 x86_64 (2 cores), loopback. Three runs
gave 2762–2764 bytes for the connect (an ECDSA signature's DER length varies), the rest
identical. The bytes do not depend on the
machine; the segment counts of small exchanges do not either (each record is one segment);
bulk data is re-cut for LTE with :data:`LTE_MSS`.
"""

from __future__ import annotations

from edge_app.tools.power_figures import Figure

_MEASURED = "measured 2026-12-03 with camtrap data-budget --measure (module docstring)"

CONNECT = Figure(2763.0, "B", f"{_MEASURED}: TCP connect + TLS 1.3 handshake (server "
                 "certificate chain, session tickets) + MQTT CONNECT/CONNACK + retained "
                 "online status + SUBSCRIBE/SUBACK, both directions")
CONNECT_SEGMENTS = Figure(18.0, "segments", f"{_MEASURED}: the connect above, SYN to the last "
                          "ACK, both directions")
KEEPALIVE = Figure(48.0, "B", f"{_MEASURED}: one PINGREQ + PINGRESP (2 B each in a 24 B TLS "
                   "record)")
KEEPALIVE_SEGMENTS = Figure(3.0, "segments", f"{_MEASURED}: PINGREQ, PINGRESP, ACK")
PUBLISH_SMALL = Figure(78.0, "B", f"{_MEASURED}: QoS 1 PUBLISH of 600 B on camtrap/<unit>/event "
                       "+ PUBACK, beyond the payload")
PUBLISH_SMALL_SEGMENTS = Figure(3.0, "segments", f"{_MEASURED}: the 600 B publish")
PUBLISH_LARGE = Figure(101.0, "B", f"{_MEASURED}: QoS 1 PUBLISH of 30 000 B + PUBACK, beyond the "
                       "payload (2 TLS records)")
PUBLISH_LARGE_RECORDS = Figure(2.0, "records", "30 000 B in TLS records of 16 384 B")
DISCONNECT = Figure(48.0, "B", f"{_MEASURED}: MQTT DISCONNECT + TLS close_notify")
DISCONNECT_SEGMENTS = Figure(6.0, "segments", f"{_MEASURED}: 4 counted by TCP_INFO until the "
                             "relay closed + its FIN and the last ACK", estimate=True)
TLS_RECORD_PAYLOAD = Figure(16384.0, "B", "RFC 8446 §5.1: the largest TLS record plaintext")
TLS_RECORD_OVERHEAD = Figure(22.0, "B", "RFC 8446 §5.2 with AES-GCM: 5 B header + 1 B content "
                             "type + 16 B tag (the 24 B ping records above agree)")
IP_TCP_HEADER = Figure(52.0, "B", "IPv4 20 B + TCP 20 B + timestamps option 12 B (Linux "
                       "default) per segment; an LTE bearer bills IP bytes", estimate=True)
LTE_MSS = Figure(1388.0, "B", "MTU 1440 (a common LTE bearer MTU) minus 52 B of headers",
                 estimate=True)
ALERT_PAYLOAD = Figure(600.0, "B", "an event JSON (ARCHITECTURE §6) with one detection and its "
                       "media list, ~500–700 B", estimate=True)
STATUS_PAYLOAD = Figure(80.0, "B", "the retained status {state, ts, version}", estimate=True)
STATS_PAYLOAD = Figure(900.0, "B", "a stats message (health, counters, links)",
                       estimate=True)


def all_figures() -> dict[str, Figure]:
    """Every figure above by name (for "Sources" and ``--json``)."""
    return {name: value for name, value in globals().items()
            if isinstance(value, Figure) and name.isupper()}
