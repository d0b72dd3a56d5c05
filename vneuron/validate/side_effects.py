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
from vneuron.models.sites import resolve_path
from vneuron.validate.evaluate import continuation_logprobs_sets
from vneuron.validate.prefix import head_chunks, head_logsumexp

NEUTRAL_BATCH_TOKENS = 128  # a soft-capped head: the full next-token distributions of a batch are held at once (vocab 262,144)
LINEAR_BATCH_TOKENS = 1024  # any other head: the vocabulary is read in chunks (``edited_stats``), batches as evaluation's
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
# KL(p ‖ q) at a position, with p the unedited next-token distribution and q the edited one, without holding p:
# log q = z − logZ with z = (W h + b) / s the edited logits, so KL = −H(p) − h·e − p·b/s + logZ, where the entropy H(p),
# the expected unembedding e = Wᵀp / s and p·b/s belong to the unedited model (computed once per study and position)
# and only logZ = logsumexp(z) needs the edited logits: one pass over the vocabulary instead of five, and the model's
# own head over every position is never materialised. Exact for a head followed by nothing or by a division (every
# family but a soft-capped one, which keeps the direct formula).
def _work(hidden: torch.Tensor) -> torch.dtype:
    """Float64 for a float64 model (exact tests), else float32, as the direct formula computes."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def reference_stats(hidden: torch.Tensor, weight, bias, scale: float, targets: torch.Tensor) -> torch.Tensor:
    """Per position of the unedited model (``hidden`` [N, H] final-normed): [N, H + 3] holding −H(p) − p·b/s, the NLL
    of the target, a 0, then e = Wᵀp / s (float64, on the host). Only tensors and plain data: it runs in a request."""
    rows = []
    vocab, work = weight.shape[0], _work(hidden)
    for lo, hi in head_chunks(hidden.shape[0], vocab):
        z = (torch.nn.functional.linear(hidden[lo:hi].to(weight.device), weight, bias) / scale).to(work)
        logp = z.log_softmax(-1)
        p = logp.exp()
        entropy = -(p * logp).sum(-1)
        pb = (p @ (bias.to(work) / scale)) if bias is not None else torch.zeros_like(entropy)
        nll = -logp.gather(-1, targets[lo:hi].to(z.device)[:, None]).squeeze(-1)
        e = (p @ weight.to(work)) / scale
        rows.append(torch.cat([(-entropy - pb)[:, None], nll[:, None], torch.zeros_like(nll)[:, None], e], 1).double().cpu())
    return torch.cat(rows)


def edited_stats(hidden: torch.Tensor, weight, bias, scale: float, targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per position under an edit: [N, 2] KL(unedited ‖ edited) and the NLL of the target (float64, on the host)."""
    out = []
    vocab, work = weight.shape[0], _work(hidden)
    for lo, hi in head_chunks(hidden.shape[0], vocab):
        h = hidden[lo:hi].to(weight.device)
        rows = torch.arange(hi - lo, device=h.device)
        log_z, target = head_logsumexp(h, weight, bias, None if scale == 1 else ("divide", scale), rows,
                                       targets[lo:hi].to(h.device), work)
        log_z, target = log_z.double(), target.double()
        ref = reference[lo:hi].to(h.device)
        kl = ref[:, 0] - (h.double() * ref[:, 3:]).sum(-1) + log_z
        out.append(torch.stack([kl, log_z - target], 1).cpu())
    return torch.cat(out)


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


def _linear_head(model) -> float | None:
    """The divisor of a head whose logits are a linear map of the final hidden state (1: none), else None (soft-capped)."""
    post = model.arch.post(model.lm.config)
    if post is None:
        return 1.0
    return post[1] if post[0] == "divide" else None


def _reference_request(model, ids, mask, scale: float):
    """One request: the unedited model's per-position reference (``reference_stats``) of a batch's predicted positions."""
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    base, head = resolve_path(lm, model.arch.base), resolve_path(lm, model.arch.head)
    inputs = model.inputs(ids, mask, position_ids(mask))
    keep = mask[:, 1:].reshape(-1).bool()
    targets = ids[:, 1:].reshape(-1)[keep]
    with torch.inference_mode(), lm.trace(inputs, **trace_kwargs(model)) as tracer:
        final = base.output[0][:, :-1]
        flat = final.reshape(-1, final.shape[-1])[keep.to(final.device)]
        ref = reference_stats(flat, head.weight, head.bias, scale, targets).save()
        tracer.stop()  # the model's own head over every position is not needed
    return outcome(model, tracer, lambda: {"ref": ref})


def _edited_request(model, ids, mask, steps_list, scale: float, reference: torch.Tensor):
    """One request: per edit set the per-position KL and NLL of a batch (``edited_stats``), the reference uploaded."""
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    base, head = resolve_path(lm, model.arch.base), resolve_path(lm, model.arch.head)
    inputs = model.inputs(ids, mask, position_ids(mask))
    keep = mask[:, 1:].reshape(-1).bool()
    targets = ids[:, 1:].reshape(-1)[keep]
    with torch.inference_mode(), lm.session(**trace_kwargs(model)) as session:
        stats = []  # the name is the key of the collected result: it must match outcome's
        for steps in steps_list:
            with lm.trace(inputs) as tracer:
                apply(lm, steps)
                final = base.output[0][:, :-1]
                flat = final.reshape(-1, final.shape[-1])[keep.to(final.device)]
                stats.append(edited_stats(flat, head.weight, head.bias, scale, targets, reference))
                tracer.stop()
        stats.save()
    return outcome(model, session, lambda: {"stats": stats})


def _prose_request(model, ids, mask, steps_list):
    """One request (a soft-capped head): the unedited next-token distributions of a batch, then per edit set the summed
    KL to them and the summed NLL of the text, over every predicted position (reduced where the model runs)."""
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


def prose_batch_tokens(model, batch_tokens: int | str = "auto") -> int:
    """The prose's batch size: the direct formula holds a batch's whole [positions, vocabulary] distributions (small
    batches); the identity reads the vocabulary in chunks (batches as evaluation's)."""
    cap = NEUTRAL_BATCH_TOKENS if _linear_head(model) is None else LINEAR_BATCH_TOKENS
    return min(model.batch_tokens(batch_tokens, cap), cap)


def prose_batch_shapes(model, texts: Sequence[str], batch_tokens: int | str = "auto") -> list[tuple[int, int]]:
    """(token positions, predicted positions) of each batch the prose is read in: the dry run's count of its work."""
    batches = _prose_batches(model, texts, prose_batch_tokens(model, batch_tokens))
    return [(int(ids.numel()), int(mask[:, 1:].sum())) for ids, mask in batches]


def prose_effects(model, texts: Sequence[str], edit_sets: list, *, batch_tokens: int | str = "auto",
                  progress=None, reference: dict | None = None) -> dict[str, Any]:
    """Perplexity of ``texts`` unedited, and per edit set the mean KL per position and the perplexity.
    ``progress(done, total)`` after each batch (each holds every edit set: the slow part of a side-effect study).
    ``reference``: the unedited model's per-position reference of each batch, kept by the caller across calls (a study
    measures the same prose for every pole and round): computed on first use."""
    steps_list = [plan(model, e) for e in edit_sets]
    scale = _linear_head(model)
    reference = {} if reference is None else reference
    positions = 0
    nll0 = 0.0
    kl = [0.0] * len(edit_sets)
    nll = [0.0] * len(edit_sets)
    batches = _prose_batches(model, texts, prose_batch_tokens(model, batch_tokens))
    for done, (ids, mask) in enumerate(batches, 1):
        n = int(mask[:, 1:].sum())
        positions += n
        sets = len(edit_sets)
        if scale is None:
            sums = call(model, lambda: _prose_request(model, ids, mask, steps_list))["sums"]
            nll0 += float(sums[0].sum())
            for s in range(sets):
                kl[s] += float(sums[1 + 2 * s].sum())
                nll[s] += float(sums[2 + 2 * s].sum())
            sets += 1
        else:
            key = (tuple(ids.shape), int(ids.sum()), int(mask.sum()))
            if key not in reference:
                reference[key] = call(model, lambda: _reference_request(model, ids, mask, scale))["ref"]
                budget.current.add(budget.Work(forwards=1, requests=1, tokens=int(ids.numel()), head_positions=n,
                                               layer_tokens=int(ids.numel()) * model.n_layers, bytes_down=nbytes(reference[key]),
                                               bytes_up=nbytes(ids, mask)))
            ref = reference[key]
            nll0 += float(ref[:, 1].sum())
            if sets:
                stats = call(model, lambda: _edited_request(model, ids, mask, steps_list, scale, ref))["stats"]
                for s in range(sets):
                    kl[s] += float(stats[s][:, 0].sum())
                    nll[s] += float(stats[s][:, 1].sum())
        budget.current.add(budget.Work(forwards=sets, requests=1, tokens=int(ids.numel()) * sets,
                                       layer_tokens=int(ids.numel()) * sets * model.n_layers, head_positions=n * sets,
                                       bytes_down=16 * n * sets, bytes_up=nbytes(ids, mask)))
        if progress:
            progress(done, len(batches))
    positions = max(positions, 1)
    return {"positions": positions, "ppl_before": math.exp(nll0 / positions),
            "kl": [k / positions for k in kl], "ppl_after": [math.exp(v / positions) for v in nll]}


def pair_effects(model, pairs: Sequence[tuple[str, str, str, str]], edit_sets: list, *, batch_tokens: int = 1024,
                 reuse=None, reference: dict | None = None) -> dict[str, Any]:
    """The non-value forced choice: accuracy and mean P(right) unedited and under each edit set. ``reference``: kept
    by the caller across calls, it holds the unedited log-likelihoods after the first."""
    flat = [(prompt, c) for _, prompt, right, wrong in pairs for c in (right, wrong)]
    reference = {} if reference is None else reference
    if "pairs" not in reference:
        lps = continuation_logprobs_sets(model, flat, [None, *edit_sets], batch_tokens=batch_tokens, reuse=reuse)
        reference["pairs"] = lps[0]
    else:
        lps = [reference["pairs"], *(continuation_logprobs_sets(model, flat, edit_sets, batch_tokens=batch_tokens, reuse=reuse)
                                     if edit_sets else [])]

    def read(lp):
        lp = lp.reshape(len(pairs), 2)
        return float((lp[:, 0] > lp[:, 1]).double().mean()), float(torch.sigmoid(lp[:, 0] - lp[:, 1]).mean())

    acc0, p0 = read(lps[0])
    after = [read(lp) for lp in lps[1:]]
    return {"pairs": len(pairs), "acc_before": acc0, "p_before": p0, "acc_after": [a for a, _ in after],
            "p_after": [p for _, p in after]}


def measure(model, neutral: Neutral, edit_sets: list, *, batch_tokens: int | str = "auto", reuse=None, progress=None,
            reference: dict | None = None) -> dict[str, Any]:
    """Side effects of each edit set (the located set first, then its controls), per set one record.
    ``progress(done, total)``: the prose's batches, then the pairs as one more unit. ``reference``: a dict the caller
    keeps for this ``neutral`` across calls (every pole and round of a study): the unedited model's part of each
    measure is computed on first use and read after."""
    say = progress or (lambda done, total: None)
    reference = {} if reference is None else reference
    units = len(_prose_batches(model, neutral.texts, prose_batch_tokens(model, batch_tokens))) if neutral.texts else 0
    say(0, units + 1)
    prose = (prose_effects(model, neutral.texts, edit_sets, batch_tokens=batch_tokens, progress=lambda d, t: say(d, units + 1),
                           reference=reference.setdefault("prose", {})) if neutral.texts else None)
    task = (pair_effects(model, neutral.pairs, edit_sets, batch_tokens=batch_tokens, reuse=reuse, reference=reference)
            if neutral.pairs else None)
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


def expected_controls(total: int, first: int, h: int, measures: int) -> float:
    """The controls ``specificity.side_study`` draws on average (the first round of ``first`` but at least h, then h at
    a time, up to ``total``) when the located set damages like a random set of its size: the number of controls at
    least as damaging among n is then uniform on 0..n, so one measure is settled at n with probability (n − h + 1)/(n + 1),
    and ``measures`` of them together with that to the power ``measures`` (taken as independent: KL and perplexity are
    not, so this leans to the high side). What ``--dry-run`` expects, between its least and most."""
    if h <= 0 or total <= 0:
        return float(max(total, 0))
    n = min(total, max(first, h))
    expected = float(n)
    while n < total:
        settled = ((n - h + 1) / (n + 1)) ** measures if n >= h else 0.0
        step = min(total - n, h)
        expected += step * (1 - settled)
        n += step
    return expected


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
