"""Every figure the power budget uses, each with where it comes from.

Why a module of constants instead of numbers inside the model: a budget is only as good as its
inputs, and a reader must be able to check each one. Every :class:`Figure` carries its value,
unit and source; ``estimate=True`` marks the ones that are an engineering estimate (derived,
scaled from a sourced figure, or common practice) rather than a published or measured value.
``camtrap power-budget`` prints them all under "Sources", and the tests refuse a figure without
a source.

"§" references are to the shared ``reference/formats-and-field.md`` (power §5, PIR and camera
§8) and ``reference/peers.md`` (§4, published figures); those documents cite the originals.
Board currents are at 5 V, so ``W = A × 5``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Figure:
    """One number with its unit and source.

    Attributes:
        value: the number, in ``unit``.
        unit: e.g. ``W``, ``s``, ``fraction``.
        source: where it comes from (document, datasheet, measurement), never empty.
        estimate: True when it is an estimate rather than a published or measured figure.
    """

    value: float
    unit: str
    source: str
    estimate: bool = False


V5 = 5.0  # the Pi's supply rail: the official currents below are at 5 V

_PSU = "raspberrypi/documentation power-supplies.adoc (§5.1)"
_CNX = "cnx-software 2021-12-09, Zero 2 W on an Otii Arc, Bullseye Lite (§5.1)"
_JUJU = "juju.nz 2017, tuned Raspbian on a Pi Zero W (§8.6)"
_EST = "estimate"


@dataclass(frozen=True)
class BoardFigures:
    """One Raspberry Pi model. Times in s, powers in W at the 5 V rail."""

    name: str
    idle_w: Figure  # tuned (HDMI, LEDs, radios off), no camera
    idle_untuned_w: Figure
    active_w: Figure  # CPU busy: imports, model load, inference
    boot_w: Figure
    boot_to_service_s: Figure  # power on → the first systemd service can start
    app_start_s: Figure  # Python, numpy, picamera2 imports and camera open
    infer_s_per_frame: Figure  # detector on one frame
    model_load_s: Figure
    shutdown_s: Figure  # halt requested → the halt pin tells the MCU to cut power


BOARDS: Mapping[str, BoardFigures] = {
    "pi-zero-2w": BoardFigures(
        name="Pi Zero 2 W",
        idle_w=Figure(0.075 * V5, "W", f"{_CNX}: tunable to <75 mA idle"),
        idle_untuned_w=Figure(0.120 * V5, "W", f"{_CNX}: ~120 mA idle"),
        active_w=Figure(0.350 * V5, "W", f"{_PSU}: bare-board active current 350 mA"),
        boot_w=Figure(0.350 * V5, "W",
                      f"{_PSU}: active 350 mA, taken for the CPU-bound boot", estimate=True),
        boot_to_service_s=Figure(3.91, "s", f"{_JUJU}: 3.91 s to the earliest service (the "
                                 "Zero 2 W's firmware stages are assumed no slower)"),
        app_start_s=Figure(4.0, "s", f"{_EST}: Python + numpy + picamera2 imports and camera "
                           "open on a Cortex-A53 at 1 GHz", estimate=True),
        infer_s_per_frame=Figure(0.6, "s", f"{_EST}: 4× the Pi 4's ~152 ms YOLOv8 on "
                                 "camera-trap images (peers §4) for 4× A53 at 1 GHz",
                                 estimate=True),
        model_load_s=Figure(2.0, "s", f"{_EST}: detector + classifier from SD", estimate=True),
        shutdown_s=Figure(5.0, "s", f"{_EST}: systemd halt on a tuned image", estimate=True),
    ),
    "pi-4": BoardFigures(
        name="Pi 4B",
        idle_w=Figure(0.6 * V5, "W", f"{_PSU}: measured Pi 4B idle 0.6 A (tuning not "
                      "credited: no sourced saving)"),
        idle_untuned_w=Figure(0.6 * V5, "W", f"{_PSU}: measured Pi 4B idle 0.6 A"),
        active_w=Figure(1.2 * V5, "W", f"{_PSU}: measured Pi 4B stress 1.2 A average"),
        boot_w=Figure(0.7 * V5, "W", f"{_PSU}: measured Pi 4B boot average 0.7 A"),
        boot_to_service_s=Figure(5.9, "s", f"{_EST}: {_JUJU} 3.91 s + ~2 s for the Pi 4's "
                                 "EEPROM bootloader", estimate=True),
        app_start_s=Figure(1.5, "s", f"{_EST}: imports and camera open on a Cortex-A72",
                           estimate=True),
        infer_s_per_frame=Figure(0.152, "s", "peers §4: YOLOv8 on camera-trap images ~152 ms "
                                 "on a Pi 4 (journal abstract, mswmanagementj.com 1919)"),
        model_load_s=Figure(0.8, "s", f"{_EST}: detector + classifier", estimate=True),
        shutdown_s=Figure(4.0, "s", f"{_EST}: systemd halt on a tuned image", estimate=True),
    ),
    "pi-5": BoardFigures(
        name="Pi 5",
        idle_w=Figure(3.0, "W", "u-labs.de: Pi 5 idle about 3 W (§5.1)"),
        idle_untuned_w=Figure(3.0, "W", "u-labs.de: Pi 5 idle about 3 W (§5.1)"),
        active_w=Figure(8.0, "W", "tphakala/birdnet-go doc/wiki/hardware.md: Pi 5 8 W "
                        "analysing (§5.1)"),
        boot_w=Figure(5.0, "W", f"{_EST}: between idle and analysing (birdnet-go 5 W idle)",
                      estimate=True),
        boot_to_service_s=Figure(5.0, "s", f"{_EST}: {_JUJU} 3.91 s + the Pi 5's EEPROM "
                                 "bootloader", estimate=True),
        app_start_s=Figure(1.0, "s", f"{_EST}: imports and camera open on a Cortex-A76",
                           estimate=True),
        infer_s_per_frame=Figure(0.06, "s", f"{_EST}: the Pi 4's ~152 ms (peers §4) / 2.5",
                                 estimate=True),
        model_load_s=Figure(0.5, "s", f"{_EST}: detector + classifier", estimate=True),
        shutdown_s=Figure(3.0, "s", f"{_EST}: systemd halt on a tuned image", estimate=True),
    ),
}


@dataclass(frozen=True)
class ModemFigures:
    """One uplink modem. Powers in W at the modem's rail."""

    name: str
    standby_w: Figure  # between transmissions (always-on: the whole day)
    tx_w: Figure
    rx_w: Figure
    attach_s: Figure  # after power-on, before it can send (gated: every wake)
    per_event_tx_s: Figure  # transmitting per trigger
    per_event_rx_s: Figure  # receiving / connected per trigger, including tails
    #: True: on the always-on rail, asleep while the Pi is off (LoRaWAN keeps its session);
    #: False: powered with the Pi (a USB modem), so gated mode attaches at every wake.
    on_standby_rail: bool = True


_RAK = "RAK forum t/7754, RUI3 RAK3172 measured with a 6.5-digit meter"
MODEMS: Mapping[str, ModemFigures] = {
    "none": ModemFigures(
        name="no modem",
        standby_w=Figure(0.0, "W", "no modem fitted"),
        tx_w=Figure(0.0, "W", "no modem fitted"),
        rx_w=Figure(0.0, "W", "no modem fitted"),
        attach_s=Figure(0.0, "s", "no modem fitted"),
        per_event_tx_s=Figure(0.0, "s", "no modem fitted"),
        per_event_rx_s=Figure(0.0, "s", "no modem fitted"),
    ),
    "lorawan": ModemFigures(
        name="LoRaWAN (RAK3172)",
        standby_w=Figure(1.69e-6 * 3.3, "W", "RAK3172 datasheet: sleep 1.69 µA at 3.3 V "
                         "(quoted in RAK forum t/16585); the session survives sleep, no "
                         "join per wake"),
        tx_w=Figure(0.1146 * 3.3, "W", f"{_RAK}: TX at 20 dBm 114.6 mA at 3.3 V"),
        rx_w=Figure(0.0084 * 3.3, "W", f"{_RAK}: RX 8.4 mA at 3.3 V"),
        attach_s=Figure(0.0, "s", "LoRaWAN: the module keeps its session while asleep"),
        per_event_tx_s=Figure(1.4828, "s", "edge_app/trap/uplink/airtime.py (Semtech "
                              "AN1200.13): 11-byte alert, SF12 125 kHz, the far-ridge worst "
                              "case; README 'camtrap bench lorawan'"),
        per_event_rx_s=Figure(2.6, "s", f"{_EST}: confirmed uplink: RX1 at +1 s and RX2 at "
                              "+2 s after TX, ~0.3 s open each, idle between", estimate=True),
    ),
    "cellular": ModemFigures(
        name="LTE (USB modem)",
        standby_w=Figure(0.0933 * V5, "W", "grunenberger.net 2014-02-24, Huawei E3276 LTE "
                         "dongle measured: 93.3 mA idle (registered) at 5 V"),
        tx_w=Figure(0.184 * V5, "W", "grunenberger.net 2014-02-24, Huawei E3276: 184 mA "
                    "connected at 5 V"),
        rx_w=Figure(0.184 * V5, "W", "grunenberger.net 2014-02-24, Huawei E3276: 184 mA "
                    "connected at 5 V (also the inactivity tail)"),
        attach_s=Figure(20.0, "s", f"{_EST}: LTE attach + MQTT/TLS connect after power-on",
                        estimate=True),
        per_event_tx_s=Figure(5.0, "s", f"{_EST}: event + 20 KB thumbnail over MQTT/TLS",
                              estimate=True),
        per_event_rx_s=Figure(12.0, "s", "grunenberger.net 2014-02-24: the operator's 12 s "
                              "inactivity timer keeps the modem connected after the last "
                              "packet"),
        on_standby_rail=False,
    ),
}


@dataclass(frozen=True)
class ChemistryFigures:
    """One battery chemistry."""

    name: str
    usable_dod: Figure  # fraction of the nominal Wh the pack may give
    cold_factor: Figure  # fraction of the capacity left at −30 °C
    self_discharge_per_month: Figure  # fraction of the nominal Wh per month
    charge_efficiency: Figure  # Wh stored per Wh from the panel's controller
    charge_below_0c: bool  # False: charging must stop below 0 °C


_BU = "Battery University"
CHEMISTRIES: Mapping[str, ChemistryFigures] = {
    "lifepo4": ChemistryFigures(
        name="LiFePO4",
        usable_dod=Figure(0.9, "fraction", f"{_EST}: 90 % of nominal, keeping the BMS "
                          "low-voltage cut-off in reserve", estimate=True),
        cold_factor=Figure(0.5, "fraction", f"{_EST}: about half at −30 °C at the trap's "
                           f"low rates; {_BU} BU-502; many packs rate discharge to −20 °C "
                           "only", estimate=True),
        self_discharge_per_month=Figure(0.03, "fraction", f"{_EST}: ~3 %/month cell + BMS "
                                        f"({_BU} BU-802b: Li-ion 2–3 %/month)",
                                        estimate=True),
        charge_efficiency=Figure(0.95, "fraction", f"{_EST}: lithium round trip ~95 %",
                                 estimate=True),
        charge_below_0c=False,
    ),
    "li-ion": ChemistryFigures(
        name="Li-ion",
        usable_dod=Figure(0.9, "fraction", f"{_EST}: 90 % of nominal", estimate=True),
        cold_factor=Figure(0.55, "fraction", f"{_EST}: NMC/NCA cells at −30 °C and low "
                           f"rates; {_BU} BU-502", estimate=True),
        self_discharge_per_month=Figure(0.05, "fraction", f"{_BU} BU-802b: Li-ion ~2 %/month "
                                        "+ ~3 %/month for the protection circuit"),
        charge_efficiency=Figure(0.95, "fraction", f"{_EST}: lithium round trip ~95 %",
                                 estimate=True),
        charge_below_0c=False,
    ),
    "lead-acid": ChemistryFigures(
        name="lead-acid (AGM)",
        usable_dod=Figure(0.5, "fraction", "common practice: no deeper than 50 % (deeper "
                          "discharge shortens life sharply)", estimate=True),
        cold_factor=Figure(0.4, "fraction", f"{_EST}: about half at −18 °C "
                           f"(batteriesglobal.co.uk; {_BU} BU-502), less at −30 °C",
                           estimate=True),
        self_discharge_per_month=Figure(0.05, "fraction", f"{_BU} BU-802b: lead-acid "
                                        "~5 %/month"),
        charge_efficiency=Figure(0.8, "fraction", f"{_EST}: lead-acid ~80 % round trip",
                                 estimate=True),
        charge_below_0c=True,
    ),
}


@dataclass(frozen=True)
class SystemFigures:
    """Everything that is neither the board, the modem nor the battery."""

    regulator_efficiency: Figure
    regulator_quiescent_w: Figure
    camera_w: Figure
    camera_settle_s: Figure
    streamed_frame_s: Figure
    store_s: Figure
    mcu_lightsleep_w: Figure
    mcu_awake_w: Figure
    pir_w: Figure
    rtc_w: Figure
    ir_w: Figure
    ir_settle_s: Figure
    leopard_walk_m_s: Figure
    frame_distance_m: Figure
    camera_hfov_deg: Figure


SYSTEM = SystemFigures(
    regulator_efficiency=Figure(0.85, "fraction", "§5.5 (judgement): ~85 % for the 12 V → 5 V "
                                "regulator"),
    regulator_quiescent_w=Figure(0.0005 * 12.8, "W", f"{_EST}: no-load input current of a "
                                 "small 12 → 5 V buck, 0.5 mA at 12.8 V", estimate=True),
    camera_w=Figure(0.250 * V5, "W", f"{_PSU}: Camera Module 250 mA"),
    camera_settle_s=Figure(0.6, "s", "pageauc/pi-timolo#43, #46: 0.5–0.7 s after camera init "
                           "for settled exposure and white balance (§8.7)"),
    streamed_frame_s=Figure(0.011, "s", "waveform80/picamera#223: ~11 ms per frame while "
                            "streaming vs ~190 ms for a one-shot capture (§8.7)"),
    store_s=Figure(0.5, "s", f"{_EST}: JPEG encode + SQLite commit per event", estimate=True),
    mcu_lightsleep_w=Figure(0.0015 * V5, "W", "micropython/micropython commit 'rp2/modmachine: "
                            "Implement lightsleep()' (D. George, 2022): ~1.5 mA from USB on a "
                            "Pico with lightsleep(5000)"),
    mcu_awake_w=Figure(0.026 * V5, "W", "forums.pimoroni.com t/25317: a bare Pico in "
                       "MicroPython ~26 mA at 5 V; rp-rs/rp-hal#659: ~20 mA in WFE"),
    pir_w=Figure(6e-6 * 3.3, "W", "Panasonic EKMB datasheet: 1/2/6 µA standby (§8.3); the "
                 "6 µA type"),
    rtc_w=Figure(110e-6 * 3.3, "W", "Maxim DS3231 datasheet: standby supply current "
                 "110 µA max at 3.63 V, taken at 3.3 V"),
    ir_w=Figure(6.0, "W", f"{_EST}: two ~3 W 850 nm LED boards, as sold in pairs for the Pi "
                "NoIR camera; §8.9: IR adds 'several watts', the NoIR's low IR sensitivity "
                "needs high-power lamps (questions4steveb)", estimate=True),
    ir_settle_s=Figure(0.6, "s", "pageauc/pi-timolo#43, #46: exposure settles 0.5–0.7 s "
                       "after the light changes; the illuminator must be on for it (§8.7)"),
    leopard_walk_m_s=Figure(1.0, "m/s", f"{_EST}: a large cat at a walk", estimate=True),
    frame_distance_m=Figure(4.0, "m", f"{_EST}: trail camera aimed at a path 3–5 m away",
                            estimate=True),
    camera_hfov_deg=Figure(66.0, "deg", "Raspberry Pi Camera Module 3 product brief: 66° "
                           "horizontal field of view (standard lens)"),
)


# -- solar ------------------------------------------------------------------------------------

_DB = ("Duffie & Beckman, Solar Engineering of Thermal Processes, ch. 1–2 (extraterrestrial "
       "H0; Klein 1977 mean days and tilted R_b; Erbs et al. 1982 diffuse fraction)")

SOLAR_CONSTANT_W_M2 = Figure(1367.0, "W/m²", _DB)

#: Klein's recommended average day of each month (day of the year).
MEAN_DAY = (17, 47, 75, 105, 135, 162, 198, 228, 258, 288, 318, 344)

#: Monthly clearness index K_T = H / H0 (January first) for Primorye: clear, dry monsoon
#: winters and foggy, cloudy summers. Shape from FEGI: winter gets 80–85 % of the possible
#: radiation, summer's cloud and fog cut the direct beam; checked against FEGI's annual total
#: of 110–115 kcal/cm² for Primorye (the model gives ≈ 114 at 43.1° N, tests check the range).
CLEARNESS_BY_MONTH = (0.56, 0.57, 0.55, 0.50, 0.47, 0.42, 0.40, 0.43, 0.50, 0.55, 0.55, 0.55)
CLEARNESS = Figure(round(sum(CLEARNESS_BY_MONTH) / 12, 3), "K_T",
                   "estimate shaped by and checked against fegi.ru 'Climate of Primorye: "
                   "solar radiation' (annual 110–115 kcal/cm²; winter 80–85 % of possible); the "
                   "mean of CLEARNESS_BY_MONTH", estimate=True)
FEGI_ANNUAL_KCAL_CM2 = (110.0, 115.0)

PV_SYSTEM_DERATE = Figure(0.86 * 0.85, "fraction", "NREL PVWatts v5 manual: 14 % default "
                          "system losses; × 0.85 estimate for a small PWM charge controller",
                          estimate=True)
PANEL_TILT_EXTRA_DEG = Figure(15.0, "deg", "rule of thumb: tilt = latitude + 15° favours "
                              "winter", estimate=True)
GROUND_ALBEDO = Figure(0.2, "fraction", f"{_DB}: 0.2 for ground without snow (conservative "
                       "for snowy months)")


# -- defaults of the budget that are not hardware figures -----------------------------------

TARGET_DAYS = 182.0  # six months
COLD_TEST_C = -30.0
DEFAULT_COLD_MONTHS = (12, 1, 2)
COLD_MONTHS_SOURCE = ("estimate: Land of the Leopard's Dec–Feb daily means stay well below "
                      "0 °C (Vladivostok is milder than the inland ridges), so a lithium pack "
                      "without a heater cannot take charge")


def all_figures() -> Iterator[tuple[str, Figure]]:
    """Every figure with a dotted name, for the "Sources" list and the tests."""
    for key, board in BOARDS.items():
        yield from _each(f"board.{key}", board)
    for key, modem in MODEMS.items():
        yield from _each(f"modem.{key}", modem)
    for key, chem in CHEMISTRIES.items():
        yield from _each(f"battery.{key}", chem)
    yield from _each("system", SYSTEM)
    yield "solar.constant", SOLAR_CONSTANT_W_M2
    yield "solar.clearness", CLEARNESS
    yield "solar.pv_derate", PV_SYSTEM_DERATE
    yield "solar.tilt_extra", PANEL_TILT_EXTRA_DEG
    yield "solar.albedo", GROUND_ALBEDO


def _each(prefix: str, obj: object) -> Iterator[tuple[str, Figure]]:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, Figure):
            yield f"{prefix}.{f.name}", value
