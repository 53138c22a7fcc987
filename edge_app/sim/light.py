"""How bright a simulated scene is, and what a Pi camera's metadata would say about it.

Replayed photos carry no light reading, so it is estimated from the pixels: an infrared night
frame is grey (a camera trap's IR flash shows no colour), so a frame with almost no colour is
night, its light level set by its brightness in the range of a moonlit forest (0.05–4 lux);
any other frame is daylight, 20–2000 lux by brightness (overcast forest floor to open ground).
The numbers are a model for the simulation, not a calibration: what matters is that night
frames read well below the day/night threshold and day frames well above it, and that a darker
day frame reads darker.

From the light level, auto-exposure is modelled the way the Pi's does it: exposure first, up to
the frame duration (33 ms at 30 fps), then analogue gain up to the sensor's maximum (16 on the
IMX708), aiming at exposure × gain = :data:`EXPOSURE_LUX_US` / lux.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

NIGHT_CHROMA = 3.0
"""Mean |R−G|, |B−G| below this (0–255 scale) is a colourless, i.e. infrared, frame."""
EXPOSURE_LUX_US = 1e6
"""exposure (µs) × gain that auto-exposure aims at, times lux: 1 ms at gain 1 at 1000 lux."""
FRAME_DURATION_US = 33333
MAX_GAIN = 16.0
DAY_GAINS = (1.9, 1.6)
"""(red, blue) white-balance gains a Pi camera settles on in daylight (typical IMX708)."""
NIGHT_GAINS = (1.3, 1.3)


@dataclass(frozen=True, slots=True)
class SceneLight:
    """The light of one scene.

    Attributes:
        mean_luma: mean BT.601 luma of the frame, 0–255.
        chroma: mean colour difference, 0–255 (≈0 for an IR frame).
        lux: the modelled illuminance.
        night: True for a colourless (infrared) frame.
    """

    mean_luma: float
    chroma: float
    lux: float
    night: bool


def measure(rgb: NDArray[np.uint8]) -> SceneLight:
    """The light of an RGB frame (any size; a thumbnail is enough)."""
    f = rgb[..., :3].astype(np.float32)
    luma = float((f @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    chroma = float((np.abs(f[..., 0] - f[..., 1]) + np.abs(f[..., 2] - f[..., 1])).mean() / 2)
    return light_of(luma, chroma)


def light_of(mean_luma: float, chroma: float) -> SceneLight:
    """The :class:`SceneLight` of a frame with this mean luma and colourfulness."""
    b = min(max(mean_luma / 255.0, 0.0), 1.0)
    night = chroma < NIGHT_CHROMA
    lux = 0.05 + 4.0 * b if night else 20.0 + 2000.0 * b * b
    return SceneLight(mean_luma, chroma, lux, night)


def auto_exposure(lux: float) -> tuple[int, float]:
    """(exposure µs, analogue gain) a settled auto-exposure would pick at ``lux``."""
    product = EXPOSURE_LUX_US / max(lux, 1e-3)
    exposure = min(product, FRAME_DURATION_US)
    gain = min(max(product / exposure, 1.0), MAX_GAIN)
    return max(int(exposure), 1), round(gain, 3)


def camera_metadata(lit: SceneLight) -> dict[str, float]:
    """The settled metadata a Pi camera would report for a scene of this light (the keys of
    :meth:`edge_app.trap.hardware.camera.Camera.metadata`)."""
    exposure, gain = auto_exposure(lit.lux)
    return {"Lux": round(lit.lux, 3), "ExposureTime": float(exposure), "AnalogueGain": gain,
            "DigitalGain": 1.0, "ColourTemperature": 3000.0 if lit.night else 5200.0,
            "AeLocked": 1.0}
