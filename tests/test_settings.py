"""The settings service: one owner of the effective config, whatever link a change came over."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lorawan_support import KEYS, T0, UNIT, drive, lora_cfg, make_router

from edge_app.core import lora_codec as codec
from edge_app.core.clock import FakeClock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError
from edge_app.sim.modems import Rui3Modem
from edge_app.sim.netserver import NetworkServer
from edge_app.trap.settings import ALLOWED_KEYS, Settings, with_values
from edge_app.trap.store.db import db_path, open_db
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.commands import Commands


def stored(cfg: Config) -> dict[str, tuple[Any, str]]:
    conn = open_db(db_path(cfg.storage.root))
    try:
        rows = conn.execute("SELECT key, value, source FROM settings").fetchall()
    finally:
        conn.close()
    return {r["key"]: (json.loads(r["value"]), r["source"]) for r in rows}


@pytest.mark.broker
def test_lora_threshold_then_mqtt_config_set_both_hold_now_and_after_a_restart(
        tmp_path: Path, broker: Broker) -> None:
    """Issue 9: a LoRa set_threshold followed by an MQTT config/set of another key used to
    undo the LoRa threshold (each path rebuilt the config from its own copy)."""
    clock = FakeClock(start_wall=T0)
    cfg = lora_cfg(tmp_path / "data", status_every_h=0)
    service = Settings(cfg, clock)
    service.load()
    seen: list[Config] = []
    service.subscribe(seen.append)
    ns = NetworkServer("127.0.0.1", broker.port, "chirpstack", clock=clock).start()
    ns.register(KEYS.dev_eui, KEYS.join_eui, KEYS.app_key, UNIT)
    try:
        # 1. Over LoRa: a real downlink through the network server, the modem emulator and
        #    the router, into the service.
        cmd = {"command": "set_threshold", "target": "species", "threshold": 0.42}
        ns.enqueue_downlink(KEYS.dev_eui, 20, codec.encode_downlink(cmd).payload)
        with Rui3Modem(ns, clock=clock, time_factor=0.0).start() as emu, make_router(
                cfg, emu, clock, on_settings=lambda v: service.apply(v, "lorawan"),
                status_source=codec.Status) as router:
            from lorawan_support import add_alert
            add_alert(cfg, T0)
            drive(router, clock, T0 + 3 * 3600,
                  stop_when=lambda: router.stats()["commands"] >= 1)
            assert router.stats()["commands"] == 1
    finally:
        ns.stop()
    assert service.config.detector.species_threshold == 0.42
    # 2. Over MQTT: config/set of another key, through the command handler the link runs.
    store = EventStore(cfg)
    store.open()
    try:
        assert store._conn is not None
        r = Commands(service, clock).handle(
            "config/set", json.dumps({"id": "c1", "values": {"detector.score_threshold": 0.4}})
            .encode(), store._conn)
    finally:
        store.close()
    assert r["ok"] is True, r
    # Both hold in memory...
    assert service.config.detector.species_threshold == 0.42
    assert service.config.detector.score_threshold == 0.4
    assert [c.detector.species_threshold for c in seen] == [0.42, 0.42]
    # ...in the database, once each, with who changed them...
    assert stored(cfg) == {"detector.species_threshold": (0.42, "lorawan"),
                           "detector.score_threshold": (0.4, "config/set")}
    # ...and after a restart (the file again, then the stored changes over it).
    again = Settings(lora_cfg(tmp_path / "data", status_every_h=0), FakeClock()).load()
    assert again.detector.species_threshold == 0.42
    assert again.detector.score_threshold == 0.4


def test_a_refused_change_changes_nothing(tmp_path: Path) -> None:
    cfg = lora_cfg(tmp_path)
    service = Settings(cfg, FakeClock())
    calls: list[Config] = []
    service.subscribe(calls.append)
    for values in ({"storage.root": "/tmp"}, {"detector.score_threshold": 2.0},
                   {"detector.score_threshold": math.nan}, {"policy.empty_below": math.inf},
                   {"camera.burst_frames": 3, "mqtt.host": "evil"}, {}):
        with pytest.raises(ConfigError):
            service.apply(values, "test")
    assert calls == []
    assert service.config == cfg
    assert stored(cfg) == {}


@given(key=st.sampled_from([k for k in ALLOWED_KEYS if k.startswith(("detector", "policy"))]),
       value=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans()
       | st.text(max_size=4) | st.none())
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
def test_any_value_is_applied_valid_or_refused_never_stored_invalid(
        tmp_path: Path, key: str, value: Any) -> None:
    cfg = lora_cfg(tmp_path)
    refused = ""
    try:
        new = with_values(cfg, {key: value})
    except ConfigError as e:
        refused = str(e)
    if refused:
        assert key in refused
        return
    section, _, name = key.partition(".")
    got = getattr(getattr(new, section), name)
    assert isinstance(got, float)
    assert math.isfinite(got)


def test_a_stored_value_the_schema_no_longer_accepts_is_skipped(tmp_path: Path) -> None:
    cfg = lora_cfg(tmp_path)
    conn = open_db(db_path(cfg.storage.root))
    with conn:
        conn.execute("INSERT INTO settings (key, value, updated) VALUES "
                     "('camera.burst_frames', '99', 0), ('storage.root', '\"/x\"', 0), "
                     "('policy.empty_below', '0.2', 0), ('detector.score_threshold', 'NaN', 0)")
    conn.close()
    out = Settings(cfg, FakeClock()).load()
    assert out.camera.burst_frames == cfg.camera.burst_frames
    assert out.storage.root == cfg.storage.root
    assert out.policy.empty_below == 0.2
    assert out.detector.score_threshold == cfg.detector.score_threshold


@pytest.mark.models
def test_a_remote_threshold_reaches_the_running_pipeline(models_dir: Path) -> None:
    """The resolved thresholds used to be computed once at start: a config/set of
    detector.score_threshold changed the config but not what the detector kept."""
    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.pipeline import Pipeline

    p = Pipeline(DetectorConfig(), models_dir)
    try:
        before = p.thresholds.category.copy()
        p.apply(with_values(lora_cfg(Path("/nonexistent")),
                            {"detector.score_threshold": 0.61}).detector)
        assert p.cfg.score_threshold == 0.61
        assert float(p.thresholds.category.max()) == pytest.approx(0.61)
        assert not (p.thresholds.category == before).all()
    finally:
        p.close()
