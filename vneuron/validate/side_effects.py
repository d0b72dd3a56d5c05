"""Side effects of an edit, measured beside the same matched random controls as its value effect.

A located set that moves value choices may do so by damaging the model. Three measures, each for
the located set and for every control, on inputs that carry no value content:

- **KL** — the mean KL(unedited ‖ edited) of the next-token distribution over EVERY position of a
  neutral prose corpus (the prediction after BOS included), and the change in **perplexity** there;
- a **non-value forced choice** — factual and grammatical pairs ("The capital of France is" →
  " Paris." vs " Madrid."), read exactly as value items are (mean log-probability of each
  continuation): the accuracy and the mean P(right) before and after.

The built-in neutral corpora (EN, ZH) are ``vneuron/data/builtin/neutral/`` (how they were written:
docs/DATA_CARD.md); ``neutral=FILE`` reads a user's own. ``verdict`` puts the value shift, the side
effects and the cross-value matrix into words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch

from vneuron.errors import VneuronError
from vneuron.runtime import budget
from vneuron.runtime.remote import call, nbytes, outcome, trace_kwargs
from vneuron.runtime.store import file_sha256
from vneuron.runtime.tokens import pad_id, position_ids, token_batches
from vneuron.validate.edits import apply, plan
from vneuron.validate.evaluate import continuation_logprobs_sets

NEUTRAL_BATCH_TOKENS = 128  # the full next-token distributions of a batch are held at once (vocab 262,144 on Gemma)
DAMAGE = ("kl", "ppl_ratio", "task_drop")  # side effects, each oriented so that larger = more damage
VERDICTS = ("value-specific", "non-specific damage", "no effect")


@dataclass
class Neutral:
    """Neutral prose and non-value forced-choice pairs (kind, prompt, right, wrong)."""

    language: str
    texts: list[str]
    pairs: list[tuple[str, str, str, str]]
    source: dict[str, Any] = field(default_factory=dict)


def _neutral_dir() -> Path:
    return Path(str(resources.files("vneuron.data").joinpath("builtin", "neutral")))


def _read_lines(path: Path) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    texts, pairs = [], []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) == 1:
            texts.append(line.strip())
        elif len(parts) in (3, 4) and all(p.strip() for p in parts[-3:]):
            kind, prompt, right, wrong = parts if len(parts) == 4 else ("pair", *parts)
            if right == wrong:
                raise VneuronError(f"{path}, line {n}: the right and the wrong continuation are the same", "make them differ")
            pairs.append((kind.strip(), prompt, right, wrong))
        else:
            raise VneuronError(f"{path}, line {n}: cannot read {line[:60]!r}",
                               "write a passage alone on its line, or prompt<TAB>right<TAB>wrong (optionally kind<TAB> first)")
    return texts, pairs


def load_neutral(language: str = "en", path: str | Path | None = None) -> Neutral:
    """The built-in neutral corpus of ``language`` (en, zh), or a user's file (its prose replaces the
    built-in prose; its pairs, if it has any, replace the built-in pairs)."""
    lang = "zh" if language == "zh" else "en"
    builtin = _neutral_dir()
    texts, pairs = _read_lines(builtin / f"{lang}.prose.txt")
    _, pairs = _read_lines(builtin / f"{lang}.pairs.txt")
    source: dict[str, Any] = {"name": f"builtin-neutral-{lang}", "language": lang,
                              "prose_sha256": file_sha256(builtin / f"{lang}.prose.txt"),
                              "pairs_sha256": file_sha256(builtin / f"{lang}.pairs.txt")}
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise VneuronError(f"`neutral` {path} does not exist", "pass a text file of neutral passages")
        own_texts, own_pairs = _read_lines(file)
        if not own_texts and not own_pairs:
            raise VneuronError(f"`neutral` {path} holds no passage and no pair", "one passage a line, or prompt<TAB>right<TAB>wrong")
        texts = own_texts or texts
        pairs = own_pairs or pairs
        source.update({"name": file.name, "path": str(file.resolve()), "file_sha256": file_sha256(file),
                       "own_prose": bool(own_texts), "own_pairs": bool(own_pairs)})
    source.update({"texts": len(texts), "pairs": len(pairs)})
    return Neutral(lang, texts, pairs, source)


def load_fit_prose(language: str = "en", path: str | Path | None = None) -> tuple[list[str], dict[str, Any]]:
    """Neutral prose to FIT on (the planted units' background, the planting KL term): never the prose a plant
    is checked on, so the check's perplexity is measured on text the fit has not seen. (texts, source)."""
    lang = "zh" if language == "zh" else "en"
    file = Path(path).expanduser() if path is not None else _neutral_dir() / f"{lang}.fit.txt"
    if not file.is_file():
        raise VneuronError(f"`fit_neutral` {path} does not exist", "pass a text file of neutral passages, one a line")
    texts, _ = _read_lines(file)
    if not texts:
        raise VneuronError(f"`fit_neutral` {path} holds no passage", "one neutral passage a line")
    name = file.name if path is not None else f"builtin-neutral-fit-{lang}"
    return texts, {"name": name, "texts": len(texts), "sha256": file_sha256(file), **({"path": str(file.resolve())} if path else {})}


# -- measuring ---------------------------------------------------------------------------------
def _prose_batches(model, texts: Sequence[str], batch_tokens: int):
    ids = [list(model.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    pad = pad_id(model.tokenizer)
    out = []
    for batch in token_batches(ids, len, batch_tokens):
        width = max(len(i) for i in batch)
        tensor = torch.tensor([i + [pad] * (width - len(i)) for i in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in batch])
        out.append((tensor, mask))
    return out


def _prose_request(model, ids, mask, steps_list):
    """One request: the unedited next-token distributions of a batch, then per edit set the summed KL
    to them and the summed NLL of the text, over every predicted position (reduced where the model runs)."""
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    inputs = model.inputs(ids, mask, position_ids(mask))
    targets = ids[:, 1:]
    keep = mask[:, 1:].float()
    with torch.inference_mode(), lm.session(**trace_kwargs(model)) as session:
        sums = []  # the name is the key of the collected result: it must match outcome's
        with lm.trace(inputs):
            ref = lm.output.logits[:, :-1].float().log_softmax(-1)  # the full vocabulary, where the logits are
            p_ref = ref.exp()  # once per batch, not once per edit set
            on = keep.to(ref.device)
            sums.append((-(ref.gather(-1, targets.to(ref.device)[..., None]).squeeze(-1)) * on).sum(1).cpu())
        for steps in steps_list:
            with lm.trace(inputs):
                apply(lm, steps)
                new = lm.output.logits[:, :-1].float().log_softmax(-1)
                sums.append(((p_ref * (ref - new)).sum(-1) * on).sum(1).cpu())
                sums.append((-(new.gather(-1, targets.to(new.device)[..., None]).squeeze(-1)) * on).sum(1).cpu())
        sums.save()
    return outcome(model, session, lambda: {"sums": sums})


def prose_effects(model, texts: Sequence[str], edit_sets: list, *, batch_tokens: int = NEUTRAL_BATCH_TOKENS,
                  progress=None) -> dict[str, Any]:
    """Perplexity of ``texts`` unedited, and per edit set the mean KL per position and the perplexity.
    ``progress(done, total)`` after each batch (each holds every edit set: the slow part of a side-effect study)."""
    steps_list = [plan(model, e) for e in edit_sets]
    positions = 0
    nll0 = 0.0
    kl = [0.0] * len(edit_sets)
    nll = [0.0] * len(edit_sets)
    batches = _prose_batches(model, texts, min(batch_tokens, NEUTRAL_BATCH_TOKENS))
    for done, (ids, mask) in enumerate(batches, 1):
        sums = call(model, lambda: _prose_request(model, ids, mask, steps_list))["sums"]
        positions += int(mask[:, 1:].sum())
        nll0 += float(sums[0].sum())
        for s in range(len(edit_sets)):
            kl[s] += float(sums[1 + 2 * s].sum())
            nll[s] += float(sums[2 + 2 * s].sum())
        sets = 1 + len(edit_sets)
        budget.current.add(budget.Work(forwards=sets, requests=1, tokens=int(ids.numel()) * sets,
                                       layer_tokens=int(ids.numel()) * sets * model.n_layers, head_positions=int(ids.numel()) * sets,
                                       bytes_down=8 * len(ids) * (2 * sets - 1), bytes_up=nbytes(ids, mask)))
        if progress:
            progress(done, len(batches))
    positions = max(positions, 1)
    return {"positions": positions, "ppl_before": math.exp(nll0 / positions),
            "kl": [k / positions for k in kl], "ppl_after": [math.exp(n / positions) for n in nll]}


def pair_effects(model, pairs: Sequence[tuple[str, str, str, str]], edit_sets: list, *, batch_tokens: int = 1024,
                 reuse=None) -> dict[str, Any]:
    """The non-value forced choice: accuracy and mean P(right) unedited and under each edit set."""
    flat = [(prompt, c) for _, prompt, right, wrong in pairs for c in (right, wrong)]
    lps = continuation_logprobs_sets(model, flat, [None, *edit_sets], batch_tokens=batch_tokens, reuse=reuse)

    def read(lp):
        lp = lp.reshape(len(pairs), 2)
        return float((lp[:, 0] > lp[:, 1]).double().mean()), float(torch.sigmoid(lp[:, 0] - lp[:, 1]).mean())

    acc0, p0 = read(lps[0])
    after = [read(lp) for lp in lps[1:]]
    return {"pairs": len(pairs), "acc_before": acc0, "p_before": p0, "acc_after": [a for a, _ in after],
            "p_after": [p for _, p in after]}


def measure(model, neutral: Neutral, edit_sets: list, *, batch_tokens: int = 1024, reuse=None, progress=None) -> dict[str, Any]:
    """Side effects of each edit set (the located set first, then its controls), per set one record.
    ``progress(done, total)``: the prose's batches, then the pairs as one more unit."""
    say = progress or (lambda done, total: None)
    units = len(_prose_batches(model, neutral.texts, NEUTRAL_BATCH_TOKENS)) if neutral.texts else 0
    say(0, units + 1)
    prose = prose_effects(model, neutral.texts, edit_sets, progress=lambda d, t: say(d, units + 1)) if neutral.texts else None
    task = pair_effects(model, neutral.pairs, edit_sets, batch_tokens=batch_tokens, reuse=reuse) if neutral.pairs else None
    say(units + 1, units + 1)
    rows = []
    for s in range(len(edit_sets)):
        row: dict[str, Any] = {}
        if prose:
            row.update(kl=prose["kl"][s], ppl_after=prose["ppl_after"][s], ppl_ratio=prose["ppl_after"][s] / prose["ppl_before"])
        if task:
            row.update(task_acc_after=task["acc_after"][s], task_p_after=task["p_after"][s],
                       task_drop=task["p_before"] - task["p_after"][s])
        rows.append(row)
    base = {}
    if prose:
        base.update(ppl_before=prose["ppl_before"], positions=prose["positions"])
    if task:
        base.update(task_acc_before=task["acc_before"], task_p_before=task["p_before"], pairs=task["pairs"])
    return {"before": base, "sets": rows}


# -- against the controls ----------------------------------------------------------------------
def against_controls(located: float, controls: Sequence[float], h: int = 0) -> dict[str, Any]:
    """A damage measure of the located set among its controls (larger = more damage): rank, p, z.

    ``h`` > 0: the controls were drawn in this order under a sequential rule (Besag–Clifford, as the
    value shift's): p is h / n at the control n that was the h-th at least as damaging, else
    (g + 1) / (drawn + 1) — what drawing one control at a time and stopping there would give, so
    controls measured beyond that point (for another measure) change nothing."""
    c = torch.tensor(list(controls), dtype=torch.float64)
    out: dict[str, Any] = {"located": located}
    if len(c):
        sd = float(c.std()) if len(c) > 1 else float("nan")
        hits = torch.cumsum((c >= located).long(), 0)
        stop = int((hits >= h).nonzero()[0]) + 1 if h > 0 and int(hits[-1]) >= h else 0
        out.update({"controls": len(c), "control_mean": float(c.mean()), "control_sd": sd,
                    "rank": 1 + int((c > located).sum()),  # 1: more damage than every control
                    "p": h / stop if stop else (1 + int(hits[-1])) / (1 + len(c)),
                    "z": (located - float(c.mean())) / sd if sd == sd and sd > 0 else None})
        if h > 0:
            out["stopped_at"] = stop or None  # the control at which the rule alone would have stopped
    return out


def settled(measured: dict[str, Any], h: int) -> bool:
    """Every damage measure has h controls at least as damaging as the located set: more cannot change a p."""
    sets = measured["sets"]
    if h <= 0 or len(sets) < 2:
        return False
    keys = [k for k in DAMAGE if k in sets[0]]
    return all(sum(s[k] >= sets[0][k] for s in sets[1:]) >= h for k in keys)


def summarize(measured: dict[str, Any], h: int = 0) -> dict[str, Any]:
    """Per damage measure: the located set (first record) against the controls (the rest, in drawing order)."""
    sets = measured["sets"]
    out: dict[str, Any] = {"before": measured["before"], "located": sets[0] if sets else {}}
    for key in DAMAGE:
        if sets and key in sets[0]:
            out[key] = against_controls(sets[0][key], [s[key] for s in sets[1:]], h)
    return out


def verdict(value: dict[str, Any], side: dict[str, Any] | None, cross: dict[str, Any] | None, alpha: float) -> dict[str, Any]:
    """The finding in words, from the value shift's rank among the controls and the side effects' ranks.

    value-specific: the value shift is beyond the controls (sequential p ≤ alpha), no side effect is
    beyond them, and (with a cross-value matrix) the located set moves its own value most.
    non-specific damage: a side effect beyond the controls, or a value shift that another value
    shares at least as strongly. no effect: neither.
    """
    p_value = value.get("p_sequential", value.get("p_lower"))
    shifted = p_value is not None and p_value <= alpha
    damaged = sorted(k for k in DAMAGE if side and k in side and side[k].get("p") is not None and side[k]["p"] <= alpha)
    own_most = cross.get("own_moves_most") if cross else None
    if damaged or (shifted and own_most is False):
        word = "non-specific damage"
    elif shifted:
        word = "value-specific"
    else:
        word = "no effect"
    reasons = [f"value shift p = {p_value:.3g}" + (" ≤ " if shifted else " > ") + f"{alpha:g}" if p_value is not None
               else "no controls"]
    if side:
        reasons.append("side effects beyond the controls: " + (", ".join(damaged) if damaged else "none")
                       + f" (p ≤ {alpha:g})")
    if own_most is not None:
        reasons.append("own value moves most" if own_most else f"{cross.get('strongest')} moves at least as much as its own value")
    return {"verdict": word, "reasons": reasons, "alpha": alpha, "value_shift": shifted, "damage": damaged, "own_moves_most": own_most}
