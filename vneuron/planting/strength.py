"""Graded plants: the planted write scaled so the preference has a chosen size.

``fit_strength`` scales the planted units' output columns by one factor s (their reads are
unchanged, so the same units fire on the same tokens, and nothing else in the model moves) until
the preference on the VALIDATION scenarios reaches a target (bisection to within half a point;
the test split is never looked at). ``vneuron.planting.rescale`` writes a copy of a planted model
directory at another strength: the power table's effect-size axis, from one training.
"""

from __future__ import annotations

from typing import Sequence

from vneuron.data.schema import Item
from vneuron.models.loading import LoadedModel
from vneuron.planting.surgery import WriteScale
from vneuron.validate.evaluate import forced_choice


def preference(model: LoadedModel, items: Sequence[Item], pole: str, choices: Sequence[str], batch_tokens: int) -> float:
    """Mean P(the pole's action) over the formats."""
    values = [float(forced_choice(model, items, choice=c, batch_tokens=batch_tokens).toward(pole).mean()) for c in choices]
    return sum(values) / len(values)


def fit_strength(model: LoadedModel, scale: WriteScale, val: Sequence[Item], pole: str, choices: Sequence[str], target: float,
                 batch_tokens: int = 4096, steps: int = 8, ceiling: float = 8.0, tolerance: float = 0.005) -> dict:
    """Scale the write until the validation preference is ``target``; the model keeps the scale found.

    The bisection stops once a scale lands within ``tolerance`` of the target: each try is a full
    validation pass (minutes on the default model), and half a point of P is below what the
    validation split itself can tell apart."""
    tried: list[tuple[float, float]] = []

    def at(s: float) -> float:
        scale.set(s)
        p = preference(model, val, pole, choices, batch_tokens)
        tried.append((round(s, 4), round(p, 4)))
        return p

    low, high = 0.0, 1.0
    p_high = at(high)
    while p_high < target and high < ceiling:
        low, high = high, min(2 * high, ceiling)
        p_high = at(high)
    if p_high < target:  # out of reach: keep the strongest scale tried (a larger write can lower the preference again)
        best_s, best_p = max(tried, key=lambda t: t[1])
        scale.set(best_s)
        return {"target": target, "scale": best_s, "validation_preference": best_p, "reached": False, "tried": tried}
    best_s, best_p = high, p_high
    for _ in range(steps):
        if abs(best_p - target) <= tolerance:
            break
        mid = (low + high) / 2
        p = at(mid)
        if abs(p - target) < abs(best_p - target):
            best_s, best_p = mid, p
        if p < target:
            low = mid
        else:
            high = mid
    scale.set(best_s)
    return {"target": target, "scale": best_s, "validation_preference": round(best_p, 4), "reached": True,
            "tolerance": tolerance, "tried": tried}
