"""Is an edit's effect about values? What ``ablate`` and ``steer`` measure beside the value shift.

For a located set and the SAME matched random controls its value shift is ranked against:

- ``side_effects`` — KL and perplexity on neutral prose, a non-value forced choice
  (``vneuron.validate.side_effects``), each ranked among the controls;
- ``cross_values`` — the shift on the items of every other value or axis of the evaluation set
  (a row of the located set × evaluated value matrix), each cell against the controls, so
  "value-specific" can mean that its own value moves most;
- ``judged`` — generations before and after the edit (and under a few controls), scored by a judge
  (``vneuron.validate.judges``) for their orientation on the axis, with bootstrap CIs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vneuron.data.schema import OPPOSITE, Item, aggregate_label, expresses, pair_label
from vneuron.runtime import budget
from vneuron.validate import side_effects
from vneuron.validate.controls import computed, control_seed
from vneuron.validate.evaluate import ChoiceResult, LowerLayers, bootstrap_ci, forced_choice, forced_choice_sets, generate


def beside_count(drawn: int, config) -> int:
    """Controls measured beside the value shift: every one drawn, and at least ``side_controls``."""
    return max(drawn, config.side_controls)


class Unedited:
    """The unedited forced choice of every item list a study reads (a pole's items, a matrix column, often the same
    items): each computed once, and kept by ``memo`` so an interrupted study does not compute it again."""

    def __init__(self, loaded, config, memo=computed):
        self.loaded, self.config, self.memo = loaded, config, memo
        self.results: dict[tuple, ChoiceResult] = {}
        self.reads: dict[tuple, object] = {}  # per item list (its ids): what reads its pass on the way (``directions.Readings``)

    @budget.stage("value shift")  # inside the matrix's stage, the matrix's
    def __call__(self, items: Sequence[Item], progress=None) -> ChoiceResult:
        import hashlib

        key = tuple(i.id for i in items)
        if key not in self.results:
            cfg = self.config
            name = "unedited " + hashlib.sha256("\n".join(map(str, key)).encode()).hexdigest()[:16]
            p_order, logprob = self.memo(name, lambda: _tensors(forced_choice(self.loaded, list(items), batch_tokens=cfg.batch_tokens,
                                                                               choice=cfg.choice, template=cfg.template,
                                                                               progress=progress, reads=self.reads.get(key))))
            self.results[key] = ChoiceResult(list(items), p_order, logprob)
        return self.results[key]


def _tensors(result: ChoiceResult) -> tuple:
    return result.p_order, result.logprob


def side_study(loaded, neutral, edit, control_edits: Sequence, config, progress=None, first: int = 0,
               reference: dict | None = None, memo=computed) -> dict[str, Any]:
    """Side effects of the located edit and of its controls, ranked.

    With ``stop_after`` h > 0 the controls go in rounds — the located set with the ``first`` ones
    (those its value shift was ranked against), then h at a time — until every damage measure has
    h controls at least as damaging (the sequential rule of the value shift, per measure), or all
    ``control_edits`` are in. A located set that damages no more than chance so costs a few sets;
    one beyond the controls costs all of them, as it would with a fixed number. ``memo`` keeps each round.
    """
    h, total = config.stop_after, len(control_edits)
    say = progress or (lambda done, all_: None)
    measured: dict[str, Any] = {"before": {}, "sets": []}
    done = 0
    while True:
        take = total if h <= 0 else (min(total, max(first, h)) if not measured["sets"] else min(total - done, h))
        chunk = ([edit] if not measured["sets"] else []) + list(control_edits[done: done + take])
        offset = len(measured["sets"])
        part = memo(f"sets {offset}-{offset + len(chunk) - 1}", lambda: side_effects.measure(
            loaded, neutral, chunk, batch_tokens=config.batch_tokens, reference=reference,
            progress=lambda d, t: say(offset + round(len(chunk) * d / max(t, 1)), 1 + total)))
        measured["before"], measured["sets"] = part["before"], measured["sets"] + part["sets"]
        done += take
        if done >= total or side_effects.settled(measured, h):
            break
    say(len(measured["sets"]), len(measured["sets"]))
    out = side_effects.summarize(measured, h)
    out["controls"] = [dict(row) for row in measured["sets"][1:]]
    out["controls_max"], out["stop_h"] = total, h
    return out


# -- the cross-value matrix ---------------------------------------------------------------------
def _conflict(item: Item) -> bool:
    return bool(item.value and item.opposite_value and item.dimension == pair_label(item.value, item.opposite_value))


def value_groups(items: Sequence[Item]) -> dict[str, tuple[str, list[Item]]]:
    """Columns of the matrix: column → (the pole it is read toward, its items).

    A value conflict (C-voice) belongs to its value's column (one per test sheet), read toward the
    whole value "X|*"; any other item to its axis "a/b", read toward a (Schwartz order).
    """
    order = {d: n for n, d in enumerate(OPPOSITE)}
    groups: dict[str, tuple[str, list[Item]]] = {}
    for item in items:
        if _conflict(item):
            key, toward = item.value, aggregate_label(item.value)
        else:
            a, b = sorted((item.dimension, item.opposite), key=lambda label: (order.get(label, len(order)), label))
            key, toward = f"{a}/{b}", a
        groups.setdefault(key, (toward, []))[1].append(item)
    return groups


def own_column(pole: str, groups: dict[str, tuple[str, list[Item]]]) -> str | None:
    value = pole.split("|")[0] if "|" in pole else None
    if value is not None and value in groups:
        return value
    return next((key for key, (_, items) in groups.items() if any(expresses(i, pole) is not None for i in items[:50])), None)


def _cell(base: torch.Tensor, located: torch.Tensor, controls: list[torch.Tensor], config) -> dict[str, Any]:
    effect_i = located - base
    out: dict[str, Any] = {"items": len(base), "baseline": float(base.mean()), "effect": float(effect_i.mean()),
                           "effect_ci": bootstrap_ci(effect_i, n=config.bootstrap, seed=config.seed)}
    if controls:
        per = torch.stack([c - base for c in controls]).mean(1)
        sd = float(per.std()) if len(per) > 1 else float("nan")
        out.update({"controls": len(per), "control_effect": float(per.mean()), "control_sd": sd,
                    "effect_minus_control": out["effect"] - float(per.mean()),
                    "z": (out["effect"] - float(per.mean())) / sd if sd == sd and sd > 0 else None,
                    # share of controls moving these items at least as far (either way): a two-sided rank p
                    "p_abs": (1 + int((per - per.mean()).abs().ge(abs(out["effect"] - float(per.mean()))).sum())) / (1 + len(per))})
    return out


def leakage(cells: dict[str, dict], own: str | None) -> dict[str, Any] | None:
    """How much of a located set's effect leaks to other values: the mean |z| of the other columns over the |z| of its
    own (its own value's items). 0: only its own value moves; 1: the others move as much. None without an own column
    with a nonzero z, or without another column with a z (too few controls)."""
    on = (cells.get(own) or {}).get("z") if own is not None else None
    off = [abs(c["z"]) for column, c in cells.items() if column != own and c.get("z") is not None]
    if not on or not off:
        return None
    mean_off = sum(off) / len(off)
    return {"ratio": mean_off / abs(on), "own_abs_z": abs(on), "off_mean_abs_z": mean_off, "columns": len(off)}


def _settled(base: torch.Tensor, located: torch.Tensor, controls: list[torch.Tensor], h: int) -> bool:
    """A column's controls need not go on: h of them move its items at least as far from the controls' mean as the
    located set does (either way), so its two-sided p is at least h / n whatever more controls would show."""
    if h <= 0 or len(controls) < h:
        return False
    per = torch.stack([c - base for c in controls]).mean(1)
    centre = per.mean()
    return int((per - centre).abs().ge(abs(float((located - base).mean()) - float(centre))).sum()) >= h


class CrossValues:
    """The cross-value matrix of one study: the other columns' items under the located set and its controls.

    Each column draws its controls as the value shift does (``stop_after`` at a time, Besag–Clifford, two-sided): a
    column the located set does not move beyond chance stops after a few sets, one it moves draws every control the
    value shift drew. ``matrix_items`` caps the items of a column (each column's effect carries its CI), so a data set
    with many values costs a bounded multiple of the value shift."""

    def __init__(self, loaded, items: Sequence[Item], config, select: Callable[[list[Item], str, int | None], list[Item]],
                 unedited: Unedited | None = None):
        self.loaded, self.config, self.select = loaded, config, select  # select: validate.items_for
        self.groups = value_groups(items)
        self.unedited = unedited or Unedited(loaded, config)  # shared with the study: its poles' items are columns too

    @property
    def useful(self) -> bool:
        return len(self.groups) > 1

    def items(self, column: str, toward: str, own: bool = False) -> list[Item]:
        """A column's items (the value shift's own column: the value shift's items)."""
        limits = [x for x in (self.config.limit, None if own else self.config.matrix_items) if x is not None]
        return self.select(self.groups[column][1], toward, min(limits) if limits else None)

    def row(self, pole: str, edit, control_edits: Sequence, say: Callable[[str, int, int], None],
            own_result: tuple | None = None, memo=computed) -> dict[str, Any]:
        """One row: the located edit of ``pole`` on every column, beside its controls. ``own_result``: (item ids,
        base, located, controls) of the value shift itself, reused for the column with exactly those items.
        ``memo`` keeps each column as it finishes."""
        own = own_column(pole, self.groups)
        cells: dict[str, Any] = {}
        stage = f"{pole}: cross-value matrix ({len(self.groups)} columns)"
        for n, (column, (toward, _)) in enumerate(self.groups.items()):
            say(stage, n, len(self.groups))
            if column == own and expresses(self.groups[column][1][0], pole) is not None:
                toward = pole  # its own axis is read toward its own pole
            items = self.items(column, toward, own=toward == pole)
            if own_result is not None and toward == pole and [i.id for i in items] == own_result[0]:
                _, base, located, controls = own_result
                cells[column] = {"toward": toward, **_cell(base, located, list(controls[: len(control_edits)]), self.config)}
                continue
            base = self.unedited(items, progress=lambda d, t, c=column: say(f"{pole}: unedited items of column {c}", d, t)).toward(toward)
            cells[column] = memo(column, lambda: self._column(pole, column, toward, items, base, edit, control_edits, say))
        say(stage, len(self.groups), len(self.groups))
        strength = {c: abs(v["z"]) if v.get("z") is not None else abs(v.get("effect_minus_control", v["effect"])) for c, v in cells.items()}
        strongest = max(strength, key=strength.get) if strength else None
        out: dict[str, Any] = {"own": own, "cells": cells, "strongest": strongest,
                               "own_moves_most": (own is not None and strongest is not None
                                                  and strength[own] >= max(strength.values())),
                               "leakage": leakage(cells, own)}
        return out

    def _column(self, pole: str, column: str, toward: str, items: list[Item], base: torch.Tensor, edit, control_edits: Sequence,
                say) -> dict[str, Any]:
        cfg, h, total = self.config, self.config.stop_after, len(control_edits)
        reuse, values, drawn = LowerLayers(), [], 0
        stage = f"{pole}: cross-value matrix, column {column} (sets; located and up to {total} controls, sequential)"
        say(stage, 0, 1 + total)  # named from its start: its first round (located and h controls) takes a while
        while True:
            take = total - drawn if h <= 0 else min(total - drawn, h)
            sets = ([edit] if not values else []) + list(control_edits[drawn: drawn + take])
            results = forced_choice_sets(self.loaded, items, sets, batch_tokens=cfg.batch_tokens, choice=cfg.choice,
                                         template=cfg.template, reuse=reuse)
            values += [r.toward(toward) for r in results]
            drawn += take
            say(stage, len(values), 1 + total)
            stopped = _settled(base, values[0], values[1:], h)
            if drawn >= total or stopped:
                break
        cell = {"toward": toward, **_cell(base, values[0], values[1:], cfg), "controls_max": total}
        if stopped and drawn < total:
            cell["stopped_at"] = drawn
            cell["p_abs"] = h / drawn  # Besag–Clifford: stopped at the h-th control as extreme
        return cell


# -- generations scored by a judge --------------------------------------------------------------
def prompts_of(items: Sequence[Item]) -> list[str]:
    return [f"{i.scenario}\nAnswer:" if i.language != "zh" else f"{i.scenario}\n回答：" for i in items]


def judged(loaded, judge, items: Sequence[Item], pole: str, opposite: str | None, edit, control_edits: Sequence, config,
           before: list[str] | None = None, say: Callable[[str, int, int], None] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Generations before, after the located edit and after each control; each scored toward ``pole``.

    Returns the summary (before/after means, Δ with a bootstrap CI over prompts, the controls' Δ and
    Δ − control with its CI) and one row per prompt and edit (the texts and their scores)."""
    prompts = prompts_of(items)
    language = items[0].language if items else "en"
    texts_before = before if before is not None else generate(loaded, prompts, None, max_new_tokens=config.max_new_tokens)
    after = generate(loaded, prompts, edit, max_new_tokens=config.max_new_tokens)
    ctrl_texts = []
    for n, control in enumerate(control_edits):
        ctrl_texts.append(generate(loaded, prompts, control, max_new_tokens=config.max_new_tokens))
        if say:
            say(f"{pole}: generations under controls", n + 1, len(control_edits))
    flat = [*texts_before, *after, *[t for texts in ctrl_texts for t in texts]]
    scores = torch.tensor(judge.score(flat, pole, opposite, language), dtype=torch.float64)
    k = len(prompts)
    s_before, s_after = scores[:k], scores[k: 2 * k]
    s_ctrl = [scores[2 * k + n * k: 3 * k + n * k] for n in range(len(control_edits))]
    effect_i = s_after - s_before
    summary: dict[str, Any] = {"judge": judge.describe(), "prompts": k, "before": float(s_before.mean()), "after": float(s_after.mean()),
                               "effect": float(effect_i.mean()), "effect_ci": bootstrap_ci(effect_i, n=config.bootstrap, seed=config.seed)}
    if s_ctrl:
        per = torch.stack([c - s_before for c in s_ctrl])
        diff = effect_i - per.mean(0)
        summary.update({"controls": len(s_ctrl), "control_effect": float(per.mean()),
                        "control_sd": float(per.mean(1).std()) if len(s_ctrl) > 1 else None,
                        "control_effects": per.mean(1).tolist(), "effect_minus_control": float(diff.mean()),
                        "effect_minus_control_ci": bootstrap_ci(diff, n=config.bootstrap, seed=config.seed + 1)})
    rows = []
    for n, (item, prompt) in enumerate(zip(items, prompts)):
        row = {"dimension": pole, "item": item.id, "prompt": prompt, "before": texts_before[n], "after": after[n],
               "score_before": round(float(s_before[n]), 6), "score_after": round(float(s_after[n]), 6)}
        if s_ctrl:
            row["controls"] = [{"text": ctrl_texts[c][n], "score": round(float(s_ctrl[c][n]), 6)} for c in range(len(s_ctrl))]
        rows.append(row)
    return summary, rows


class Beside:
    """What a study measures beside the value shift, set up once: neutral corpora per language,
    the judge, the cross-value matrix (ablate only); per pole ``measure`` and ``generations``."""

    def __init__(self, loaded, config, items: Sequence[Item], judge=None, *, select=None, unedited: Unedited | None = None):
        """``select``: validate.items_for, for the cross-value matrix (None: no matrix, as in steer); ``unedited``:
        the study's unedited results per item list, which the matrix reads and adds to."""
        self.loaded, self.config, self.judge = loaded, config, judge
        self.unedited = unedited or Unedited(loaded, config)
        self.neutral: dict[str, side_effects.Neutral] = {}
        self.references: dict[str, dict] = {}  # per language, the unedited model's part of the side effects (once a study)
        self.cross = (CrossValues(loaded, items, config, select, self.unedited)
                      if select is not None and config.cross_values else None)
        if self.cross is not None and not self.cross.useful:
            self.cross = None
        self.before: dict[tuple, list[str]] = {}  # unedited generations per prompt list (shared by every γ)
        self.own: tuple | None = None  # (item ids, base, located, controls) of the pole being measured

    def neutral_for(self, language: str) -> side_effects.Neutral:
        lang = "zh" if language == "zh" else "en"
        if lang not in self.neutral:
            self.neutral[lang] = side_effects.load_neutral(lang, self.config.neutral)
        return self.neutral[lang]

    def measure(self, summary: dict, pole: str, items: Sequence[Item], edit, controls: Sequence, say, memo=computed) -> list[dict]:
        """Side effects, the cross-value row and the verdict into ``summary``; returns the side-effect rows. ``memo``
        keeps each round of side effects and each matrix column as it finishes."""
        cfg = self.config
        rows: list[dict] = []
        if cfg.side_effects:
            stage = f"{pole}: side effects (sets; located and up to {len(controls)} controls, sequential)"
            lang = "zh" if items and items[0].language == "zh" else "en"
            with budget.stage("side effects"):
                side = side_study(self.loaded, self.neutral_for(lang), edit, controls, cfg,
                                  progress=lambda done, total: say(stage, done, total), first=summary.get("controls_drawn", 0),
                                  reference=self.references.setdefault(lang, {}), memo=lambda name, f: memo(f"side effects {name}", f))
            summary["side_effects"] = {k: v for k, v in side.items() if k != "controls"}
            seeds = [control_seed(cfg.seed, n) for n in range(len(controls))]
            for name, row in zip(["located", *seeds], [side["located"], *side["controls"]]):
                rows.append({"dimension": pole, "set": name, **{k: round(float(v), 6) for k, v in row.items()}})
        if self.cross is not None:  # the controls the value shift was ranked against (evaluations cost items × sets)
            drawn = min(summary.get("controls_drawn", len(controls)), cfg.side_controls) if cfg.side_controls else 0
            with budget.stage("cross-value matrix"):
                summary["cross_values"] = self.cross.row(pole, edit, list(controls[:drawn]), say, own_result=self.own,
                                                         memo=lambda name, f: memo(f"matrix {name}", f))
        summary["verdict"] = side_effects.verdict(summary, summary.get("side_effects"), summary.get("cross_values"), cfg.verdict_alpha)
        return rows

    @budget.stage("generations")
    def generations(self, summary: dict, pole: str, opposite: str | None, items: Sequence[Item], edit, controls: Sequence,
                    say) -> list[dict]:
        key = tuple(i.id for i in items)
        if key not in self.before:
            self.before[key] = generate(self.loaded, prompts_of(items), None, max_new_tokens=self.config.max_new_tokens)
        result, rows = judged(self.loaded, self.judge, items, pole, opposite, edit, list(controls[: self.config.judge_controls]),
                              self.config, before=self.before[key], say=say)
        summary["judge"] = result
        return rows

    @staticmethod
    def columns(summary: dict) -> dict[str, Any]:
        """The side-effect and judge columns of a CSV row (steer's dose_response.csv)."""
        out: dict[str, Any] = {}
        side = summary.get("side_effects") or {}
        for key in side_effects.DAMAGE:
            if key in side:
                out[key] = round(side[key]["located"], 6)
                out[f"{key}_controls"] = round(side[key].get("control_mean", float("nan")), 6)
                out[f"{key}_p"] = round(side[key].get("p", float("nan")), 6)
        if summary.get("judge"):
            out["judge_effect"] = round(summary["judge"]["effect"], 6)
            out["judge_control_effect"] = round(summary["judge"].get("control_effect", float("nan")), 6)
        if summary.get("verdict"):
            out["verdict"] = summary["verdict"]["verdict"]
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.neutral:
            out["neutral"] = {lang: n.source for lang, n in self.neutral.items()}
        if self.judge is not None:
            out["judge"] = self.judge.describe()
        return out

    def write(self, directory, side_rows: list[dict], summaries: list[dict]) -> None:
        from vneuron.runtime.store import write_csv

        if side_rows:
            write_csv(directory / "side_effects.csv", side_rows)
        cross = []
        for s in summaries:
            for column, cell in (s.get("cross_values") or {}).get("cells", {}).items():
                cross.append({"dimension": s["dimension"], "column": column, "toward": cell["toward"], "items": cell["items"],
                              "own": column == s["cross_values"]["own"], "effect": round(cell["effect"], 6),
                              "control_effect": round(cell.get("control_effect", float("nan")), 6),
                              "control_sd": round(cell.get("control_sd", float("nan")), 6),
                              "z": "" if cell.get("z") is None else round(cell["z"], 4)})
        if cross:
            write_csv(directory / "cross_values.csv", cross)
