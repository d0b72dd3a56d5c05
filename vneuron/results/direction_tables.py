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
TERMINAL = ["arm", "size", "Δ [CI]", "z", "p/drawn", "KL/pos", "ppl ×", "task ΔP", "Δ/KL"]  # fits 80 columns
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


def direction_rows(summaries: list[dict]) -> list[tuple[str, dict, dict]]:
    """(γ or "", the directions.csv row, the arm's record) per arm of every pole (and γ point) that ran the baselines."""
    out = []
    for s in summaries:
        for point in s.get("curve") or [s]:
            gamma = point.get("gamma") if "curve" in s else None
            for row in csv_rows({**point, "dimension": s["dimension"]}, gamma):
                out.append(("" if gamma is None else f"{gamma:g}", row, point["directions"]["arms"][row["arm"]]))
    return out


def _cells(row: dict, arm: dict, digits: int = 3) -> list[str]:
    """size, Δ, its CI, z, p, drawn, KL/pos, ppl ×, task ΔP, Δ/KL of one arm (a note in place of Δ when it did not run)."""
    ci = "" if row["effect_lo"] == "" else f"[{row['effect_lo']:+.{digits}f},{row['effect_hi']:+.{digits}f}]"
    task = -row["task_drop"] if row["task_drop"] != "" else ""  # shown as the change in P(right)
    return [_f(row["size"], ".3g"), arm["note"] if "note" in arm else _f(row["effect"], "+.3f"), ci, _f(row["z"], "+.1f"),
            _f(row["p_sequential"], f".{digits}f"), str(row["controls_drawn"] or "—"), _f(row["kl"], ".3f"),
            _f(row["ppl_ratio"], f".{digits}f"), _f(task, "+.3f"), _f(row["effect_per_kl"], "+.2g")]


def directions_table(result) -> Table | None:
    """The terminal table (None: the study ran no direction baselines): a heading row per pole (and γ) with its layer,
    then a row per arm, the CI under Δ, so that it fits 80 columns."""
    rows = direction_rows(result.summaries)
    if not rows:
        return None
    leaks = arm_leakage(rows)
    table = Table(title="Neurons or a direction? The same-size edit along the pole's mean difference", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption=NOTE + (f"\nleakage (mean |z| of the other values' items / |z| of its own): {leaks}" if leaks else ""))
    for column in TERMINAL:
        table.add_column(column, justify="right", no_wrap=True)
    last = None
    for gamma, row, arm in rows:
        key = (row["dimension"], gamma)
        if key != last:
            if last is not None:
                table.add_section()
            table.add_row(f"[bold]{SHORT.get(row['dimension'], row['dimension'][:12])}[/]" + (f" γ={gamma}" if gamma else "")
                          + f" L{row['layer']}", *[""] * (len(TERMINAL) - 1))
            last = key
        size, effect, ci, z, p, drawn, *side = _cells(row, arm, digits=2)
        if "note" in arm:
            effect = "—"
        table.add_row(SHORT_ARMS[row["arm"]], size, effect, z, p if p == "—" else f"{p}/{drawn}", *side)
        if ci:
            table.add_row("", "", f"[dim]{ci}[/]", *[""] * (len(TERMINAL) - 3))
    return table


def report_table(manifest: dict, source: str) -> tuple[str, list[str], list[list[str]], str] | None:
    """The report's table: (title, columns, rows, note), or None without direction baselines."""
    rows = direction_rows(manifest.get("results") or [])
    baselines = manifest.get("directions") or {}
    if not rows:
        if (manifest.get("config") or {}).get("directions") and baselines.get("note"):
            return ("Direction baselines", ["note"], [[baselines["note"]]], "")
        return None
    steer = any(g for g, _, _ in rows)
    cells = []
    for gamma, row, arm in rows:
        size, effect, ci, *rest = _cells(row, arm)
        cells.append(([gamma] if steer else []) + [row["dimension"], SHORT_ARMS[row["arm"]], str(row["layer"]), size,
                                                   f"{effect} {ci}".strip(), *rest])
    arms = ", ".join(f"{SHORT_ARMS[k]} = {v}" for k, v in ARMS.items())
    skipped = "".join(f" {r['dimension']}: no direction baselines: {r['directions']['note']}"
                      for r in manifest.get("results") or [] if (r.get("directions") or {}).get("note"))
    leaks = arm_leakage(rows)
    leaks = f" Leakage (mean |z| of the other values' items / |z| of its own): {leaks}." if leaks else ""
    return ("Neurons or a direction? (direction baselines)", (["γ"] if steer else []) + COLUMNS, cells,
            f"{arms}. {NOTE}.{leaks} From {source} (results[].directions).{skipped}")


def arm_leakage(rows: list[tuple[str, dict, dict]]) -> str:
    """Each arm's leakage ratio per pole where one has it (the neurons' from the matrix; a direction arm's with
    ``direction_matrix``, else a dash and how to get it): "" without any."""
    if not any(row["leakage"] != "" for _, row, _ in rows):
        return ""
    hint = "" if any(row["leakage"] != "" and row["arm"] != "neurons" for _, row, _ in rows) else \
        " (a direction's: --direction-matrix)"
    return "; ".join(f"{SHORT.get(row['dimension'], row['dimension'][:12])} {SHORT_ARMS[row['arm']]} {_f(row['leakage'], '.2f')}"
                     for _, row, _ in rows) + hint


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
