"""``--dry-run`` of ``ablate`` and ``steer``: what the study would cost, before anything runs.

The evaluation batches are built exactly as the run would build them (tokenised, packed into token tries),
so forward passes, tokens, requests and bytes are counts, not guesses; the time comes from a short
calibration (one batch) on a local model. Server memory per batch is an estimate: the largest transient
activations of one block, the attention mask and the logits chunk. Nothing is written.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from vneuron.errors import VneuronError
from vneuron.models.architectures import text_config
from vneuron.runtime.budget import MB, Work, dtype_bytes
from vneuron.runtime.precision import storage
from vneuron.runtime.tokens import pad_id
from vneuron.validate.edits import plan
from vneuron.validate.evaluate import (CPU_BATCH_TOKENS, encode_pairs, forced_choice_pairs, score_tries, sent_tensors, step_tensors,
                                       tries_supported)
from vneuron.validate.items import items_for
from vneuron.validate.prefix import LOGIT_BUDGET, head_logsumexp, pack, row_batches, tensors
from vneuron.validate.study import edit_for, model_for, prepare_study


def _server_mb(model, tokens: int, width: int, scored: int, dtype: str) -> float:
    cfg = text_config(model.lm.config)
    hidden = model.arch.hidden(model.lm.config)
    b = dtype_bytes(dtype)
    activations = tokens * (4 * hidden + 3 * model.width) * b  # residual, attention in/out, MLP gate/up/act
    mask = tokens * width * b
    vocab = int(getattr(cfg, "vocab_size", 0))
    logits = min(scored * vocab, max(vocab, LOGIT_BUDGET)) * 4 * 2 if scored else 0
    return (activations + mask + logits) / MB


def _eval_plan(model, items, choice: str, batch_tokens: int, low: int, dtype: str, pairs=None, template=None):
    """Per evaluation of ``items`` (or of continuation ``pairs``) under one edit set: batches and their counts
    (bytes_up: the batches' tensors, ``evaluate.sent_tensors``; the edit's own tensors are added per request by the caller)."""
    encoded = encode_pairs(model, forced_choice_pairs(items, choice, template=template) if pairs is None else pairs)
    first = None
    per_set, lower, peak = Work(), Work(), 0.0
    for batch in row_batches(pack(encoded), batch_tokens):
        t = tensors(batch, pad_id(model.tokenizer), getattr(torch, storage(dtype)))
        first = first or t
        layers = model.n_layers - (low if model.remote is None else 0)
        per_set.add(Work(forwards=1, requests=1, tokens=t.tokens, layer_tokens=t.tokens * layers,
                         head_positions=len(t.rows), bytes_down=4 * len(t.targets),
                         bytes_up=sum(x.numel() * x.element_size() for x in sent_tensors(t))))
        if model.remote is None and low:
            lower.add(Work(forwards=1, tokens=t.tokens, layer_tokens=t.tokens * low))
        peak = max(peak, _server_mb(model, t.tokens, t.ids.shape[1], len(t.rows), dtype))
    return per_set, lower, peak, first


def _scaled(work: Work, times: int) -> Work:
    return Work(**{k: round(v * times) for k, v in asdict(work).items()})  # an expected count of sets: rounded


def first_controls(config) -> int:
    """Controls sent with the located set in its one request (``Sequential.first``)."""
    return min(config.stop_after, config.controls) if config.stop_after > 0 else config.controls


def _remote_requests(bound: Work, per_set: Work, step: int, points: int, controls: int, first: int) -> None:
    """Requests and bytes sent of the edited evaluations on NDIF: per γ, the located set and its first
    controls in one request that carries the batches once and each set's edit; every later control one
    request per batch, each carrying its batch and the edit. (The baseline is one request per batch.)"""
    together = min(first, controls)
    later = controls - together
    edited = _scaled(per_set, points * (1 + controls))  # already added: correct its requests and bytes sent
    bound.requests += points * (1 + later * per_set.forwards) - edited.requests
    bound.bytes_up += points * (per_set.bytes_up + (1 + together) * step + later * (per_set.bytes_up + per_set.forwards * step)) \
        - edited.bytes_up


def _timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _calibrate(model, t, steps) -> dict[str, float]:
    """Seconds per token × block (a plain forward of batch ``t`` through the blocks), per head position (the full
    vocabulary's logits and their normaliser) and per forward pass (what one traced evaluation of ``t`` takes beyond
    those two: tracing, edits, Python), on this model and threads (local models only). A stage's time is its work's
    sum of these (``seconds``)."""
    from vneuron.models.sites import resolve_path

    hf, vocab = model.hf_model, int(text_config(model.lm.config).vocab_size)
    base, head = resolve_path(hf, model.arch.base), resolve_path(hf, model.arch.head)
    device = next(hf.parameters()).device
    ids = t.ids.reshape(1, -1).to(device)
    with torch.inference_mode():
        block = _timed(lambda: base(input_ids=ids, use_cache=False)) / (ids.numel() * model.n_layers)
        rows = torch.randn(64, head.weight.shape[1], dtype=head.weight.dtype, device=head.weight.device)
        picks = torch.arange(64, device=rows.device)
        head_s = _timed(lambda: head_logsumexp(rows, head.weight, head.bias, None, picks, picks)) / 64  # the scorer's own head
    chunks = t.head_chunks(vocab)
    post = model.arch.post(model.lm.config)
    whole = _timed(lambda: score_tries(model, t, steps, chunks, post), repeats=1)
    rest = max(whole - block * t.tokens * model.n_layers - head_s * len(t.rows), 0.0)
    return {"block_token_s": block, "head_position_s": head_s, "forward_s": rest}


def seconds(work: Work, units: dict[str, float]) -> float:
    """The time of ``work`` at the calibrated ``units``."""
    return work.forwards * units["forward_s"] + work.layer_tokens * units["block_token_s"] + work.head_positions * units["head_position_s"]


def validation_plan(run, config, kind: str, gammas: list[float] | None = None, *, model=None, remote=None,
                    progress=None, out=None) -> dict[str, Any]:
    """The plan of ``ablate`` (kind="ablate") or ``steer`` without running it.

    It makes exactly the checks the real command makes before its model loads (``vneuron.validate.study.prepare_study``:
    the run, the poles and every pole's evaluation items, `top_k`, `out` and its disk), so a plan is never
    shown for a study the real command would refuse.
    """
    say = progress or (lambda *a: None)
    config = config.check_ablation() if kind == "ablate" else config.check_steering()
    if kind == "steer" and not gammas:
        raise VneuronError("No `gammas` to steer with", "pass e.g. 0,0.5,1,2,4")
    study = prepare_study(run, config, out, kind, {"gammas": [float(g) for g in gammas]} if kind == "steer" else None)
    run, config = study.run, study.config
    loaded = model_for(run, model, say, remote, config.dtype)
    dtype = loaded.extra.get("dtype", "float32")
    all_items = study.evaluation.items
    points = gammas if kind == "steer" else [config.gamma]
    low_h, high_h = min(config.stop_after, config.controls) if config.stop_after else config.controls, config.controls
    least, most, peak, seen, calibration = Work(), Work(), 0.0, set(), None
    poles = []
    high_h = max(high_h, config.max_controls)  # a located set ahead of every control keeps drawing
    per_control = Work()  # one more control, for every pole (and γ)
    keys = []  # each pole's item list, whose unedited evaluation the matrix reads too
    for pole in study.poles:
        items = items_for(all_items, pole, config.limit)
        neurons = run.sets[pole] if config.top_k is None else run.sets[pole].top(config.top_k)
        low = int(neurons.layers.min()) if len(neurons) else 0
        per_set, lower, mb, first = _eval_plan(loaded, items, config.choice, loaded.batch_tokens(config.batch_tokens, CPU_BATCH_TOKENS),
                                               low, dtype, template=config.template)
        peak = max(peak, mb)
        key = tuple(i.id for i in items)
        baseline = 0 if (kind == "ablate" and key in seen) else 1
        seen.add(key)
        base_work = Work(**{**asdict(per_set), "layer_tokens": per_set.layer_tokens + (per_set.tokens * low
                                                                                      if loaded.remote is None else 0)})
        step = sum(x.numel() * x.element_size() for x in step_tensors(plan(loaded, edit_for(run, neurons, pole, config))))
        for bound, controls in ((least, low_h), (most, high_h)):
            bound.add(_scaled(base_work, baseline))
            bound.add(_scaled(per_set, len(points) * (1 + controls)))
            bound.add(lower)
            if loaded.remote is not None:  # what the remote requests are (validate._sequential, evaluate)
                _remote_requests(bound, per_set, step, len(points), controls, first_controls(config))
            else:
                bound.bytes_up += step * per_set.forwards * len(points) * (1 + controls)
        if calibration is None and loaded.remote is None and first is not None:
            say("Calibrating on one batch", 0, 0)
            calibration = _calibrate(loaded, first, plan(loaded, edit_for(run, neurons, pole, config)))
        keys.append(key)
        poles.append({"dimension": pole, "items": len(items), "neurons": len(neurons), "lowest_layer": low,
                      "batches_per_set": per_set.forwards, "tokens_per_set": per_set.tokens})
        per_control.add(_scaled(per_set, len(points)))
    out: dict[str, Any] = {
        "kind": kind, "model": loaded.source.model_id, "remote": loaded.remote.describe() if loaded.remote else None,
        "out": str(study.out), "evaluation": {k: study.evaluation.data.get(k) for k in ("name", "source", "split", "items")},
        "poles": poles, "gammas": points if kind == "steer" else None,
        "controls": {"max": config.controls, "stop_after": config.stop_after, "at_least": low_h},
        "least": least.report(), "most": most.report(), "server_mb_per_batch": round(peak, 1),
    }
    out["controls"]["max_controls"] = config.max_controls
    out.update(_beside_plan(loaded, config, per_control, all_items, kind, len(points), len(study.poles), low_h))
    stages = {"value shift": (least, most), **_side_stage(loaded, config, all_items, len(points) * len(study.poles), low_h),
              **(_matrix_stage(loaded, config, study, keys, dtype, (low_h, high_h)) if kind == "ablate" else {})}
    stages.update(_direction_stage(loaded, config, study, kind, points, dtype, keys,
                                   stages["side effects"][2] if "side effects" in stages else None))
    # expected: every stage at its least (value shifts that stop at their first round, as a null or reversed effect
    # does), but the side effects as their rule draws on average for a located set that damages like a random one
    expected = {name: v[3] if len(v) > 3 else v[0] for name, v in stages.items()}
    out["stages"] = {name: {"least": v[0].report(), "most": v[1].report(), "expected": expected[name].report()}
                     for name, v in stages.items()}
    if calibration is not None:
        out["units"] = calibration
        for name, v in stages.items():
            out["stages"][name]["estimate_s"] = [round(seconds(v[0], calibration), 1), round(seconds(v[1], calibration), 1)]
            out["stages"][name]["expected_s"] = round(seconds(expected[name], calibration), 1)
        out["estimate_s"] = [round(sum(v["estimate_s"][i] for v in out["stages"].values())) for i in (0, 1)]
        out["expected_s"] = round(sum(v["expected_s"] for v in out["stages"].values()))
        out["per_control"]["estimate_s"] = round(seconds(per_control, calibration), 1)
        if "side effects" in stages:
            out["side_effects"]["estimate_s_per_set"] = round(seconds(stages["side effects"][2], calibration), 2)
    if "side effects" in stages:
        out["side_effects"]["layer_tokens_per_set"] = stages["side effects"][2].layer_tokens
    if config.generations:
        out["note"] = "generations before/after are not in the estimate"
    return out


def _side_controls(config, first: int, measures: int) -> tuple[int, int, float]:
    """Controls the side effects draw beside each located set (``specificity.side_study``'s sequential rule): at least
    h, at most every one measured beside the value shift (all drawn, and at least side_controls), and on average
    ``side_effects.expected_controls`` after a value shift that drew ``first``, over ``measures`` damage measures."""
    from vneuron.validate.side_effects import expected_controls
    from vneuron.validate.specificity import beside_count

    h, most = config.stop_after, max(config.side_controls, config.controls, config.max_controls)
    least = min(config.side_controls, h) if h > 0 else config.side_controls
    return least, most, expected_controls(beside_count(first, config), first, h, measures)


def _beside_plan(loaded, config, per_control: Work, items, kind: str, points: int, poles: int, first: int) -> dict[str, Any]:
    """The cost of one more control (every pole and γ) and of the side effects, for the plan (``first``: the value shift's
    first round of controls)."""
    out: dict[str, Any] = {"per_control": per_control.report()}
    if config.side_effects:
        from vneuron.validate.side_effects import load_neutral

        neutral = load_neutral(items[0].language if items else "en", config.neutral)
        tokens = sum(len(loaded.tokenizer(t)["input_ids"]) for t in neutral.texts)
        pair_tokens = sum(len(loaded.tokenizer(p + c)["input_ids"]) for _, p, r, w in neutral.pairs for c in (r, w))
        least, most, expected = _side_controls(config, first, 3 if neutral.pairs else 2)
        out["side_effects"] = {"texts": len(neutral.texts), "pairs": len(neutral.pairs), "tokens_per_set": tokens + pair_tokens,
                               "sets_at_least": points * poles * (1 + least), "sets_at_most": points * poles * (1 + most),
                               "sets_expected": round(points * poles * (1 + expected), 1),
                               "cross_values": kind == "ablate" and config.cross_values}
    return out


def _side_stage(loaded, config, items, measured: int, first: int) -> dict[str, tuple]:
    """The side effects' work, as ``specificity.side_study`` does it: the unedited model's part once per language (the
    KL identity's reference, the pairs' unedited log-likelihoods), then each edit set's prose and pairs; ``measured``
    located sets (poles × γ), each with its controls in sequential rounds (at least h, at most all; expected:
    ``side_effects.expected_controls`` after a value shift that drew ``first``): (least, most, per set, expected)."""
    if not config.side_effects:
        return {}
    from vneuron.validate.side_effects import load_neutral, prose_batch_shapes

    per_set, reference, measures = Work(), Work(), 2  # KL and perplexity; the task's pairs where the corpus has them
    for lang in sorted({"zh" if i.language == "zh" else "en" for i in items} or {"en"}):
        neutral = load_neutral(lang, config.neutral)
        measures = max(measures, 3 if neutral.pairs else 2)
        for tokens, positions in prose_batch_shapes(loaded, neutral.texts, config.batch_tokens):
            one = Work(forwards=1, requests=1, tokens=tokens, layer_tokens=tokens * loaded.n_layers, head_positions=positions)
            reference.add(one)
            per_set.add(one)
        if neutral.pairs:
            flat = [(prompt, c) for _, prompt, right, wrong in neutral.pairs for c in (right, wrong)]
            pairs, _, _, _ = _eval_plan(loaded, [], config.choice, loaded.batch_tokens(config.batch_tokens, CPU_BATCH_TOKENS), 0,
                                        loaded.extra.get("dtype", "float32"), pairs=flat)
            reference.add(pairs)
            per_set.add(pairs)
    low, high, mean = Work(), Work(), Work()
    for bound, controls in zip((low, high, mean), _side_controls(config, first, measures)):
        bound.add(reference)
        bound.add(_scaled(per_set, measured * (1 + controls)))
    return {"side effects": (low, high, per_set, mean)}


def _matrix_stage(loaded, config, study, keys: list[tuple], dtype: str, drawn: tuple[int, int], layer_of=None) -> dict[str, tuple]:
    """The cross-value matrix's work, as ``specificity.CrossValues.row`` does it: per pole, every column other than the
    value shift's own items — its unedited evaluation once a study (none where a pole's items are those items), then
    the located set and the value shift's controls (at most ``side_controls``) in rounds of h, a column stopping when
    settled (at least one round) — its lower layers run once per column. ``layer_of(pole)``: a direction arm's matrix
    (``direction_matrix``) edited at that layer, its controls the arm's random directions, the unedited columns shared."""
    if not (config.cross_values and (config.side_controls or layer_of)):
        return {}
    from vneuron.data.schema import expresses
    from vneuron.validate.specificity import own_column, value_groups

    groups = value_groups(study.items)
    if len(groups) < 2:
        return {}
    h = config.stop_after
    low, high, seen, batch = Work(), Work(), set(keys), loaded.batch_tokens(config.batch_tokens, CPU_BATCH_TOKENS)
    for pole, key in zip(study.poles, keys):
        own = own_column(pole, groups)
        neurons = study.neurons(pole)
        bottom = int(neurons.layers.min()) if len(neurons) else 0
        if layer_of is not None:
            layer = layer_of(pole)
            if layer is None:
                continue
            bottom = layer + 1  # a direction at block L's output: the blocks from L + 1 run (``edits.start_at``)
        for column, (toward, members) in groups.items():
            if column == own and expresses(members[0], pole) is not None:
                toward = pole
            limits = [x for x in (config.limit, None if toward == pole else config.matrix_items) if x is not None]
            items = items_for(members, toward, min(limits) if limits else None)
            ids = tuple(i.id for i in items)
            if toward == pole and ids == key or not items:
                continue
            per_set, lower, _, _ = _eval_plan(loaded, items, config.choice, batch, bottom, dtype, template=config.template)
            if ids not in seen and layer_of is None:
                seen.add(ids)
                unedited = Work(**{**asdict(per_set), "layer_tokens": per_set.tokens * loaded.n_layers})
                low.add(unedited)
                high.add(unedited)
            for bound, controls in ((low, drawn[0]), (high, drawn[1])):
                total = controls if layer_of is not None else min(controls, config.side_controls)
                sets = 1 + (min(total, h) if h > 0 else total) if bound is low else 1 + total
                bound.add(_scaled(per_set, sets))
                bound.add(lower)
    return {"cross-value matrix": (low, high)}


def _direction_stage(loaded, config, study, kind: str, points: list, dtype: str, keys: list[tuple],
                     side_per_set: Work | None) -> dict[str, tuple]:
    """The direction baselines' work, as ``baselines.Arms`` does it, per pole and γ: the budget (at the least read on the
    way by the study's own passes, at the most its own pair of passes up to layer L: ``edit_sizes``), each arm's edit
    and its random directions (at least h, at most ``direction_controls_max``) above the layer's output saved once a
    pole (``LowerLayers``; ``edits.start_at``), and one edited pass over the neutral corpus per arm.
    A γ whose neuron edit changes nothing (scale 1, add 0) runs no arm; a pole without a direction is left out."""
    if not study.baselines.get("on"):
        return {}
    from vneuron.runtime.tokens import batches, pack as pack_rows  # edit_sizes' plain batches, not tries
    from vneuron.validate.directions import direction_layer

    arms = (2 if config.projected_out else 1) if kind == "ablate" else 1
    edited = [g for g in points if kind == "ablate" or not ((config.mode == "scale" and g == 1) or (config.mode == "add" and g == 0))]
    most = config.direction_controls_max
    least = min(config.stop_after, most) if config.stop_after > 0 else most
    batch = loaded.batch_tokens(config.batch_tokens, CPU_BATCH_TOKENS)
    low, high, layers = Work(), Work(), {}
    for pole in study.poles:
        try:
            layer = layers[pole] = direction_layer(study.run, pole, config.direction_layer)
        except VneuronError:
            continue  # the study notes it and goes on
        items = items_for(study.evaluation.items, pole, config.limit)
        encoded = encode_pairs(loaded, forced_choice_pairs(items, config.choice, template=config.template))
        per_set, lower, _, _ = _eval_plan(loaded, items, config.choice, batch, layer + 1, dtype, template=config.template)
        tries = tries_supported(loaded, encoded)
        sizes, kept = Work(), tries and loaded.remote is None
        if tries:  # the pair of passes over the evaluation's tries; the unedited one keeps L's output
            sizes = Work(forwards=2 * per_set.forwards, requests=per_set.forwards, tokens=2 * per_set.tokens,
                         layer_tokens=2 * per_set.tokens * (layer + 1))
        else:
            for part in batches(encoded, batch):
                n = int(pack_rows(part, pad_id(loaded.tokenizer), left=True)[0].numel())
                sizes.add(Work(forwards=2, requests=1, tokens=2 * n, layer_tokens=2 * n * (layer + 1)))
        read = tries and loaded.remote is None  # at the least, the study's own passes read the budget (``Readings``)
        for bound, controls in ((low, least), (high, most)):
            bound.add(_scaled(sizes, 0 if read and bound is low else len(edited)))
            if edited and not kept:
                bound.add(lower)
            bound.add(_scaled(per_set, len(edited) * arms * (1 + controls)))
            if side_per_set is not None:
                bound.add(_scaled(side_per_set, len(edited) * arms))
    if kind == "ablate" and config.direction_matrix:
        matrix = _matrix_stage(loaded, config, study, keys, dtype, (least, most), layer_of=layers.get)
        for bound, part in zip((low, high), matrix.get("cross-value matrix", ())):
            bound.add(_scaled(part, arms))
    return {"direction baselines": (low, high)}
