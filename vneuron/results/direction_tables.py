"""Neurons or a direction? The direction-baseline table of ``ablate`` and ``steer`` (``vneuron.validate.baselines``),
on the terminal and in the report: one row per arm — the located neurons, the mean-difference direction of the same size,
the projected-out direction — with Δ, z and sequential p against each arm's own random controls, and the side effects
of each edit, so that "moves values more per unit of damage" can be read across a row."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from vneuron.data.schema import SHORT
from vneuron.validate.baselines import ARMS, csv_rows

COLUMNS = ["pole", "arm", "layer", "size", "Δ [95% CI]", "z", "p", "drawn", "KL/pos", "ppl ×", "task ΔP", "Δ/KL"]
SHORT_ARMS = {"neurons": "neurons", "mean_difference": "mean diff", "projected_out": "projected"}
NOTE = ("size = mean L2 norm of the change the edit makes to layer L's residual stream on the items' option tokens (the "
        "mean-difference direction's α is matched to the neurons' size); Δ = mean change in P(choosing the pole's action), "
        "95 % bootstrap CI over items; z and p (sequential, Besag–Clifford) against each arm's own random controls: matched "
        "random neurons for the neurons, random unit directions of the same layer, α and mode for a direction; drawn = "
        "controls drawn; KL/pos, ppl ×, task ΔP = the edit's own side effects on neutral prose and factual pairs; Δ/KL = the "
        "value shift per unit of damage (larger in size: more value movement for the same damage)")


def _f(value: Any, fmt: str) -> str:
    if value in (None, ""):
        return "—"
    value = float(value)
    return "—" if value != value else format(value, fmt)


def direction_rows(summaries: list[dict]) -> list[tuple[str, list[str]]]:
    """(γ or "", the row's cells) per arm of every pole (and γ point), from the results' ``directions`` records."""
    out = []
    for s in summaries:
        points = s.get("curve") or [s]
        for point in points:
            gamma = point.get("gamma") if "curve" in s else None
            for row in csv_rows({**point, "dimension": s["dimension"]}, gamma):
                arm = point["directions"]["arms"][row["arm"]]
                ci = "" if row["effect_lo"] == "" else f" [{row['effect_lo']:+.3f},{row['effect_hi']:+.3f}]"
                task = -row["task_drop"] if row["task_drop"] != "" else ""  # shown as the change in P(right)
                cells = [SHORT.get(s["dimension"], s["dimension"][:12]), SHORT_ARMS[row["arm"]], str(row["layer"]), _f(row["size"], ".3g"),
                         (_f(row["effect"], "+.3f") + ci) if "note" not in arm else arm["note"], _f(row["z"], "+.1f"),
                         _f(row["p_sequential"], ".3f"), str(row["controls_drawn"] or "—"), _f(row["kl"], ".4f"),
                         _f(row["ppl_ratio"], ".3f"), _f(task, "+.3f"), _f(row["effect_per_kl"], "+.3g")]
                out.append(("" if gamma is None else f"{gamma:g}", cells))
    return out


def directions_table(result) -> Table | None:
    """The terminal table (None: the study ran no direction baselines)."""
    rows = direction_rows(result.summaries)
    if not rows:
        return None
    steer = any(g for g, _ in rows)
    table = Table(title="Neurons or a direction? The same-size edit along the pole's mean difference", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left", caption=NOTE)
    for column in (["γ"] if steer else []) + COLUMNS:
        table.add_column(column, justify="right")
    last = None
    for gamma, cells in rows:
        key = (cells[0], gamma)
        if last is not None and key != last:
            table.add_section()
        last = key
        table.add_row(*([gamma] if steer else []), *cells)
    return table


def report_table(manifest: dict, source: str) -> tuple[str, list[str], list[list[str]], str] | None:
    """The report's table: (title, columns, rows, note), or None without direction baselines."""
    results = manifest.get("results") or []
    rows = direction_rows(results)
    baselines = manifest.get("directions") or {}
    if not rows:
        if (manifest.get("config") or {}).get("directions") and baselines.get("note"):
            return ("Direction baselines", ["note"], [[baselines["note"]]], "")
        return None
    steer = any(g for g, _ in rows)
    arms = ", ".join(f"{SHORT_ARMS[k]} = {v}" for k, v in ARMS.items())
    return ("Neurons or a direction? (direction baselines)", (["γ"] if steer else []) + COLUMNS,
            [([g] if steer else []) + cells for g, cells in rows], f"{arms}. {NOTE}. From {source} (results[].directions).")


def leakage_text(summaries: list[dict]) -> str:
    """The leakage ratio of each located set (mean |z| off the diagonal / |z| on it), for a caption; "" without any."""
    parts = []
    for s in summaries:
        leak = (s.get("cross_values") or {}).get("leakage")
        if leak:
            parts.append(f"{SHORT.get(s['dimension'], s['dimension'][:12])} {leak['ratio']:.2f}")
    if not parts:
        return ""
    return ("leakage (mean |z| of the other columns / |z| of its own; 0 = only its own value moves, neurons only): "
            + ", ".join(parts))
