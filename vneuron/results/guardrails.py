"""Guard-rails on weak statistics: what a result can and cannot say, beside the result itself.

Every reader of results (the terminal tables, ``--json``, the report) shows these, computed from
the numbers a run wrote, so old runs get them too:

- **controls**: with at most N matched random controls the permutation p can never go below
  1/(N+1) (5 controls: 1/6 ≈ 0.17). When that floor is above 0.05, no outcome of the test could
  be significant, and the result says so.
- **items**: the bootstrap CI of Δ − control comes from the items. When its half-width is larger
  than the spread of the controls' own effects (2 sd), the item count is too small for the CI to
  exclude an effect of the size random sets produce.
- **stability**: split-half r below 0.2, or a top-k overlap of the two halves within 3 times what
  two random lists would share, means the ranking is mostly the items, not the model.
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05
WEAK_R = 0.2
CHANCE_TIMES = 3.0
GUARD_MARK = "!"  # beside a number a guard-rail warning is about


def smallest_p(controls: int) -> float:
    """The smallest permutation p that ``controls`` matched controls can give (the located set beyond all of them)."""
    return 1.0 / (1 + max(controls, 0))


def reachable_controls(config: dict | None, drawn: int | None = None) -> int:
    """How many controls the test could draw: `controls`, or up to `max_controls` when the located set stays ahead."""
    config = config or {}
    most = max(int(config.get("controls") or 0), int(config.get("max_controls") or 0))
    return max(most, int(drawn or 0))


def controls_guard(summary: dict[str, Any], config: dict | None = None) -> dict[str, Any]:
    """The guard-rails of one ablation (or one γ of a sweep): the p floor and the item count against the controls' spread."""
    drawn = int(summary.get("controls") or summary.get("controls_drawn") or 0)
    most = reachable_controls(config, drawn) if config else drawn
    floor = smallest_p(most)
    out: dict[str, Any] = {"controls_drawn": drawn, "controls_possible": most, "smallest_p": floor, "warnings": []}
    if floor > ALPHA:
        out["warnings"].append(f"with at most {most} controls the smallest p this test can give is 1/{most + 1} = {floor:.2g} "
                               f"(> {ALPHA:g}): no result can be significant; draw at least {math.ceil(1 / ALPHA) - 1} controls")
    ci, sd = summary.get("effect_minus_control_ci"), summary.get("control_sd")
    if ci and sd is not None and isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0 and None not in ci:
        half = (ci[1] - ci[0]) / 2
        out["ci_half_width"], out["control_spread"] = half, 2 * sd
        if half > 2 * sd:
            out["warnings"].append(f"{summary.get('items', '?')} items are too few: the CI of Δ − control (±{half:.3g}) is wider "
                                   f"than the controls' own spread (2 sd = {2 * sd:.3g}), so it cannot exclude an effect the size "
                                   "random sets produce; evaluate on more items")
    return out


def stability_guard(stability: dict[str, Any] | None) -> dict[str, Any] | None:
    """A flag on a split-half estimate too weak to trust the ranking (None when there is no estimate)."""
    if not stability or stability.get("pearson_r") is None:
        return None
    r, overlap, chance = stability["pearson_r"], stability.get("overlap", 0), stability.get("chance_overlap", 0.0)
    reasons = []
    if isinstance(r, float) and math.isfinite(r) and r < WEAK_R:
        reasons.append(f"split-half r = {r:.2f} < {WEAK_R:g}")
    if overlap <= CHANCE_TIMES * max(chance, 1.0):
        reasons.append(f"top-{stability.get('k')} overlap {overlap} is within {CHANCE_TIMES:g}× chance (≈ {chance:.1f})")
    return {"weak": bool(reasons), "reasons": reasons,
            "warning": ("unstable ranking: " + "; ".join(reasons) + " — the selection depends on which items were used, "
                        "not only on the model") if reasons else None}


def validation_guards(manifest: dict[str, Any], summaries: list[dict]) -> dict[str, Any]:
    """Per pole (and per γ of a sweep): the guard-rails of an ablate or steer run."""
    config = manifest.get("config") or {}
    out: dict[str, Any] = {}
    for s in summaries:
        if "curve" in s:
            out[s["dimension"]] = {str(point["gamma"]): controls_guard(point, config) for point in s["curve"]}
        elif "controls" in s:
            out[s["dimension"]] = controls_guard(s, config)
    return out


def warnings_of(guards: dict[str, Any]) -> list[str]:
    """Every warning of ``validation_guards``, each once, prefixed by its pole (and γ where they differ)."""
    lines: list[str] = []
    for pole, guard in guards.items():
        per_point = guard if "warnings" not in guard else {None: guard}
        seen: list[str] = []
        for gamma, g in per_point.items():
            for w in g["warnings"]:
                if w not in seen:
                    seen.append(w)
                    where = pole if gamma is None or len(per_point) == 1 or all(w in p["warnings"] for p in per_point.values()) \
                        else f"{pole} at γ = {gamma}"
                    lines.append(f"{where}: {w}")
    return lines
