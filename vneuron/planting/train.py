"""The study: pick the neurons, set their reads, train their slices, write the planted model directory.

Training is Adam on the planted slices' deltas; a held-out share of the training scenarios decides
the best step and early stopping, so the test split stays unseen until the "after" preference.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vneuron.config import PlantConfig
from vneuron.data import load_corpus
from vneuron.data.schema import Corpus, Item
from vneuron.errors import VneuronError
from vneuron.locate.scoring import NeuronSet
from vneuron.models.loading import LoadedModel, dir_revision, load_model
from vneuron.planting.check import neutral_check, prefix_bases
from vneuron.planting.neurons import choose_neurons
from vneuron.planting.objective import choice_logprobs, kl_to_original, margins
from vneuron.planting.reads import reading_directions, selectivity
from vneuron.planting.strength import fit_strength
from vneuron.planting.surgery import (NEURONS_FILE, ORIGINAL_FILE, PLANT_DIR, Planter, WriteScale, check_loaded, check_trainable, frozen,
                                      is_gated, slice_records, write_slices)
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.store import base_manifest, check_fresh, write_csv, write_json, write_run
from vneuron.validate.evaluate import forced_choice
from vneuron.validate.side_effects import load_fit_prose, load_neutral

Progress = Callable[[str, int, int], None]


@dataclass
class PlantResult:
    """What ``plant`` wrote: the directory, its manifest, the ground truth and the training curve."""

    out: Path
    manifest: dict[str, Any]
    neurons: NeuronSet
    curve: list[dict[str, Any]] = field(default_factory=list)


def axis_items(config: PlantConfig) -> tuple[str, list[Item], list[Item], list[str], str]:
    """(opposite, train items, test items, neutral texts, corpus hash) of the planted axis."""
    corpus = load_corpus(config.dataset, columns=config.columns, contrasts=config.contrasts)
    corpus = corpus.select(language=config.language)
    if not corpus.items:
        raise VneuronError(f"Corpus {corpus.name!r} holds no paired scenarios", "planting needs scenario items with two actions")
    if config.dimension not in corpus.labels:
        raise VneuronError(f"Corpus {corpus.name!r} has no label {config.dimension!r}", f"use one of: {', '.join(corpus.labels)}")
    opposite = dict(corpus.pole_contrasts()).get(config.dimension)
    if opposite is None:
        raise VneuronError(f"Corpus {corpus.name!r} pairs {config.dimension!r} with no opposite", "pass `contrasts`, e.g. pole:opposite")
    axis = [i for i in corpus.items if {i.dimension, i.opposite} == {config.dimension, opposite}]
    for label in (config.dimension, opposite):
        if not any(i.dimension == label and i.split == "train" for i in axis):
            raise VneuronError(f"The axis {config.dimension} vs {opposite} has no training scenario whose pole is {label!r}",
                               "add scenarios for both poles (split=train) to the corpus")
    train = [i for i in axis if i.split == "train"]
    test = [i for i in axis if i.split == "test"]
    if not test:
        raise VneuronError(f"The axis {config.dimension} vs {opposite} has no test scenarios", "mark some items split=test")
    if config.train_limit:
        train = per_side(train, config.train_limit)
    test = per_side(test, config.test_limit)
    neutral = sorted({i.scenario for i in corpus.items if i.split == "train"})
    return opposite, train, test, neutral, corpus.content_hash()


def split_validation(train_all: list[Item], config: PlantConfig) -> tuple[list[Item], list[Item]]:
    """(validation, training) scenarios: the held-out share that decides early stopping (and the strength), seeded."""
    shuffled = list(train_all)
    random.Random(config.seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * config.val_fraction)) if len(shuffled) > 1 else 0
    return shuffled[:n_val], shuffled[n_val:] or shuffled


def per_side(items: list[Item], limit: int | None) -> list[Item]:
    if not limit:
        return list(items)
    seen: dict[str, int] = {}
    out = []
    for item in items:
        if seen.get(item.dimension, 0) < limit:
            seen[item.dimension] = seen.get(item.dimension, 0) + 1
            out.append(item)
    return out


def preferences(model: LoadedModel, items: list[Item], pole: str, choices, batch_tokens: int) -> dict[str, float]:
    return {c: float(forced_choice(model, items, choice=c, batch_tokens=batch_tokens).toward(pole).mean()) for c in choices}


@one_writer
def plant(model: str | LoadedModel | None, config: PlantConfig | None = None, *, out: str | Path,
          dtype: str | None = None, progress: Progress | None = None, device: str | None = None) -> PlantResult:
    """Plant a preference for ``config.dimension`` into K neurons; write a model directory ``out``.

    ``dtype``: what the model computes (and the planted deltas train) in; None: float32, whatever the
    default of the other commands, because steps of 2e-3 on a weight vanish in bfloat16's 8-bit mantissa.
    ``device``: where it trains (``load_model``; None: the process's placement).
    """
    config = (config or PlantConfig()).check()
    say = progress or (lambda stage, done, total: None)
    out = Path(out)
    claim(out)
    check_fresh(out)
    opposite, train_all, test, _, corpus_hash = axis_items(config)
    prose = load_neutral(config.language, config.neutral)  # the check: neutral prose, every position, never fitted on
    neutral, fit_source = load_fit_prose(config.language, config.fit_neutral)  # the KL term and the reads' background
    if not isinstance(model, LoadedModel):
        check_trainable(model)
        model = load_model(model, dtype=dtype or "float32", progress=lambda m: say(m, 0, 0), device=device)
    check_loaded(model)
    if config.read_context is not None and not is_gated(model):
        raise VneuronError(f"`read_context` needs a gated MLP (separate gate and up rows); {model.source.model_id} has one "
                           "input projection per neuron", "leave `read_context` out for this model")
    neurons = choose_neurons(model, config)
    started = time.time()
    val, train = split_validation(train_all, config)
    report_train = per_side(train, config.report_limit)
    torch.manual_seed(config.seed)

    say("Preference before planting", 0, 0)
    before = {"train": preferences(model, report_train, config.dimension, config.choices, config.batch_tokens),
              "test": preferences(model, test, config.dimension, config.choices, config.batch_tokens)}
    with frozen(model):
        planter = Planter(model, neurons)
        originals = planter.originals()
        try:
            if config.init == "read":
                say("Reading the pole direction", 0, 0)
                for n in range(config.read_passes):
                    gates, ups = reading_directions(model, planter, train, config.reader(opposite), config.batch_tokens,
                                                    spread=config.read_spread, quantile=config.read_quantile,
                                                    context=config.read_context, planted=n > 0,
                                                    background=neutral if config.read_background is not None else (),
                                                    background_quantile=config.read_background)
                    planter.set_reading(gates, config.read_mix, up=config.reads_up, up_directions=ups)
            if config.quiet_prefix:  # the units read 0 where every text is the same (BOS): they cannot fire there
                bases = prefix_bases(model, planter, [*neutral, *(p.text for p in Corpus("plant", items=train[:16]).action_prompts())])
                if bases is not None:
                    planter.quiet(bases)
            direction = _direction_check(model, planter, config, val) if config.init == "read" else None
            curve, best_step, stop = _train(model, planter, config, train, val, neutral, say, config.reader(opposite))
            planter.materialise()
        except BaseException:
            planter.remove()
            raise
    train_s = time.time() - started
    try:
        strength = None
        if config.target is not None:
            say(f"Scaling the write to a validation preference of {config.target}", 0, 0)
            strength = fit_strength(model, WriteScale(write_slices(model, planter=planter)), val, config.dimension, config.choices,
                                    config.target, config.batch_tokens)
        say("Side effects on neutral text", 0, 0)
        planted_values = planter.originals()  # after materialise: the planted slices
        check = neutral_check(model, lambda: _swapped(planter, originals, planted_values), prose, planter)
        say("Preference after planting", 0, 0)
        after = {"train": preferences(model, report_train, config.dimension, config.choices, config.batch_tokens),
                 "test": preferences(model, test, config.dimension, config.choices, config.batch_tokens)}
        fingerprint = planter.fingerprint()
        reader = config.reader(opposite)
        neurons.meta.update({"opposite": opposite if reader == config.dimension else config.dimension,
                             "model_id": model.source.model_id, "base_revision": model.revision,
                             "per_layer": neurons.per_layer(), "label": config.reader(opposite), "carries": config.dimension,
                             "mechanism": config.mechanism})
        manifest = {
            **base_manifest("plant"),
            "base_model": model.manifest(),
            "dimension": config.dimension, "opposite": opposite, "mechanism": config.mechanism, "reads": config.reader(opposite),
            "dataset": {"spec": config.dataset or "builtin", "sha256": corpus_hash, "language": config.language,
                        "train": len(train), "validation": len(val), "test": len(test), "report_train": len(report_train)},
            "config": {**asdict(config), "choices": list(config.choices)},
            "neurons": {"count": len(neurons), "per_layer": neurons.per_layer(), "profile": config.profile if not config.neurons else None,
                        "seed": config.seed, "file": f"{PLANT_DIR}/{NEURONS_FILE}"},
            "parameters": {"trained": sum(s.delta.numel() for s in planter.slices),
                           "slices": [{"name": s.name, "axis": s.axis, "count": len(s.index)} for s in planter.slices]},
            "preference": {"before": before, "after": after},
            "side_effects": {**check, "neutral": prose.source, "fitted_on": fit_source},
            "direction": direction, "strength": strength,
            "training": {"steps_run": curve[-1]["step"] if curve else 0, "best_step": best_step, "stopped": stop,
                         "train_s": round(train_s, 1), "threads": torch.get_num_threads()},
            "weights_fingerprint": fingerprint,
        }
        tensors, meta = slice_records(planter, originals)

        def write(directory: Path) -> None:
            config_obj = model.hf_model.config
            config_obj.vneuron_plant = {"base_revision": model.revision, "dimension": config.dimension,
                                        "neurons": len(neurons), "weights_fingerprint": fingerprint}
            try:
                model.hf_model.save_pretrained(directory)
            finally:
                del config_obj.vneuron_plant
            model.tokenizer.save_pretrained(directory)
            (directory / PLANT_DIR).mkdir()
            neurons.save(directory / PLANT_DIR / NEURONS_FILE)
            from safetensors.torch import save_file

            save_file(tensors, str(directory / PLANT_DIR / ORIGINAL_FILE), metadata=meta)
            write_csv(directory / PLANT_DIR / "curve.csv", curve)
            manifest["revision"] = f"dir:{dir_revision(directory)}"
            manifest["timings"] = {"total_s": round(time.time() - started, 1), "train_s": round(train_s, 1)}
            write_json(directory / PLANT_DIR / "manifest.json", manifest)

        write_run(out, write, what="planted model, its neurons and its manifest")  # a full disk keeps the plant in a rescue copy
    finally:
        planter.restore(originals)  # the caller's model is the original again, exactly
    return PlantResult(out, manifest, neurons, curve)


def _train(model: LoadedModel, planter: Planter, config: PlantConfig, train: list[Item], val: list[Item],
           neutral: list[str], say: Progress, reader: str) -> tuple[list[dict], int, str]:
    """Adam on the deltas; validation forced-choice loss decides the best step and early stopping.

    ``reader``: the label whose actions the units must respond to (the pole, or the opposite when vetoing)."""
    gen = random.Random(config.seed + 1)
    frozen = config.frozen_read
    trained = planter.parameters(readers=not frozen, ups=not (frozen and config.sets_up))
    action = Corpus("plant", items=list(train)).action_prompts()
    opt = torch.optim.Adam(trained, lr=config.lr)
    planter.enforce_quiet()
    curve: list[dict] = []
    best = (math.inf, 0, planter.state())
    evals_without_gain, stop = 0, "steps"
    order: list[Item] = []
    train_choices = tuple(config.train_choices or config.choices)
    keep_ref: dict[tuple[str, str], torch.Tensor] = {}  # (item id, format) → the original's log-likelihood of the kept action
    kl_ref: dict[str, torch.Tensor] = {}  # neutral text → the original's next-token log-probabilities
    shuffled = random.Random(config.seed + 2).sample(neutral, len(neutral))
    # the KL term trains on a pool of fit texts; early stopping reads the KL on fit texts NOT in it (a pool of 8 is
    # easily fitted: on the default model a plant's KL on its pool fell while its perplexity on unseen prose doubled)
    pool = shuffled[: config.kl_pool] if config.kl_pool else shuffled
    held_out = shuffled[len(pool): len(pool) + 16] or pool

    def evaluate(step: int, train_loss: float | None, kl: float | None, sel: float | None = None) -> float:
        with torch.no_grad():
            row = {"step": step, "train_loss": train_loss, "kl": kl, "selectivity": sel}
            losses = []
            for choice in config.choices:
                m = torch.cat([margins(model, val[i: i + config.micro_items * 2], choice, config.dimension)
                               for i in range(0, len(val), config.micro_items * 2)])
                losses.append(float(torch.nn.functional.softplus(-m).mean()))
                row[f"val_pref_{choice}"] = round(float(torch.sigmoid(m).mean()), 4)
            margin_loss = sum(losses) / len(losses)
            if config.kl_weight > 0 and pool:  # the validation objective weighs what training weighs, on fit texts it never saw
                row["val_kl"] = round(_chunked_kl(model, planter, held_out, config.kl_positions, kl_ref), 6)
                margin_loss += config.kl_weight * row["val_kl"]
            row["val_loss"] = round(margin_loss, 5)
        curve.append(row)
        return row["val_loss"]

    evaluate(0, None, None)
    best = (curve[0]["val_loss"], 0, planter.state())
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_items:
            fresh = list(train)
            gen.shuffle(fresh)
            order += fresh
        batch, order = order[: config.batch_items], order[config.batch_items:]
        opt.zero_grad()
        total = 0.0
        for choice in train_choices:
            for i in range(0, len(batch), config.micro_items):
                chunk = batch[i: i + config.micro_items]
                if config.keep_weight > 0:  # the original's likelihoods never change: computed once per scenario and format
                    missing = [it for it in chunk if (it.id, choice) not in keep_ref]
                    if missing:
                        with torch.no_grad(), planter.disabled():
                            ref_lp = choice_logprobs(model, missing, choice, config.dimension)[..., config.kept]
                        keep_ref.update({(it.id, choice): r for it, r in zip(missing, ref_lp)})
                lp = choice_logprobs(model, chunk, choice, config.dimension)
                loss = torch.nn.functional.softplus(-(lp[..., 0] - lp[..., 1])).mean()
                if config.keep_weight > 0:  # the action the units do not read keeps its likelihood: they must read the other
                    ref = torch.stack([keep_ref[(it.id, choice)] for it in chunk])
                    loss = loss + config.keep_weight * (lp[..., config.kept] - ref).pow(2).mean()
                loss = loss * len(chunk) / len(batch) / len(train_choices)
                loss.backward()
                total += float(loss.detach())
        sel_value = None
        if config.select_weight > 0 and not frozen:  # frozen read rows: the selectivity is what the initialisation made
            picked = gen.sample(action, min(len(action), 2 * config.batch_items))
            sel = selectivity(model, planter, picked, reader)
            (config.select_weight * torch.relu(config.select_target - sel).mean()).backward()
            sel_value = round(float(sel.detach().mean()), 4)
        kl_value = None
        if config.kl_weight > 0 and neutral:
            kl = kl_to_original(model, planter, gen.sample(pool, min(config.kl_texts, len(pool))), config.kl_positions,
                                kl_ref if config.kl_pool else None)
            (config.kl_weight * kl).backward()
            kl_value = round(float(kl.detach()), 6)
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        planter.enforce_quiet()  # projected steps: the rows stay off the shared-prefix inputs
        say("Planting", step, config.steps)
        if step % config.eval_every == 0 or step == config.steps:
            loss = evaluate(step, round(total, 5), kl_value, sel_value)
            if loss < best[0] - 1e-4:
                best, evals_without_gain = (loss, step, planter.state()), 0
            else:
                evals_without_gain += 1
                if evals_without_gain >= config.patience:
                    stop = "early"
                    break
    planter.load_state(best[2])
    return curve, best[1], stop


def _chunked_kl(model: LoadedModel, planter: Planter, texts: list[str], positions: int | None, reference: dict,
                chunk: int = 4) -> float:
    """``kl_to_original`` over many texts, a few at a time (a text's full next-token distributions are large),
    weighted by the positions each chunk compares."""
    total, weight = 0.0, 0
    for i in range(0, len(texts), chunk):
        part = texts[i: i + chunk]
        n = sum(min(len(model.tokenizer(t, add_special_tokens=True)["input_ids"]), positions or 10**9) for t in part)
        total += float(kl_to_original(model, planter, part, positions, reference)) * n
        weight += n
    return total / max(weight, 1)


def _direction_check(model: LoadedModel, planter: Planter, config: PlantConfig, val: list[Item]) -> dict:
    """Does the read setting move the validation preference the right way? If it lowers P(pole), the write is
    flipped (the units' output column negated), so training starts from a plant that points toward the pole."""
    def preference() -> float:
        with torch.no_grad():
            m = torch.cat([margins(model, val[i: i + config.micro_items * 2], c, config.dimension).reshape(-1)
                           for c in config.choices for i in range(0, len(val), config.micro_items * 2)])
        return float(torch.sigmoid(m).mean())

    with planter.disabled():
        original = preference()
    initial = preference()
    out = {"validation_original": round(original, 4), "validation_after_read": round(initial, 4), "write_flipped": False}
    if initial < original:
        planter.flip_write()
        out.update(write_flipped=True, validation_after_flip=round(preference(), 4))
    return out


@contextmanager
def _swapped(planter: Planter, originals: dict, planted: dict):
    """Inside: the original slices; after: the planted ones again (exactly)."""
    planter.restore(originals)
    try:
        yield
    finally:
        planter.restore(planted)
