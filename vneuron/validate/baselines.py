"""Neurons or a direction? The direction baselines of ``ablate`` and ``steer`` (DESIGN.md §7, issue 28).

Beside each pole's located neurons a study edits the residual stream along the pole's mean-difference direction d̂_L
(``vneuron.validate.directions``) at one layer L (``direction_layer``; default: where the pole's held-out
mean-difference probe reads it best), on the same items, against the same unedited references, with the same statistics:

* ``mean_difference``: x ← x ∓ α·d̂_L at every position, α = the mean L2 norm of the change the neuron edit makes to
  block L's output on the same tokens (``matched_alpha``), signed as the neuron edit is expected to move the pole
  (away from it when ablating, toward it for a boost);
* ``projected_out`` (ablate with ``projected_out`` only): x ← x − (x·d̂_L)d̂_L, the direction removed; its size is
  measured the same way but set by the residual stream, not the neurons' budget (on Gemma-3-270M ≈ 60× it), so it is
  a damage test rather than a same-budget comparison, and off by default: it would double the baselines' cost;
* each arm against random unit directions of the same layer, α and mode (``random_direction_edit``), drawn one at a
  time with the value shift's Besag–Clifford rule, at most as many as the neurons' value shift drew (at least h, at
  most ``direction_controls_max``; a set ``direction_controls``: a fixed cap), so each arm is judged at the neurons' resolution:
  a null study, whose neurons stop after h controls, does not pay for a finer test of its directions;
* side effects of the arm's edit itself (KL/position, perplexity ×, task ΔP) on the neutral corpus, reusing the study's
  unedited references, so that "moves values more per unit of damage" can be read beside the neurons' row.

The cross-value matrix (and its leakage ratio) is measured for the neurons; ``direction_matrix`` runs each arm on the
matrix's columns too (``Matrix.row``, the arm's drawn random directions as its controls, its own column reused), so the
arm's leakage ratio stands beside the neurons' — at the cost of a matrix per arm, hence off by default.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from vneuron.errors import VneuronError
from vneuron.runtime import budget
from vneuron.locate.runs import LocateRun
from vneuron.validate import side_effects
from vneuron.validate.controls import control_seed, sequential_controls, summarize
from vneuron.validate.directions import Readings, check_layer, direction_edit, direction_layer, edit_sizes, random_direction_edit
from vneuron.validate.evaluate import CPU_BATCH_TOKENS, LowerLayers
from vneuron.validate.items import items_for

ARMS = {"neurons": "neurons", "mean_difference": "mean-difference direction", "projected_out": "projected-out direction"}
KEPT = ("effect", "effect_ci", "after", "controls", "control_effect", "control_sd", "effect_minus_control",
        "effect_minus_control_ci", "z", "z_ci", "rank", "p_sequential", "controls_drawn", "controls_max", "stop_reason", "tail",
        "control_effects")
SIDE = ("kl", "ppl_ratio", "task_drop")


def recorded(run: LocateRun) -> bool:
    """Whether the run recorded residual means (runs located before them did not)."""
    return bool(run.manifest.get("residual"))


def check_directions(run: LocateRun, config) -> dict[str, Any]:
    """Before the model loads: what the study's direction baselines will be. An explicit `direction_layer` must lie in
    the model and needs residual means; without one, a run from before them gets a note and no baselines."""
    if not config.directions:
        return {"on": False, "note": "switched off"}
    if not recorded(run):
        if config.direction_layer is not None:
            try:
                run.residual()
            except VneuronError as e:
                raise VneuronError(f"`direction_layer` {config.direction_layer} edits along the pole's mean difference, "
                                   f"but {e.problem}", e.fix) from None
        return {"on": False, "note": f"no direction baselines: {run.path.name} was located before residual means were recorded "
                                     "(rerun `vneuron locate` with its model and corpus to add them)"}
    run.residual()  # a missing or changed residual file fails here, before the model loads
    if config.direction_layer is not None:
        check_layer(run, config.direction_layer)
    return {"on": True, "layer": config.direction_layer if config.direction_layer is not None else "probe peak",
            "controls_max": (config.direction_controls_max if config.direction_controls is not None else
                             f"as many as the neurons drew (at least {config.stop_after}, at most {config.direction_controls_max})"),
            "matrix": bool(config.direction_matrix),
            "arms": {"mean_difference": "x ← x ∓ α·d̂_L, α matched to the neuron edit",
                     **({"projected_out": "x ← x − (x·d̂_L)·d̂_L (ablate only)"} if config.projected_out else {})}}


class Arms:
    """The direction baselines of one study, set up once (``study``: the study, ``beside``: its Beside, whose unedited
    side-effect references the arms reuse); per pole ``ablate`` and per γ point ``steer``."""

    def __init__(self, study, beside, say: Callable[[str, int, int], None]):
        self.study, self.beside, self.say = study, beside, say
        self.most = study.config.direction_controls_max  # never extended to `max_controls`
        self.config = replace(study.config, controls=self.most, max_controls=self.most)
        self.batch = study.loaded.batch_tokens(study.config.batch_tokens, CPU_BATCH_TOKENS)
        self.reuse: dict[str, LowerLayers] = {}  # per pole: every arm, control and γ edits the same layer
        self.readings: dict[str, Readings] = {}  # per pole: the budget, read by the study's own passes on the way
        if study.loaded.remote is None:
            for pole in study.poles:
                try:
                    layer = self.layer(pole)
                except VneuronError:  # no probe peak: the pole's arms say so when they run
                    continue
                first = beside.unedited.reads.get(self._key(pole))  # its opposite's: the same items
                if first is None:
                    self.readings[pole] = beside.unedited.reads[self._key(pole)] = Readings(layer)
                elif first.layer == layer:
                    self.readings[pole] = Readings(layer, share=first)
                # else: one unedited pass reads one layer; this pole's budget runs its own pair of passes

    def cap(self, summary: dict) -> int:
        """Random directions an arm may draw: a fixed ``direction_controls``, else as many as the neurons drew (the
        value shift's, at this γ) — at least h, so the first round is the rule's — at most ``self.most``."""
        cfg = self.study.config
        if cfg.direction_controls is not None or cfg.stop_after <= 0:
            return self.most
        return min(self.most, max(cfg.stop_after, int(summary.get("controls_drawn") or self.most)))

    def layer(self, pole: str) -> int:
        return direction_layer(self.study.run, pole, self.study.config.direction_layer)

    def sizes(self, pole: str, items, edit, layer: int, projected) -> list[float]:
        """The mean L2 norm of the change ``edit`` makes to block ``layer``'s output on the items' counted tokens, then
        that of projecting out each direction of ``projected`` (``edit_sizes``: read on the way by the pole's unedited
        and located passes where it can, else one pair of passes; either leaves the layer's output for every arm and
        random direction that follows)."""
        cfg = self.config
        stage = f"{pole}: direction baselines, the neuron edit's size at layer {layer} (batches)"
        return edit_sizes(self.study.loaded, items, edit, layer, projected, choice=cfg.choice, template=cfg.template,
                          batch_tokens=self.batch, reuse=self.reuse.setdefault(pole, LowerLayers()),
                          progress=lambda d, t: self.say(stage, d, t), readings=self.readings.get(pole))

    def ablate(self, pole: str, items, base, edit, tail: str, summary: dict) -> dict[str, Any]:
        """Both arms of an ablation, beside the neurons' row (from ``summary``, the value shift and its side effects)."""
        names = ("mean_difference", "projected_out") if self.study.config.projected_out else ("mean_difference",)
        out = self._arms(pole, items, base, edit, tail, summary, names, f"{pole}: direction ")
        spent = self.readings.pop(pole, None)  # one edit a pole: its readings are spent, once no other pole shares them
        if spent is not None and not any(r.plain is spent.plain for r in self.readings.values()):
            self.beside.unedited.reads.pop(self._key(pole), None)
        return out

    def _key(self, pole: str) -> tuple:
        """The pole's item list as ``Unedited`` knows it."""
        return tuple(i.id for i in items_for(self.study.items, pole, self.study.config.limit))

    def steer(self, pole: str, items, base, edit, tail: str, summary: dict, gamma: float) -> dict[str, Any]:
        """The mean-difference arm at one γ of a sweep, its α matched to that γ's neuron edit."""
        return self._arms(pole, items, base, edit, tail, summary, ("mean_difference",), f"{pole}: γ = {gamma:g}, direction ")

    @budget.stage("direction baselines")  # its own stage of the manifest's timings, not the value shift's
    def _arms(self, pole, items, base, edit, tail, summary, names, prefix) -> dict[str, Any]:
        memo = self.study.memo(prefix)
        run = self.study.run
        try:  # no probe peak for this pole (too few prompts in a fold), or no difference at its layer: the others go on
            layer = self.layer(pole)
            removed = direction_edit(run, pole, layer, "project")
        except VneuronError as e:
            return {"note": e.one_line()}
        projected = [removed.direction] if "projected_out" in names else []
        spent, *removed_size = memo("sizes", lambda: self.sizes(pole, items, edit, layer, projected))
        sign = 1.0 if tail == "higher" else -1.0  # as the neuron edit is expected to move the pole
        out: dict[str, Any] = {"layer": layer, "budget": spent, "arms": {"neurons": neuron_arm(summary, spent)}}
        edits = {"mean_difference": direction_edit(run, pole, layer, "add", sign * spent),
                 "projected_out": removed}
        tails = {"mean_difference": tail, "projected_out": "lower"}  # removing the pole's direction lowers it
        measured = {}
        for name in names:
            if name == "mean_difference" and spent == 0:
                out["arms"][name] = {"mode": "add", "alpha": 0.0, "size": 0.0,
                                     "note": f"the neuron edit leaves layer {layer} unchanged: α = 0"}
                continue
            measured[name], own = self._arm(pole, items, base, edits[name], tails[name], f"{prefix}{name} ", self.cap(summary))
            size = abs(edits[name].alpha) if name == "mean_difference" else removed_size[0]
            out["arms"][name] = {"mode": "project" if edits[name].project else "add", "alpha": edits[name].alpha, "size": size,
                                 **measured[name]}
            if self.study.config.direction_matrix and self.beside.cross is not None:
                cross = out["arms"][name]["cross_values"] = self._matrix(pole, edits[name], own, memo, name)
                out["arms"][name]["leakage"] = (cross.get("leakage") or {}).get("ratio")
        if self.study.config.side_effects and measured:
            lang = "zh" if items and items[0].language == "zh" else "en"
            stage = f"{pole}: side effects of the direction baselines"
            part = memo("side effects", lambda: side_effects.measure(
                self.study.loaded, self.beside.neutral_for(lang), [edits[n] for n in measured], batch_tokens=self.config.batch_tokens,
                reference=self.beside.references.setdefault(lang, {}), progress=lambda d, t: self.say(stage, d, t)))
            for name, row in zip(measured, part["sets"]):
                out["arms"][name]["side_effects"] = {k: row[k] for k in SIDE if k in row}
        for arm in out["arms"].values():
            kl = (arm.get("side_effects") or {}).get("kl")
            arm["effect_per_kl"] = arm["effect"] / kl if "effect" in arm and kl else None
        return out

    def _matrix(self, pole: str, edit, own: tuple, memo, name: str) -> dict[str, Any]:
        """The arm on every column of the cross-value matrix, against the random directions its value shift drew (each
        column sequential, as the neurons'), its own column reused: cells, own and the leakage ratio."""
        drawn = len(own[3])
        controls = [random_direction_edit(edit, control_seed(self.config.seed, n)) for n in range(drawn)]
        row = self.beside.cross.row(pole, edit, controls, self.say, own_result=own,
                                    memo=lambda column, f: memo(f"matrix {name} {column}", f))
        return {k: row[k] for k in ("own", "cells", "strongest", "own_moves_most", "leakage")}

    def _arm(self, pole, items, base, edit, tail: str, prefix: str, cap: int) -> tuple[dict[str, Any], tuple]:
        """One arm's value shift against at most ``cap`` random directions (sequential), summarized as the neurons' is;
        and its own column for the matrix (item ids, base, located, controls)."""
        cfg, loaded = replace(self.config, controls=cap, max_controls=cap), self.study.loaded
        stage = f"{prefix.strip()} and random directions (sets; up to {cfg.controls}, sequential)"
        reuse = self.reuse.setdefault(pole, LowerLayers())
        located, controls, rule = sequential_controls(loaded, items, pole, base, edit,
                                                      lambda n: random_direction_edit(edit, control_seed(cfg.seed, n)), tail, cfg,
                                                      reuse, lambda d, t: self.say(stage, d, t), memo=self.study.memo(prefix))
        s = summarize(pole, base, located, controls, items, cfg, tail)
        s.update(rule.report())
        return {k: s[k] for k in KEPT if k in s}, ([i.id for i in items], base, located, controls)


def neuron_arm(summary: dict, size: float) -> dict[str, Any]:
    """The neurons' row of the table: their value shift (already measured) and the located set's side effects."""
    arm = {k: summary[k] for k in KEPT if k in summary and k != "control_effects"}
    arm["size"] = size
    arm["leakage"] = ((summary.get("cross_values") or {}).get("leakage") or {}).get("ratio")
    located = (summary.get("side_effects") or {}).get("located") or {}
    if located:
        arm["side_effects"] = {k: located[k] for k in SIDE if k in located}
    return arm


def csv_rows(summary: dict, gamma: float | None = None) -> list[dict[str, Any]]:
    """directions.csv: one row per arm of a pole (and γ), the table's numbers."""
    record = summary.get("directions")
    if not record or "arms" not in record:
        return []
    rows = []
    for name, arm in record["arms"].items():
        ci = arm.get("effect_ci") or ("", "")
        side = arm.get("side_effects") or {}
        row = {"dimension": summary["dimension"], **({"gamma": gamma} if gamma is not None else {}), "arm": name,
               "layer": record["layer"], "alpha": _round(arm.get("alpha")), "size": _round(arm.get("size")),
               "effect": _round(arm.get("effect")), "effect_lo": _round(ci[0]), "effect_hi": _round(ci[1]),
               "control_effect": _round(arm.get("control_effect")), "control_sd": _round(arm.get("control_sd")),
               "z": _round(arm.get("z")), "p_sequential": _round(arm.get("p_sequential")), "controls_drawn": arm.get("controls_drawn", ""),
               **{k: _round(side.get(k)) for k in SIDE}, "effect_per_kl": _round(arm.get("effect_per_kl")),
               "leakage": _round(arm.get("leakage"))}
        rows.append(row)
    return rows


def _round(value) -> Any:
    return "" if value is None or value == "" else round(float(value), 6)
