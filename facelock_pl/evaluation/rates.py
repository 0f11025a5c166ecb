"""Match rates as an evaluation reports them: which columns judge a network, and how sure a rate is.

A network scored behind several crop conventions (`NAME`, `NAME@box0`, ...) is judged by its worst
(`NAME@worst`, see `evaluate.worst_over_crops`): a face that any crop still recognises is recognised. A rate over
a few faces is uncertain by more than its digits suggest (16 faces: one face is about 6 points), so it is shown with
its 95% Wilson score interval, which stays inside [0, 1] and is not empty at 0% or 100% as a standard deviation is.
"""

from __future__ import annotations

import math

import pandas as pd

Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson_95(rate: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion `rate` observed over `n` trials (`rate * n` need not be whole)."""
    z2 = Z_95 * Z_95
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 / (1 + z2 / n) * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    # The interval holds the rate; in floats its ends can miss it by an ulp (10 of 10: 1 - 1e-16), which a plot's
    # error bar would read as a negative length.
    return max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half))


def judges(frame: pd.DataFrame) -> list[str]:
    """The recognisers an evaluation's per-image frame scored with a threshold, in column order."""
    return [c.removeprefix("match:") for c in frame.columns if c.startswith("match:")]


def worst_judges(frame: pd.DataFrame) -> list[str]:
    """The judges a verdict shows (`by_worst` of the frame's judges)."""
    return by_worst(judges(frame))


def by_worst(names: list[str]) -> list[str]:
    """A network listed behind several crop conventions once, by its worst (`NAME@worst`), every other name as it is."""
    grouped = {name.split("@")[0] for name in names if name.endswith("@worst")}
    return [name for name in names if name.endswith("@worst") or name.split("@")[0] not in grouped]
