"""Figures of locate, ablate, steer and compare results (matplotlib, Agg backend, no display).

Every function takes numbers already read from a run's files and returns a ``Figure``: the
matplotlib figure plus a caption that says what it shows and which file the numbers come from.
Plotting never computes a result of its own, so the page and the CSVs cannot disagree.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


POLE_COLORS = {"openness_to_change": "#1f77b4", "conservation": "#ff7f0e", "self_enhancement": "#d62728",
               "self_transcendence": "#2ca02c"}
_CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
LOCATED = "#c2185b"
CONTROL = "#7f7f7f"
DIRECTION = "#6a3d9a"
DPI = 110


@dataclass
class Figure:
    name: str  # file stem, e.g. "locate-neurons-per-layer"
    title: str
    caption: str
    fig: object  # matplotlib Figure

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=DPI)  # constrained layout keeps labels and legends inside
        plt.close(self.fig)
        self.fig = None
        self._png = buf.getvalue()
        return self._png

    def png_bytes(self) -> bytes:
        return getattr(self, "_png", None) or self.png()


def color(pole: str, n: int = 0) -> str:
    return POLE_COLORS.get(pole, _CYCLE[n % len(_CYCLE)])


def short(pole: str) -> str:
    return pole.replace("_", " ")


def _grid(n: int, width: float = 7.5, height: float = 2.6, cols: int = 2):
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows + 0.4), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# -- locate --------------------------------------------------------------------------------------
def neurons_per_layer(per_layer: dict[str, list[int]], source: str) -> Figure:
    """Located neurons per layer for each pole, with relative depth on the top axis."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
    n_layers = max(len(v) for v in per_layer.values())
    layers = list(range(n_layers))
    for n, (pole, counts) in enumerate(per_layer.items()):
        ax.plot(layers, counts, marker="o", ms=3.5, lw=1.5, color=color(pole, n), label=f"{short(pole)} ({sum(counts)})")
    total = max(sum(c) for c in per_layer.values())
    ax.axhline(total / n_layers, color=CONTROL, ls="--", lw=1, label="uniform over layers (chance)")
    ax.set_xlabel("layer")
    ax.set_ylabel("located neurons (count)")
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(bottom=0)
    top = ax.secondary_xaxis("top", functions=(lambda x: x / max(n_layers - 1, 1), lambda d: d * max(n_layers - 1, 1)))
    top.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    top.set_xlabel("relative depth (layer / last layer)")
    ax.legend(fontsize=7.5, loc="best", frameon=False)
    ax.grid(alpha=0.25)
    caption = (f"Located neurons in each of the {n_layers} layers, per pole (legend: total per pole); the dashed line is "
               f"the count per layer if the selection were spread evenly. Source: {source}.")
    return Figure("locate-neurons-per-layer", "Located neurons per layer", caption, fig)


def readability(probes: dict[str, dict], per_layer: dict[str, list[int]], settings: dict, source: str, neurons_source: str) -> Figure:
    """Per pole, the held-out probes' AUROC per layer (95 % CI bands) beside the located neurons' layer histogram."""
    fig, axes = _grid(len(probes))
    for n, (ax, (pole, entry)) in enumerate(zip(axes, probes.items())):
        counts = per_layer.get(pole)
        if counts:
            bars = ax.twinx()
            bars.bar(range(len(counts)), counts, color=color(pole, n), alpha=0.18, width=0.8)
            bars.set_ylabel("located neurons", fontsize=7.5)
            bars.tick_params(labelsize=7)
            ax.set_zorder(bars.get_zorder() + 1)
            ax.patch.set_visible(False)
        for probe, style, label in (("mean_diff", "-", "mean difference"), ("logistic", "--", "logistic")):
            auc, ci = entry[probe]["auroc"], entry[probe]["ci"]
            layers = list(range(len(auc)))
            ax.fill_between(layers, [c[0] for c in ci], [c[1] for c in ci], color=color(pole, n), alpha=0.15, lw=0)
            ax.plot(layers, auc, ls=style, marker="o", ms=2.5, lw=1.4, color=color(pole, n), label=label)
        ax.axhline(0.5, color=CONTROL, ls=":", lw=1)
        ax.set_ylim(min([0.3] + [c[0] for probe in ("mean_diff", "logistic") for c in entry[probe]["ci"]]), 1.02)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(f"{short(pole)} vs {short(entry['opposite'])}", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("held-out AUROC", fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.legend(fontsize=7, loc="lower right", frameon=False)
    logistic = settings.get("logistic") or {}
    caption = (f"Where each pole is linearly readable: the AUROC of pole vs opposite prompts per layer, each prompt scored by "
               f"probes fitted on the other fold(s) — the projection on the mean difference (solid) and a logistic probe with "
               f"L2 λ = {logistic.get('l2')} on z-scored rows (dashed) — with 95 % bootstrap CIs over held-out prompts (bands; "
               f"dotted: chance). Bars: the located neurons per layer. Sources: {source} (probes), {neurons_source} (neurons).")
    return Figure("locate-readability", "Linear readability per layer beside the located neurons", caption, fig)


def score_distributions(scores: dict[str, Sequence[float]], cuts: dict[str, float], method: str, source: str,
                        note: str = "") -> Figure:
    """Histogram of every neuron's score per pole, with the selection cut marked."""
    fig, axes = _grid(len(scores))
    for n, (ax, (pole, values)) in enumerate(zip(axes, scores.items())):
        import torch

        counts, edges = torch.histogram(torch.tensor(values, dtype=torch.float64), bins=80)
        ax.stairs(counts.clamp_min(0.8).tolist(), edges.tolist(), fill=True, color=color(pole, n), alpha=0.8, baseline=0.8)
        ax.set_yscale("log")
        cut = cuts.get(pole)
        if cut is not None:
            kept = sum(1 for v in values if v >= cut - 1e-6)  # the CSV rounds scores to 6 decimals
            ax.axvline(cut, color="black", ls="--", lw=1.2)
            ax.text(cut, 0.95, f" cut {cut:+.4g}\n {kept} at or above", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=7.5)
        ax.set_title(short(pole), fontsize=9)
        ax.set_xlabel(f"score ({method})", fontsize=8)
        ax.set_ylabel("neurons (log scale)", fontsize=8)
        ax.tick_params(labelsize=7.5)
    caption = (f"Distribution of the {method} score over all neurons, per pole (pole minus opposite, signed by the run's "
               f"direction); the dashed line is the weakest selected score (the selection cut). {note}Scores recomputed "
               f"from {source}.")
    return Figure("locate-score-distribution", "Score distribution and selection cut", caption, fig)


def split_half(halves: dict[str, tuple[Sequence[float], Sequence[float]]], stab: dict[str, dict], method: str,
               source: str) -> Figure:
    """Scores from one half of the scenarios against the other, every neuron a dot."""
    fig, axes = _grid(len(halves), height=3.0)
    for n, (ax, (pole, (a, b))) in enumerate(zip(axes, halves.items())):
        if len(a) > 5000:  # tens of thousands of neurons: density, not dots
            ax.hexbin(a, b, gridsize=70, bins="log", cmap="Greys", mincnt=1, linewidths=0)
        else:
            ax.scatter(a, b, s=max(2.0, min(10.0, 3000 / max(len(a), 1))), alpha=0.45, color=color(pole, n), linewidths=0)
        lo, hi = min(min(a), min(b)), max(max(a), max(b))
        ax.plot([lo, hi], [lo, hi], color=CONTROL, lw=0.8, ls=":")
        s = stab.get(pole) or {}
        if s and 0 < s["k"] <= len(a):  # each half's top-k cut: the upper-right corner holds the overlap
            cut_a, cut_b = sorted(a)[-s["k"]], sorted(b)[-s["k"]]
            ax.axvline(cut_a, color=color(pole, n), lw=1, ls="--")
            ax.axhline(cut_b, color=color(pole, n), lw=1, ls="--")
        if s:
            ax.text(0.03, 0.97, f"r = {s['pearson_r']:.2f}\ntop-{s['k']} overlap {s['overlap']}\n(chance ≈ {s['chance_overlap']:.1f})",
                    transform=ax.transAxes, va="top", fontsize=7.5, bbox=dict(fc="white", ec="none", alpha=0.8))
        ax.set_title(short(pole), fontsize=9)
        ax.set_xlabel(f"{method}, half 1 (fold 0)", fontsize=8)
        ax.set_ylabel(f"{method}, half 2 (fold 1)", fontsize=8)
        ax.tick_params(labelsize=7.5)
    caption = ("Split-half stability: each dot is one neuron, its score from one half of the scenarios against the other "
               "half (dotted: identity; shaded by log count where there are many). Dashed lines: each half's top-k cut, "
               "so the upper-right corner holds the neurons in both top-k. r is the Pearson correlation over all neurons; the overlap "
               "counts neurons in the "
               "top-k of both halves, next to the overlap expected by chance (k²/N). Scores recomputed from "
               f"{source}; r and overlap as recorded in manifest.json (stability).")
    return Figure("locate-split-half", "Split-half stability", caption, fig)


def shuffle_null(null: dict[str, dict], source: str) -> Figure:
    """Neurons passing the real cut with shuffled labels, against the number selected."""
    fig, ax = plt.subplots(figsize=(7.5, 0.7 + 0.55 * len(null)), layout="constrained")
    poles = list(null)
    for y, pole in enumerate(poles):
        d = null[pole]
        xs = d["passing_by_chance"]
        ax.scatter(xs, [y] * len(xs), color=CONTROL, s=18, zorder=3, label="one shuffle" if y == 0 else None)
        ax.scatter([d["selected"]], [y], marker="D", color=LOCATED, s=36, zorder=4, label="selected (real labels)" if y == 0 else None)
        ax.text(max(d["selected"], max(xs)) * 1.02 + 0.5, y, f"{d['mean']:.1f} by chance ({100 * d['false_discovery_estimate']:.0f}%)",
                va="center", fontsize=7.5)
    ax.set_yticks(range(len(poles)), [short(p) for p in poles], fontsize=8)
    ax.set_xlabel("neurons at or above the selection cut (count)")
    ax.set_xlim(left=0, right=max(max(null[p]["selected"], *null[p]["passing_by_chance"]) for p in poles) * 1.45 + 1)
    ax.set_ylim(-0.6, len(poles) - 0.4)
    ax.legend(fontsize=7.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.25)
    caption = ("Label-shuffle null: pole labels flipped at random within scenarios and the corpus re-captured; grey dots "
               "count neurons that pass the real selection cut in each shuffle, the diamond the number selected with the "
               f"real labels. The share is the estimated false-discovery rate. Source: {source} (null).")
    return Figure("locate-shuffle-null", "Label-shuffle null", caption, fig)


# -- ablate --------------------------------------------------------------------------------------

def _pole_rows(ax, results: list[dict], xlabel: str) -> None:
    """One row per pole, top to bottom, with the legend above the plot."""
    ax.set_yticks(range(len(results)), [short(s["dimension"]) for s in results], fontsize=8)
    ax.set_ylim(-0.7, len(results) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.25)


def ablation_before_after(results: list[dict], mode: str, source: str) -> Figure:
    """P(choosing the pole's action) before and after editing, per pole, with the CI of the change."""
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.7 * len(results)), layout="constrained")
    for y, s in enumerate(results):
        before, after = s["baseline"], s["after"]
        lo, hi = (before + s["effect_ci"][0], before + s["effect_ci"][1])
        ax.plot([before, after], [y, y], color=LOCATED, lw=1.2, zorder=2)
        ax.scatter([before], [y], color="black", s=30, zorder=3, label="before" if y == 0 else None)
        ax.errorbar([after], [y], xerr=[[after - lo], [hi - after]], fmt="o", color=LOCATED, ms=6, capsize=3, zorder=4,
                    label="after editing the located set (95% CI)" if y == 0 else None)
        if "control_effect" in s:
            c = before + s["control_effect"]
            sd = s.get("control_sd") or 0.0
            sd = 0.0 if sd != sd else sd
            ax.errorbar([c], [y - 0.22], xerr=[[sd], [sd]], fmt="s", color=CONTROL, ms=4, capsize=2, zorder=3,
                        label="after editing controls (mean ± sd)" if y == 0 else None)
        ax.text(1.0, y, f"  {before:.3f} → {after:.3f}", transform=ax.get_yaxis_transform(), va="center", fontsize=7.5)
    ax.axvline(0.5, color=CONTROL, ls="--", lw=1, label="no preference (0.5)")
    _pole_rows(ax, results, "P(choosing the pole's action), mean over held-out items")
    caption = (f"Forced choice before and after the {mode} edit of each pole's located neurons: black = unedited model, "
               "pink = edited (bar: bootstrap 95% CI of the change over items, placed on the after value), grey = mean ± sd "
               f"over the matched random controls. Source: {source} (results: baseline, after, effect_ci, control_effect, control_sd).")
    return Figure("ablate-before-after", "Ablation: P before → after", caption, fig)


def ablation_vs_controls(results: list[dict], source: str) -> Figure:
    """The located set's effect among the controls' effects: every control a dot."""
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.65 * len(results)), layout="constrained")
    for y, s in enumerate(results):
        effects = s.get("control_effects") or []
        if effects:
            jitter = [((i * 7919) % 13 - 6) / 40 for i in range(len(effects))]
            ax.scatter(effects, [y + j for j in jitter], color=CONTROL, s=14, alpha=0.8, zorder=2,
                       label="matched random control" if y == 0 else None)
        ax.scatter([s["effect"]], [y], marker="D", color=LOCATED, s=48, zorder=3, label="located set" if y == 0 else None)
        note = f"rank {s['rank']}/{s['controls'] + 1}, p = {s.get('p_sequential', s.get('p_lower')):.2f}" if "rank" in s else "no controls"
        ax.text(1.0, y, "  " + note, transform=ax.get_yaxis_transform(), va="center", fontsize=7.5)
    ax.axvline(0, color="black", lw=0.8)
    _pole_rows(ax, results, "effect on P(pole's action): after − before")
    caption = ("Effect of editing the located set (diamond) against the same edit on each matched random control (dots: "
               "same number of neurons in every layer). Rank 1 = lower than every control; p = share of controls (plus the "
               f"located set) at or below the located effect. Source: {source} (results: effect, control_effects, rank, "
               "p_sequential — Besag–Clifford, or p_lower for runs before sequential controls) "
               "and controls.csv.")
    return Figure("ablate-vs-controls", "Located effect vs controls", caption, fig)


def per_item_effects(items: dict[str, list[tuple[float, float | None]]], source: str) -> Figure:
    """Per held-out item: change after editing the located set, and after the controls (mean)."""
    fig, axes = _grid(len(items), height=2.4)
    for n, (ax, (pole, rows)) in enumerate(zip(axes, items.items())):
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        xs = list(range(len(rows)))
        ax.bar(xs, [rows[i][0] for i in order], color=color(pole, n), alpha=0.85, label="located set")
        ctrl = [rows[i][1] for i in order]
        if all(c is not None for c in ctrl):
            ax.scatter(xs, ctrl, color="black", s=8, zorder=3, label="controls (mean)")
        ax.axhline(0, color="black", lw=0.7)
        ax.set_title(short(pole), fontsize=9)
        ax.set_xlabel("held-out item (sorted by effect)", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("after − before (P)", fontsize=8)
        ax.tick_params(labelsize=7)
        if n == 0:
            ax.legend(fontsize=7, frameon=False)
    caption = ("Change in P(choosing the pole's action) per held-out item after editing the located set (bars), and the "
               f"mean change over the controls for the same item (dots). Source: {source} (after − baseline, controls_mean − baseline).")
    return Figure("ablate-per-item", "Per-item effects", caption, fig)


def pvq_circle(pvq: dict[str, dict], source: str) -> Figure:
    """Centred PVQ value scores before/after, in Schwartz's circular order, one panel per edited pole."""
    fig, axes = _grid(len(pvq), width=7.5, height=2.9)
    for n, (ax, (pole, d)) in enumerate(zip(axes, pvq.items())):
        values = d["order"]
        xs = range(len(values))
        ax.plot(xs, [d["before"][v] for v in values], marker="o", ms=3.5, color="black", label="before")
        ax.plot(xs, [d["after"][v] for v in values], marker="o", ms=3.5, color=LOCATED, label="after")
        ax.axhline(0, color=CONTROL, lw=0.8, ls="--")
        ax.set_xticks(list(xs), values, rotation=55, ha="right", fontsize=7)
        ax.set_ylabel("centred score (rating − mean)", fontsize=8)
        ax.set_title(f"edit of {short(pole)} neurons", fontsize=9)
        ax.tick_params(axis="y", labelsize=7.5)
        if n == 0:
            ax.legend(fontsize=7, frameon=False)
    caption = ("PVQ portrait ratings per basic value, centred on the mean rating (Schwartz), before and after editing each "
               "pole's located neurons; values in Schwartz's circular order (self-direction → universalism), so adjacent "
               f"values are motivationally compatible. Source: {source} (results: pvq.values_before, pvq.values_after).")
    return Figure("ablate-pvq", "PVQ before/after", caption, fig)


# -- steer ---------------------------------------------------------------------------------------
def dose_response(curves: dict[str, list[dict]], mode: str, source: str) -> Figure:
    """P after steering at every γ, with the located curve's 95% CI (where the points carry ``effect_ci``), the
    controls' range and mean at the same γ, the unedited γ (1 in scale mode, 0 in add mode) and P = 0.5 marked."""
    fig, axes = _grid(len(curves), height=2.9)
    unedited = 1.0 if mode == "scale" else 0.0
    for n, (ax, (pole, points)) in enumerate(zip(axes, curves.items())):
        gs = [p["gamma"] for p in points]
        after = [p["after"] for p in points]
        base = points[0]["baseline"]
        if all(p.get("effect_ci") for p in points):
            ax.fill_between(gs, [base + p["effect_ci"][0] for p in points], [base + p["effect_ci"][1] for p in points],
                            color=color(pole, n), alpha=0.18, lw=0, label="located set (95% CI)")
        ax.axhline(0.5, color="#999999", lw=0.8, ls="-.", label="P = 0.5 (no preference)")
        if min(gs) <= unedited <= max(gs):
            ax.axvline(unedited, color="black", lw=0.8, ls=(0, (1, 2)), label=f"γ = {unedited:g}: the unedited model")
        ctrl = [p.get("control_effects") or [] for p in points]
        if all(ctrl):
            lo = [base + min(c) for c in ctrl]
            hi = [base + max(c) for c in ctrl]
            mean = [base + p["control_effect"] for p in points]
            ax.fill_between(gs, lo, hi, color=CONTROL, alpha=0.25, label=f"controls (min–max of {len(ctrl[0])})")
            ax.plot(gs, mean, color=CONTROL, ls="--", lw=1, label="controls (mean)")
        ax.plot(gs, after, marker="o", color=color(pole, n), lw=1.8, label="located set")
        direction = direction_curve(points)
        if direction:
            ax.plot(*zip(*direction), marker="s", color=DIRECTION, lw=1.4, label="mean-difference direction (same size)")
        ax.axhline(base, color="black", lw=0.8, ls=":", label=f"unedited ({base:.3f})")
        ax.set_title(short(pole), fontsize=9)
        ax.set_xlabel(f"γ ({mode})", fontsize=8)
        ax.set_ylabel("P(pole's action)", fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.legend(fontsize=6.5, frameon=False)
        ax.grid(alpha=0.25)
    caption = (f"Dose–response: mean P(choosing the pole's action) on held-out items as the located neurons are edited "
               f"({mode}) with factor γ, with the bootstrap 95% CI of the located set's effect (coloured band), beside the same "
               f"edit of matched random controls at every γ (grey band: min–max, dashed: mean); the dotted vertical line is "
               f"the unedited model (γ = {unedited:g}), the dash-dotted one P = 0.5. Where the sweep ran the direction baseline, "
               f"squares: the same-size edit along the pole's mean-difference direction (its α matched at every γ to the change "
               f"the neurons make to that layer's residual stream). Source: {source} (after, control_effect) and "
               f"manifest.json (effect_ci, control_effects, directions).")
    return Figure("steer-dose-response", "Steering dose–response", caption, fig)


def direction_curve(points: list[dict]) -> list[tuple[float, float]]:
    """(γ, P) of the mean-difference direction at each point of a sweep that ran it (P = unedited where its α is 0)."""
    out = []
    for p in points:
        arm = ((p.get("directions") or {}).get("arms") or {}).get("mean_difference")
        if arm is not None and ("effect" in arm or arm.get("alpha") == 0):
            out.append((p["gamma"], p["baseline"] + arm.get("effect", 0.0)))
    return out


# -- compare -------------------------------------------------------------------------------------
def overlap_heatmaps(matrices: dict[str, dict], names: list[str], source: str) -> Figure:
    """Per pole, a runs × runs matrix of Jaccard (same neurons) or depth-profile similarity.

    The colour scale spans the off-diagonal values (the diagonal, a run with itself, is 1 by definition and is
    left grey), the runs are named on the axes, and where ``chance`` is given (the Jaccard two random sets of
    those sizes would have) it is written in each cell and drawn on the colour bar.
    """
    fig, axes = _grid(len(matrices), width=7.5, height=3.4)
    labels = [name if len(name) <= 14 else name[:6] + "…" + name[-7:] for name in names]
    for ax, (pole, m) in zip(axes, matrices.items()):
        values, chance = m["values"], m.get("chance")
        off = [v for i, row in enumerate(values) for j, v in enumerate(row) if i != j and v is not None]
        chances = [c for i, row in enumerate(chance or []) for j, c in enumerate(row) if i != j and c is not None]
        low, high = min(off + chances, default=0.0), max(off, default=1.0)
        if high <= low:
            low, high = low - 0.05, high + 0.05
        grid = [[float("nan") if i == j or v is None else v for j, v in enumerate(row)] for i, row in enumerate(values)]
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#dddddd")
        image = ax.imshow(grid, vmin=low, vmax=high, cmap=cmap)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                text = "—" if v is None else f"{v:.2f}" if i != j else "1 (self)"
                if i != j and chance and chance[i][j] is not None:
                    text += f"\nchance {chance[i][j]:.2g}"
                bright = v is not None and i != j and (v - low) / (high - low) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color="black" if bright or i == j else "white")
        ax.set_xticks(range(len(names)), labels, fontsize=6.5, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), labels, fontsize=6.5)
        ax.set_title(f"{short(pole)}: {m['measure']}", fontsize=8.5)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=7)
        for c in sorted(set(round(c, 6) for c in chances)):
            bar.ax.axhline(c, color="red", lw=1.2)
        if chances:
            bar.ax.set_ylabel("red: chance", fontsize=6.5)
    legend = "; ".join(f"{name}" for name in names)
    caption = ("Agreement of the located sets between runs, per pole: Jaccard of the neuron sets where the runs share a "
               "neuron space (same model), else 1 − total variation distance of the sets' distributions over relative "
               "depth (10 bins). The colour scale spans the off-diagonal cells (the diagonal, a run against itself, is 1); "
               "'chance' is the Jaccard two random sets of the same sizes would have (|A|·|B|/N neurons in common), marked in "
               f"red on the colour bar. Runs: {legend}. Source: {source}.")
    return Figure("compare-heatmap", "Agreement between runs", caption, fig)


def depth_profiles(profiles: dict[str, dict[str, list[float]]], bins: int, source: str) -> Figure:
    """Share of each run's located set per relative-depth bin, per pole."""
    fig, axes = _grid(len(profiles), height=2.6)
    centres = [(i + 0.5) / bins for i in range(bins)]
    for ax, (pole, per_run) in zip(axes, profiles.items()):
        for n, (name, shares) in enumerate(per_run.items()):
            ax.plot(centres, shares, marker="o", ms=3, color=_CYCLE[n % len(_CYCLE)], label=name)
        ax.axhline(1 / bins, color=CONTROL, ls="--", lw=1, label=f"even spread (1/{bins})")
        ax.set_title(short(pole), fontsize=9)
        ax.set_xlabel("relative depth (layer / last layer)", fontsize=8)
        ax.set_ylabel("share of located set", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7.5)
        ax.legend(fontsize=6, frameon=False)
    caption = (f"Where each run's located neurons sit: share of the set in each of {bins} relative-depth bins "
               f"(0 = first layer, 1 = last); the dashed line is an even spread. Source: {source}.")
    return Figure("compare-depth", "Located neurons by relative depth", caption, fig)


def label_summary(labels: dict[str, dict], examples: dict[str, dict], title: str, source: str) -> Figure:
    """One neuron per label: mean ± sd over counted tokens (the run's statistics), P(a>0), and the mean
    activation of the label's most and least activating texts (the run's top examples), for neuron cards."""
    fig, ax = plt.subplots(figsize=(5.2, 0.5 + 0.42 * len(labels)), layout="constrained")
    for y, (label, d) in enumerate(labels.items()):
        c = color(label, y)
        ax.errorbar([d["mean"]], [y], xerr=[[d["sd"]], [d["sd"]]], fmt="o", color=c, ms=4, capsize=3, lw=1.2)
        sides = examples.get(label, {})
        ax.scatter([v for _, v in sides.get("most", [])], [y + 0.18] * len(sides.get("most", [])), marker="^", s=14, color=c)
        ax.scatter([v for _, v in sides.get("least", [])], [y - 0.18] * len(sides.get("least", [])), marker="v", s=14, color=c)
    ax.set_yticks(range(len(labels)), [f"{short(l)} (P(a>0) {d['p_active']:.2f})" for l, d in labels.items()], fontsize=7)
    ax.axvline(0, color="black", lw=0.7)
    ax.set_xlabel("activation on counted tokens: mean ± sd (●), texts' means, most (▲) and least (▼) activating", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    caption = ("Per label, this neuron's mean activation ± sd over counted tokens and its P(a>0) (the run's statistics), and the "
               f"mean activation of each label's most and least activating texts. Source: {source}.")
    return Figure("card", title, caption, fig)


def activation_histogram(per_label: dict[str, Sequence[float]], title: str, source: str) -> Figure:
    """One neuron's activations on counted tokens, per label (for neuron cards)."""
    fig, ax = plt.subplots(figsize=(5.2, 2.4), layout="constrained")
    everything = [v for vs in per_label.values() for v in vs]
    lo, hi = (min(everything), max(everything)) if everything else (0, 1)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    for n, (label, values) in enumerate(per_label.items()):
        if values:
            ax.hist(values, bins=bins, histtype="step", lw=1.4, color=color(label, n), density=True,
                    label=f"{short(label)} (n={len(values)}, P(a>0)={sum(v > 0 for v in values) / len(values):.2f})")
    ax.axvline(0, color="black", lw=0.7)
    ax.set_xlabel("activation on counted tokens", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, frameon=False)
    caption = f"Distribution of this neuron's activation over counted tokens, per label. Source: {source}."
    return Figure("card", title, caption, fig)
