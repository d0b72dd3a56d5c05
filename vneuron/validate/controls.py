"""The located set beside matched random controls: the controls' seeds, the sequential drawing of them
(Besag–Clifford, ``sequential``), and the statistics of an effect against them.

For a pole D with located set S_D, each evaluation item (held-out scenarios on D's axis) gives
the probability b_i of choosing the action that expresses D; after editing S_D it is l_i, after
editing the s-th random control (same count per layer) c_si. Reported per pole:
  effect          mean_i(l_i − b_i)
  control         mean over seeds of mean_i(c_si − b_i), and their spread
  effect − control  with a bootstrap CI over items (items resampled, controls averaged)
  rank / p        the located effect's place among the controls (one-sided permutation p)
  drop %          relative drop in value consistency (the C-voice papers' headline form)
"""

from __future__ import annotations

from typing import Any

import torch

from vneuron.config import ValidateConfig
from vneuron.data.schema import Item, expresses
from vneuron.runtime import budget
from vneuron.validate.evaluate import bootstrap_ci, forced_choice, forced_choice_sets
from vneuron.validate.sequential import Sequential


def control_seed(seed: int, n: int) -> int:
    """The seed of a study's n-th random control set (its matched neurons: ``NeuronSet.random_matched``): every
    step that edits "the n-th control" (value shift, side effects, the cross-value matrix, PVQ) edits the same set."""
    return seed * 1000 + n


def summarize(pole: str, base: torch.Tensor, located: torch.Tensor, controls: list[torch.Tensor], items: list[Item],
             config: ValidateConfig, tail: str = "lower") -> dict[str, Any]:
    effect_i = located - base
    effect = float(effect_i.mean())
    out: dict[str, Any] = {
        "dimension": pole, "items": len(items),
        "baseline": float(base.mean()), "after": float(located.mean()), "effect": effect,
        "effect_ci": bootstrap_ci(effect_i, n=config.bootstrap, seed=config.seed),
        "consistency_before": float((base > 0.5).double().mean()),
        "consistency_after": float((located > 0.5).double().mean()),
    }
    own = torch.tensor([bool(expresses(i, pole)) for i in items])
    for name, sel in (("pole_items", own), ("opposite_items", ~own)):
        if sel.any():
            out[name] = {"n": int(sel.sum()), "baseline": float(base[sel].mean()), "after": float(located[sel].mean())}
    before = out["baseline"]
    out["drop_percent"] = 100 * (before - out["after"]) / before if before else None
    if controls:
        per_seed = torch.stack([c - base for c in controls])  # [S, n]
        control_effects = per_seed.mean(1)
        diff_i = effect_i - per_seed.mean(0)
        below = int((control_effects <= effect).sum())
        above = int((control_effects >= effect).sum())
        sd = float(control_effects.std()) if len(controls) > 1 else float("nan")
        out.update({
            "controls": len(controls),
            "control_effect": float(control_effects.mean()),
            "control_sd": sd,
            "control_min": float(control_effects.min()), "control_max": float(control_effects.max()),
            "effect_minus_control": float(diff_i.mean()),
            "effect_minus_control_ci": bootstrap_ci(diff_i, n=config.bootstrap, seed=config.seed + 1),
            "z": (effect - float(control_effects.mean())) / sd if sd and sd == sd and sd > 0 else None,
            "z_ci": z_interval(effect_i, per_seed, n=config.bootstrap, seed=config.seed + 2),
            "p_lower": (1 + below) / (1 + len(controls)),  # located lowers orientation more than chance
            "p_higher": (1 + above) / (1 + len(controls)),
            # 1: beyond every control in the expected direction (below them for "lower")
            "rank": 1 + int((control_effects < effect).sum() if tail == "lower" else (control_effects > effect).sum()),
            "control_effects": control_effects.tolist(),
        })
    return out


def z_interval(effect_i: torch.Tensor, per_seed: torch.Tensor, *, n: int = 2000, seed: int = 0,
               level: float = 0.95) -> tuple[float, float] | None:
    """Bootstrap CI of z = (effect − mean control) / sd of the controls, resampling items and controls
    together: how far the located set lies from the control distribution, with its uncertainty."""
    S, m = per_seed.shape
    if S < 3 or m < 2:
        return None
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, m, (n, m), generator=gen)
    weights = torch.zeros(n, m, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n, m, dtype=torch.float64)) / m
    located = weights @ effect_i.double()
    controls = (weights @ per_seed.double().T).gather(1, torch.randint(0, S, (n, S), generator=gen))
    sd = controls.std(1)
    z = ((located - controls.mean(1)) / sd)[sd > 0]
    if not len(z):
        return None
    lo, hi = torch.quantile(z, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=z.dtype)).tolist()
    return lo, hi


def computed(name: str, compute):
    """A memo that keeps nothing (``Checkpoint.memo`` keeps each part of a long step as it finishes)."""
    return compute()


@budget.stage("value shift")
def sequential_controls(loaded, items, pole: str, base, edit, control_edit, tail: str, config: ValidateConfig, reuse, progress,
                        memo=computed, reads=None):
    """The located set and its first controls in one go, then controls one at a time until the
    sequential rule (Besag–Clifford) stops: returns P toward the pole after the located edit, per
    control, and the rule (its report says how many were drawn and why it stopped). ``progress``
    counts edit sets against the most the rule may still draw, so its ETA is an upper bound.
    ``memo(name, compute)``: each evaluation (the first sets, then each control) kept as it finishes. ``reads``
    (``directions.Readings``): what the located set's pass hands to the direction baselines on the way."""
    rule = Sequential(0.0, tail, config.stop_after, config.controls, extend_to=config.max_controls)
    ceiling = lambda: 1 + max(config.controls, len(controls) + (1 if rule.more() else 0))  # noqa: E731
    progress(0, 1 + config.controls)
    if reads is not None:
        reads.begin()
    first = memo("first sets", lambda: [r.toward(pole) for r in forced_choice_sets(
        loaded, items, [edit] + [control_edit(n) for n in range(rule.first())], batch_tokens=config.batch_tokens,
        choice=config.choice, template=config.template, reuse=reuse, reads=reads)])
    located = first[0]
    rule.effect = float((located - base).mean())
    controls = list(first[1:])
    for c in controls:
        rule.add(float((c - base).mean()))
    progress(1 + len(controls), ceiling())
    while rule.more():
        n = len(controls)
        controls.append(memo(f"control {n}", lambda: forced_choice(loaded, items, control_edit(n), batch_tokens=config.batch_tokens,
                                                                   choice=config.choice, template=config.template,
                                                                   reuse=reuse).toward(pole)))
        rule.add(float((controls[-1] - base).mean()))
        progress(1 + len(controls), ceiling())
    progress(1 + len(controls), 1 + len(controls))
    return located, controls, rule
