"""``camtrap data-budget``: the ``--json`` contract, the model using the measured figures, and
``--measure`` against the shipped mosquitto over TLS giving the figures that are recorded."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from station_support import deploy_broker

from edge_app.tools import data_budget as db
from edge_app.tools import data_budget_figures as df


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> int:
    p = argparse.ArgumentParser()
    db.add_arguments(p)
    return db.main(p.parse_args(list(argv)))


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert cli(capsys, "--json", *argv) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_json_gives_the_three_policies(capsys: pytest.CaptureFixture[str]) -> None:
    d = cli_json(capsys, "--triggers-per-day", "20")
    policies = d["policies"]
    assert isinstance(policies, list)
    assert [p["policy"] for p in policies] == ["always", "on-demand", "windows"]
    for p in policies:
        assert {"policy", "mb_per_month", "within_plan", "mb_without_full_images",
                "full_images_that_fit", "parts_mb"} <= set(p)
        assert isinstance(p["mb_per_month"], float)
        assert p["mb_per_month"] > 0
        assert isinstance(p["within_plan"], bool)
    figures = d["figures"]
    assert isinstance(figures, dict)
    assert "--measure" in figures["CONNECT"]["source"]
    assert all(f["source"] for f in figures.values())


def test_one_policy_and_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    d = cli_json(capsys, "--policy", "always", "--plan-mb", "50")
    policies = d["policies"]
    assert isinstance(policies, list)
    assert len(policies) == 1
    (p,) = policies
    assert p["policy"] == "always"
    assert p["within_plan"] is False  # 10 full images a day do not fit 50 MB
    assert p["mb_without_full_images"] < 50
    assert p["full_images_that_fit"] < p["full_images_per_month"]
    roomy = cli_json(capsys, "--policy", "always", "--plan-mb", "5000")["policies"]
    assert isinstance(roomy, list)
    assert roomy[0]["within_plan"] is True


def test_overheads_come_from_the_measured_figures() -> None:
    inp = db.Inputs(triggers_per_day=0, kept_fraction=0, keepalive_s=60)
    always = db.policy_month("always", inp)["parts_mb"]
    ping = df.KEEPALIVE.value + df.KEEPALIVE_SEGMENTS.value * df.IP_TCP_HEADER.value
    assert always["keepalive"] == pytest.approx(
        86400 / 60 * ping * db.DAYS_PER_MONTH / 1e6, abs=1e-3)
    connect = (df.CONNECT.value + df.DISCONNECT.value + (df.CONNECT_SEGMENTS.value
               + df.DISCONNECT_SEGMENTS.value) * df.IP_TCP_HEADER.value)
    assert always["handshakes"] == pytest.approx(connect * db.DAYS_PER_MONTH / 1e6, abs=1e-3)
    on_demand = db.policy_month("on-demand", db.Inputs(triggers_per_day=0,
                                                        status_every_s=3600))
    assert on_demand["connects_per_day"] == 24
    assert on_demand["parts_mb"]["handshakes"] == pytest.approx(
        24 * connect * db.DAYS_PER_MONTH / 1e6, abs=1e-3)
    # a longer keepalive costs less, linearly
    slow = db.policy_month("always", db.Inputs(keepalive_s=120))["parts_mb"]["keepalive"]
    assert slow == pytest.approx(always["keepalive"] / 2, rel=1e-2)


def test_a_large_message_pays_its_records_and_segments() -> None:
    payload = 350_000
    records = math.ceil(payload / 16384)
    wire = payload + df.PUBLISH_LARGE.value + (records - 2) * df.TLS_RECORD_OVERHEAD.value
    segs = math.ceil(wire / df.LTE_MSS.value)
    expect = wire + (segs + math.ceil(segs / 2) + 1) * df.IP_TCP_HEADER.value
    assert db.message_bytes(payload, small=False) == pytest.approx(expect)
    assert db.message_bytes(600, small=True) == 600 + 78 + 3 * 52


def test_text_report_names_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys) == 0
    out = capsys.readouterr().out
    assert "on-demand" in out
    assert "Sources:" in out
    assert "CONNECT = 2763 B" in out


def test_markdown_table_for_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--markdown", "--triggers-per-day", "20") == 0
    out = capsys.readouterr().out
    assert "| on-demand |" in out
    assert "| CONNECT | 2763 B |" in out


def test_bad_numbers_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(capsys, "--kept-fraction", "nan")
    with pytest.raises(SystemExit):
        cli(capsys, "--keepalive-s", "1")
    assert cli(capsys, "--measure", "localhost:8883") == 2  # the credentials are missing


@pytest.mark.broker
def test_measure_against_the_shipped_broker_matches_the_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded figures are what --measure gives against the shipped TLS broker today."""
    broker, pki = deploy_broker(tmp_path, ["trap-01"], [])
    try:
        m = db.measure("127.0.0.1", broker.port, str(pki / "ca.crt"), "trap-01",
                       (pki / "units/trap-01/mqtt-password").read_text().strip(),
                       keepalive_s=2, pings=2)
    finally:
        broker.stop()
    assert m["tls"] == "TLSv1.3"
    assert m["connect"]["bytes"] == pytest.approx(df.CONNECT.value, rel=0.05)
    assert m["connect"]["segments"] == pytest.approx(df.CONNECT_SEGMENTS.value, abs=4)
    assert m["keepalive"]["bytes"] == df.KEEPALIVE.value
    assert m["publish_small"]["overhead_bytes"] == df.PUBLISH_SMALL.value
    assert m["publish_large"]["overhead_bytes"] == df.PUBLISH_LARGE.value
    assert m["disconnect"]["bytes"] == df.DISCONNECT.value
