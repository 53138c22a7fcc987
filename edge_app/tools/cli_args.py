"""argparse types shared by the laptop tools (``power-budget``, ``data-budget``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def finite(lo: float, hi: float) -> Callable[[str], float]:
    """A float option in ``lo..hi``: NaN, infinities and out-of-range values are refused by
    argparse with the option's name, before any figure is computed from them."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be a finite number in {lo:g}..{hi:g}, "
                                             f"got {text!r}")
        return v
    return parse
