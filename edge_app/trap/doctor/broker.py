"""The broker line: reachable, TLS trusted, credentials accepted, told apart.

A technician can act on "wrong CA" or "wrong password"; "cannot connect" sends them searching.
So the three layers are tried in order and each failure is named by the layer that failed:
TCP (refused: the broker is down or the port wrong), TLS (the server's certificate is not
signed by ``mqtt.ca_file``, or not for ``mqtt.host``), MQTT (CONNACK "bad user name or
password" / "not authorized").

How the doctor's connection leaves the unit's broker session alone: it uses the unit's own
client id and user (the base station's broker takes the user name as client id anyway), with
``clean_start`` false and the configured session expiry, so the session and its queued
messages survive; messages the broker hands over meanwhile are not acknowledged (manual ack),
so it sends them again when the trap reconnects. No will is set, so no "lost" status is
published. A running trap is kicked off once by the takeover: stop it first.
"""

from __future__ import annotations

import ssl

from edge_app.core.errors import ConfigError
from edge_app.trap.doctor.context import Ctx
from edge_app.trap.doctor.report import Check

AUTH_REASONS = ("bad user name or password", "not authorized")


def check_broker(ctx: Ctx) -> Check:
    cfg = ctx.cfg
    m = cfg.mqtt
    if not m.enabled:
        return Check("mqtt", "skip", "MQTT off (mqtt.enabled false)")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes

    from edge_app.core.mqtt_common import new_properties
    from edge_app.trap.uplink.mqtt_session import check_credentials

    where = f"{m.host}:{m.port}"
    try:
        password = check_credentials(cfg)
    except ConfigError as e:
        return Check("mqtt", "fail", str(e), "copy the unit's files from make-credentials "
                     "(ca.crt, units/<id>/mqtt-password, mode 0600)")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.mqtt_client_id,
                         protocol=mqtt.MQTTv5)
    client.connect_timeout = max(0.5, ctx.timeout_s / 2)
    client.manual_ack_set(True)
    if password is not None:
        client.username_pw_set(m.username or cfg.unit.id, password)
    if m.tls:
        try:
            client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                           keyfile=m.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError, ValueError) as e:
            return Check("mqtt", "fail", f"mqtt.ca_file / cert_file / key_file unusable: {e}",
                         "copy ca.crt (and the client certificate) from make-credentials")
    answer: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        answer.append(str(rc))

    client.on_connect = on_connect
    props = new_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = m.session_expiry_s
    try:
        client.connect(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                       properties=props)
    except ssl.SSLCertVerificationError as e:
        if "hostname" in str(e.verify_message).lower() or "ip address" in str(
                e.verify_message).lower():
            return Check("mqtt", "fail", f"{where}: certificate is not for {m.host} "
                         f"({e.verify_message})", "set mqtt.host to the name the broker's "
                         "certificate was made for (make-credentials --server-name/-ip)")
        return Check("mqtt", "fail", f"{where}: wrong CA: the broker's certificate is not "
                     f"signed by mqtt.ca_file ({e.verify_message})",
                     "copy this base station's ca.crt (from make-credentials) to mqtt.ca_file")
    except ssl.SSLError as e:
        return Check("mqtt", "fail", f"{where}: TLS handshake failed ({e.reason or e})",
                     "mqtt.port must be the broker's TLS listener (8883), or set mqtt.tls")
    except ConnectionRefusedError:
        return Check("mqtt", "fail", f"{where}: connection refused (broker down?)",
                     "start mosquitto on the base station; check mqtt.host and mqtt.port")
    except OSError as e:
        return Check("mqtt", "fail", f"{where}: unreachable ({e.strerror or e})",
                     "check the network (Wi-Fi / LTE) and mqtt.host")
    try:
        end = ctx.clock.monotonic() + ctx.timeout_s / 2
        while not answer and ctx.clock.monotonic() < end:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not answer:
                break
    finally:
        client.disconnect()
    if not answer:
        return Check("mqtt", "fail", f"{where}: no CONNACK (the broker closed the connection)",
                     "check the broker's log; mqtt.port may not be an MQTT listener")
    rc = answer[0]
    if rc.lower() in AUTH_REASONS:
        return Check("mqtt", "fail", f"{where}: wrong password or user ({rc}; user "
                     f"{m.username or cfg.unit.id})", "mqtt.password_file must hold the "
                     "password make-credentials wrote for this unit (units/<id>/mqtt-password)")
    if rc.lower() != "success":
        return Check("mqtt", "fail", f"{where}: refused: {rc}", "check the broker's log")
    how = "TLS" if m.tls else "plain TCP"
    auth = "password" if password is not None else "no password"
    return Check("mqtt", "pass", f"{where} accepts us ({how}, {auth})")
