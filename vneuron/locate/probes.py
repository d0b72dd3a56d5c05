"""Is the value linearly readable at each layer? Held-out linear probes on the probe rows of a capture.

For every pole and layer, two probes separate the pole's prompts from its opposite's, each fitted on all
folds but one and scored on the held-out fold, every fold in turn (with two folds: fit on one, score the
other, and the reverse); the AUROC is over every held-out score at once (each prompt scored by the probe
that never saw it; both sides of a scenario share a fold, so no scenario is on both sides of a split):

* **mean_diff**: the score is the prompt's mean residual projected on d = mean(pole) − mean(opposite) of
  the training folds — the direction the direction baselines edit with.
* **logistic**: L2-regularised logistic regression on the training folds' rows, z-scored per dimension
  with the training folds' mean and standard deviation; minimises mean log-loss + (λ/2)·‖w‖² (the bias
  unpenalised), λ = ``probe_l2``, by Newton's method in float64 from w = 0 (deterministic; ``logistic_fit``).

Each AUROC has a percentile bootstrap CI over held-out prompts, resampled within the pole and within the
opposite (``probe_bootstrap`` draws, a fixed seed). The unit is the prompt (``vneuron.locate.residual``
says why); where the rows are a sketch, both probes read the sketch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from vneuron.locate.residual import ResidualStats
from vneuron.runtime.threads import one_thread

LEVEL = 0.95
NEWTON_STEPS = 50  # the most Newton steps per fit (they converge in about ten)


def auroc(pos: torch.Tensor, neg: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """P(a pole score > an opposite score) + ½ P(tie); ``weights`` ([B, n_pos], [B, n_neg] multiplicities, one
    resample per row) gives one AUROC per row, in O(B·n) after one sort."""
    scores = torch.cat([pos, neg]).double()
    values, group = scores.unique(return_inverse=True)  # ties share a group
    wp, wn = weights if weights is not None else (torch.ones(1, len(pos), dtype=torch.float64),
                                                  torch.ones(1, len(neg), dtype=torch.float64))
    wp, wn = wp.double(), wn.double()
    per_group = torch.zeros(wn.shape[0], len(values), dtype=torch.float64).index_add_(1, group[len(pos):], wn)
    below = per_group.cumsum(1) - per_group  # opposite weight strictly below each group
    wins = below[:, group[: len(pos)]] + 0.5 * per_group[:, group[: len(pos)]]
    out = (wp * wins).sum(1) / (wp.sum(1) * wn.sum(1))
    return out if weights is not None else out[0]


def resamples(n_pos: int, n_neg: int, draws: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bootstrap multiplicities ([draws, n_pos], [draws, n_neg]): the pole's and the opposite's prompts resampled
    separately, with replacement (the same draws serve every layer and both probes)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (n_pos, n_neg):
        picks = torch.randint(0, n, (draws, n), generator=gen)
        out.append(torch.zeros(draws, n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(draws, n, dtype=torch.float64)))
    return out[0], out[1]


def auroc_ci(pos: torch.Tensor, neg: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor], level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC over the resamples ``weights`` (``resamples``)."""
    values = auroc(pos, neg, weights)
    lo, hi = torch.quantile(values, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)).tolist()
    return lo, hi


def logistic_fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w [L, k], b [L], centre [L, k], scale [L, k]): the L2-regularised logistic probe of every layer at once on
    z-scored ``x`` [n, L, k] with labels ``y`` [n] ∈ {0, 1}.

    Newton's method with a backtracking line search, in float64, batched over layers: on the weights when
    k < n, else on the n coefficients of w = Zᵀa (the optimum lies in the span of the training rows, as the
    penalty is on w alone), whichever system is smaller. The objective is strictly convex, so both reach the
    same optimum; no random start, so the fit is deterministic.
    """
    x = x.double()
    centre, scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    z = ((x - centre) / scale).transpose(0, 1)  # [L, n, k]
    n, k = z.shape[1], z.shape[2]
    y = y.double()[None, :].expand(z.shape[0], -1)
    dual = k >= n
    basis = z @ z.transpose(1, 2) if dual else z  # [L, n, n] kernel, or the rows themselves
    size = basis.shape[2]
    theta = torch.zeros(z.shape[0], size + 1, dtype=torch.float64)  # (a or w, b)

    def parts(t):
        logits = (basis @ t[:, :-1, None]).squeeze(2) + t[:, -1:]
        penalty = (t[:, :-1] * (logits - t[:, -1:])).sum(1) if dual else t[:, :-1].square().sum(1)  # aᵀKa or ‖w‖²
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1) + 0.5 * l2 * penalty
        return logits, loss

    logits, loss = parts(theta)
    eye = torch.eye(size, dtype=torch.float64)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(logits)
        r, d = (p - y) / n, p * (1 - p) / n  # [L, n]
        if dual:  # the system reduced by K: [[D K + λI, D1], [1ᵀ D K, 1ᵀ D 1]] · (Δa, Δb) = −(r + λa, 1ᵀr)
            top = torch.cat([d[:, :, None] * basis + l2 * eye, d[:, :, None]], 2)
            grad = torch.cat([r + l2 * theta[:, :-1], r.sum(1, keepdim=True)], 1)
        else:  # [[Zᵀ D Z + λI, Zᵀ D 1], [1ᵀ D Z, 1ᵀ D 1]] · (Δw, Δb) = −(Zᵀr + λw, 1ᵀr)
            dz = d[:, :, None] * z
            top = torch.cat([z.transpose(1, 2) @ dz + l2 * eye, dz.sum(1)[:, :, None]], 2)
            grad = torch.cat([(z.transpose(1, 2) @ r[:, :, None]).squeeze(2) + l2 * theta[:, :-1], r.sum(1, keepdim=True)], 1)
        bottom = torch.cat([(d[:, None, :] @ basis) if dual else dz.sum(1)[:, None, :], d.sum(1)[:, None, None]], 2)
        system = torch.cat([top, bottom], 1)
        # one layer at a time: torch 2.13's batched LU (MKL, >1 thread) fails on matrices above ~100 rows
        step = -torch.stack([torch.linalg.solve(system[i], grad[i]) for i in range(len(system))])
        if float(grad.abs().max()) < 1e-10:
            break
        rate = torch.ones(z.shape[0], 1, dtype=torch.float64)
        for _ in range(30):  # halve each layer's step until its objective does not rise
            new_logits, new_loss = parts(theta + rate * step)
            worse = new_loss > loss + 1e-12
            if not bool(worse.any()):
                break
            rate = torch.where(worse[:, None], rate / 2, rate)
        theta, logits, loss = theta + rate * step, new_logits, new_loss
    w = (z.transpose(1, 2) @ theta[:, :-1, None]).squeeze(2) if dual else theta[:, :-1]
    return w, theta[:, -1], centre, scale


def held_out_scores(rows: torch.Tensor, positive: torch.Tensor, folds: torch.Tensor, l2: float) -> dict[str, torch.Tensor]:
    """Per probe, [n, L] held-out scores of ``rows`` [n, L, k] (``positive`` [n] bool, ``folds`` [n]): each fold
    scored by the probes fitted on the others."""
    n, n_layers, _ = rows.shape
    out = {"mean_diff": torch.zeros(n, n_layers, dtype=torch.float64), "logistic": torch.zeros(n, n_layers, dtype=torch.float64)}
    x = rows.double()
    for fold in folds.unique().tolist():
        test, train = folds == fold, folds != fold
        d = x[train & positive].mean(0) - x[train & ~positive].mean(0)  # [L, k]
        out["mean_diff"][test] = torch.einsum("nlk,lk->nl", x[test], d)
        w, b, centre, scale = logistic_fit(x[train], positive[train], l2)
        out["logistic"][test] = torch.einsum("nlk,lk->nl", (x[test] - centre) / scale, w) + b
    return out


def probe_record(residual: ResidualStats, contrasts: Sequence[Sequence[str]], *, l2: float, draws: int, seed: int = 0) -> dict[str, Any]:
    """What the manifest records: per pole and probe the held-out AUROC per layer with its CI, and the peak layer.
    On one torch thread: small operations, which several threads only slow down (``runtime.threads.one_thread``)."""
    with one_thread():
        return _probe_record(residual, contrasts, l2, draws, seed)


def _probe_record(residual: ResidualStats, contrasts, l2: float, draws: int, seed: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "unit": "prompt: its mean block output over its counted tokens",
        "held_out": "leave one fold out (fit on the other folds, score the held-out fold); AUROC over every held-out score",
        "features": {"hidden": residual.hidden, "width": int(residual.rows.shape[2]), "sketched": residual.sketched},
        "mean_diff": "projection on mean(pole) − mean(opposite) of the training folds",
        "logistic": {"l2": l2, "objective": "mean log-loss + (λ/2)·‖w‖², bias unpenalised",
                     "features": "z-scored per dimension on the training folds",
                     "solver": "Newton with backtracking, float64, from w = 0 (on the smaller of the weights and the "
                               "training rows' span)"},
        "bootstrap": {"draws": draws, "level": LEVEL, "seed": seed, "over": "held-out prompts, resampled within pole and opposite"},
        "poles": {},
    }
    captured = torch.isfinite(residual.rows).all(2).all(1)
    for pole, opposite in contrasts:
        pos_labels, neg_labels = residual.members(pole), residual.members(opposite)
        is_pos = torch.isin(residual.prompt_labels, torch.tensor(pos_labels)) & captured
        is_neg = torch.isin(residual.prompt_labels, torch.tensor(neg_labels)) & captured
        keep = is_pos | is_neg
        folds = residual.prompt_folds[keep]
        entry: dict[str, Any] = {"opposite": opposite, "prompts": [int(is_pos.sum()), int(is_neg.sum())]}
        problem = _unfit(residual.folds, is_pos[keep], folds)
        if problem:
            record["poles"][pole] = {**entry, "note": problem}
            continue
        positive = is_pos[keep]
        scores = held_out_scores(residual.rows[keep], positive, folds, l2)
        weights = resamples(int(positive.sum()), int((~positive).sum()), draws, seed)
        for name, s in scores.items():
            values = [float(auroc(s[positive, layer], s[~positive, layer])) for layer in range(residual.n_layers)]
            cis = [auroc_ci(s[positive, layer], s[~positive, layer], weights) for layer in range(residual.n_layers)]
            best = max(range(len(values)), key=lambda layer: values[layer])
            entry[name] = {"auroc": [round(v, 4) for v in values], "ci": [[round(lo, 4), round(hi, 4)] for lo, hi in cis],
                           "peak": {"layer": best, "auroc": round(values[best], 4), "ci": [round(c, 4) for c in cis[best]]}}
        record["poles"][pole] = entry
    return record


def _unfit(folds: int, positive: torch.Tensor, prompt_folds: torch.Tensor) -> str | None:
    """Why the probes cannot be held out for a pole (None: they can)."""
    if folds < 2:
        return "held-out probes need `folds` ≥ 2"
    for fold in prompt_folds.unique().tolist():
        train = prompt_folds != fold
        if not bool(positive[train].any()) or not bool((~positive[train]).any()):
            return f"fold {fold}'s training folds lack pole or opposite prompts"
    if not bool(positive.any()) or not bool((~positive).any()) or len(prompt_folds.unique()) < 2:
        return "too few prompts on a side, or all in one fold"
    return None


def peak_layer(manifest: dict, pole: str, probe: str = "mean_diff") -> int | None:
    """The layer where a pole's probe reads best, from a locate manifest (None: no probe recorded)."""
    entry = ((manifest.get("probes") or {}).get("poles") or {}).get(pole) or {}
    return (entry.get(probe) or {}).get("peak", {}).get("layer")
