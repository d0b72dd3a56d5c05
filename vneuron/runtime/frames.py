"""``to_pandas()``: results as DataFrames for notebooks (pandas is the optional extra ``vneuron[pandas]``).

Each result type builds its own frame (``LocateResult``, ``NeuronSet``, ``ValidationResult``) from the numbers
its run's files hold; what they share lives here: pandas, imported only when a frame is asked for, and the
flattening of a summary's confidence intervals into ``…_lo`` / ``…_hi`` columns.
"""

from __future__ import annotations

from typing import Any

from vneuron.errors import VneuronError


def pandas():
    """The pandas module, or a one-line error naming the extra that installs it."""
    try:
        import pandas as pd
    except ImportError:
        raise VneuronError("to_pandas() needs pandas, which is not installed",
                           'install the extra: pip install "vneuron[pandas]"') from None
    return pd


def flat(summary: dict) -> dict:
    """The scalars of a summary as columns; each CI as ``_lo``/``_hi``; lists and nested records are left out."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"{key[:-3]}_lo"], out[f"{key[:-3]}_hi"] = value
        elif value is None or isinstance(value, (int, float, str, bool)):
            out[key] = value
    return out
