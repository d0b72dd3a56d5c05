"""``to_pandas()``: results as DataFrames for notebooks (pandas is the optional extra ``vneuron[pandas]``).

Every frame holds the numbers the run's files hold, one row per neuron (locate results, neuron
sets), per pole (ablate) or per pole and γ (steer); confidence intervals become ``…_lo`` /
``…_hi`` columns. pandas is imported only when a frame is asked for.
"""

from __future__ import annotations

from typing import Any

from .errors import VneuronError


def pandas():
    """The pandas module, or a one-line error naming the extra that installs it."""
    try:
        import pandas as pd
    except ImportError:
        raise VneuronError("to_pandas() needs pandas, which is not installed",
                           'install the extra: pip install "vneuron[pandas]"') from None
    return pd


def locate_frame(result) -> Any:
    """Every selected neuron of every pole of a locate result: the rows of its neurons.csv."""
    return pandas().DataFrame(result.rows)


def neuron_set_frame(neuron_set) -> Any:
    """One row per neuron of a set, in rank order: rank, layer, unit, score (and the set's label and site)."""
    pd = pandas()
    layers, units, scores = neuron_set.layers.tolist(), neuron_set.units.tolist(), neuron_set.scores.tolist()
    return pd.DataFrame({"label": neuron_set.meta.get("label"), "site": neuron_set.site, "rank": range(1, len(layers) + 1),
                         "layer": layers, "unit": units, "score": scores})


def validation_frame(result) -> Any:
    """An ablation: one row per pole; a steering sweep: one row per pole and γ. Scalars as columns, each CI as
    ``_lo``/``_hi``; per-control lists and nested records (side effects, PVQ) stay in the manifest."""
    rows = []
    for summary in result.summaries:
        if "curve" in summary:
            for point in summary["curve"]:
                rows.append({"neurons": summary.get("neurons"), **_flat(point)})
        else:
            rows.append(_flat(summary))
    return pandas().DataFrame(rows)


def _flat(summary: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"{key[:-3]}_lo"], out[f"{key[:-3]}_hi"] = value
        elif value is None or isinstance(value, (int, float, str, bool)):
            out[key] = value
    return out
