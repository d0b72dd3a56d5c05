"""Causal validation: ablate or steer located neurons and compare with matched random controls.

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

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vneuron.data import load_corpus
from vneuron.data.schema import ANY, OPPOSITE, PAIR, Item, aggregate_label, expresses, pair_label
from vneuron.validate.edits import edit_from_stats
from vneuron.config import EDIT_MODES, STEER_GAMMAS, STEER_MODES, LocateConfig, ValidateConfig
from vneuron.errors import VneuronError
from vneuron.validate.evaluate import ChoiceResult, LowerLayers, bootstrap_ci, forced_choice, forced_choice_sets, generate
from vneuron.models.loading import LoadedModel, load_model
from vneuron.runtime.store import (MANIFEST, base_manifest, check_fresh, check_space, file_sha256, set_filename, settings_tag,
                                   write_csv, write_json, write_jsonl, write_run)
from vneuron.locate.runs import LocateRun
from vneuron.locate.scoring import NeuronSet
from vneuron.data.templates import choice_template, pvq_template
from vneuron.runtime import budget
from vneuron.runtime import threads
from vneuron.validate.sequential import Sequential
from vneuron.validate.specificity import Beside, beside_count

Progress = Callable[[str, int, int], None]


def locate_first(model: LoadedModel | str | None = None, config: LocateConfig | None = None, *, out: str | Path | None = None,
                 progress: Progress | None = None, remote=None, dtype: str | None = None) -> tuple[Path, LoadedModel | str | None]:
    """Ablate or steer without a locate run: locate with ``config`` first (its run is kept).

    Returns (run directory, model): a local model is loaded once and serves both steps. ``out``
    (the study's output) is checked before the locate run, so a bad one fails first. ``dtype``:
    what the model computes in (``load_model``).
    """
    from vneuron.locate.locating import locate, prepare_corpus

    say = progress or (lambda stage, done, total: None)
    if out is not None:
        check_fresh(Path(out), fix="choose another `out`, or delete that directory to redo the study")
    config = (config or LocateConfig()).check()
    if not remote:
        prepare_corpus(config)  # a bad corpus fails before the model loads
        if not isinstance(model, LoadedModel):
            model = load_model(model, dtype=dtype, progress=lambda m: say(m, 0, 0))
    return locate(model, config, dtype=dtype, progress=say, remote=remote).run_dir, model


def map_labels(items: list[Item], mapping: dict[str, str] | None) -> list[Item]:
    """Rename an outside corpus's pole labels to the run's (theirs → ours).

    A key matches a label ("moral", "Kindness|Wealth") or, for value conflicts, a value name
    ("Kindness"), which renames that value in every conflict holding it.
    """
    if not mapping:
        return list(items)
    used: set[str] = set()
    out = []
    for item in items:
        pair = item.value and item.opposite_value and item.dimension == pair_label(item.value, item.opposite_value)
        if item.dimension not in mapping and item.opposite not in mapping and pair \
                and (item.value in mapping or item.opposite_value in mapping):
            value, other = mapping.get(item.value, item.value), mapping.get(item.opposite_value, item.opposite_value)
            used |= {item.value, item.opposite_value} & set(mapping)
            out.append(replace(item, dimension=pair_label(value, other), opposite=pair_label(other, value),
                               value=value, opposite_value=other))
            continue
        used |= {item.dimension, item.opposite} & set(mapping)
        out.append(replace(item, dimension=mapping.get(item.dimension, item.dimension),
                           opposite=mapping.get(item.opposite, item.opposite)))
    unused = [k for k in mapping if k not in used]
    if unused:
        labels = sorted({l for i in items for l in (i.dimension, i.opposite)})
        raise VneuronError(f"`eval_map` names {', '.join(repr(u) for u in unused)}, which no evaluation item has",
                           f"map labels the data holds: {', '.join(labels[:12])}{' …' if len(labels) > 12 else ''}")
    return out


@dataclass
class Evaluation:
    """The items a study evaluates on, and where they came from (written to the manifest)."""

    items: list[Item]
    data: dict[str, Any]
    labels: list[str] = field(default_factory=list)  # the pole labels as the file has them (before `eval_map`)


def evaluation_items(run: LocateRun, config: ValidateConfig) -> Evaluation:
    """The run's own held-out split, or ``config.eval_dataset`` with its labels mapped to the run's poles."""
    if not config.eval_dataset:
        corpus = run.corpus(config.split)
        data = run.manifest["dataset"]
        spec = Path(data["spec"]) if data.get("spec") and Path(data["spec"]).exists() else None
        return Evaluation(corpus.items, {
            "source": "locate run", "name": corpus.name, "path": data.get("spec") or "builtin",
            "file_sha256": file_sha256(spec) if spec else None, "content_sha256": corpus.content_hash(), "split": config.split,
            "split_source": corpus.split_source,
            "language": data.get("language"), "items": len(corpus.items)}, _labels(corpus.items))
    spec = config.eval_dataset
    path = Path(spec).expanduser()
    if not spec.startswith("hf:") and not path.exists():
        raise VneuronError(f"Evaluation corpus {spec} does not exist",
                           "pass an existing file or directory as `eval_dataset`, or drop it to evaluate on the run's own split")
    corpus = load_corpus(spec, columns=config.eval_columns, test_fraction=config.eval_test_fraction, strict=config.eval_strict)
    corpus = corpus.select(split=config.eval_split)
    if not corpus.items:
        raise VneuronError(f"{spec} has no paired scenarios in split {config.eval_split!r}"
                           + (" (it holds labelled texts)" if corpus.texts else ""),
                           "forced choice needs items with a scenario and two actions (see `vneuron datasets`); "
                           "use `eval_split` all or a paired corpus")
    _check_map_targets(run, config.eval_map)
    items = map_labels(corpus.items, config.eval_map)
    return Evaluation(items, {
        "source": "outside", "name": corpus.name, "path": str(path.resolve()) if path.exists() else spec,
        "file_sha256": file_sha256(path) if path.exists() else None, "content_sha256": corpus.content_hash(),
        "split": config.eval_split, "split_source": corpus.split_source, "columns": config.eval_columns,
        "map": config.eval_map, "items": len(items), "strict": config.eval_strict, "notes": corpus.notes}, _labels(corpus.items))


def _labels(items: list[Item]) -> list[str]:
    return sorted({l for i in items for l in (i.dimension, i.opposite)})


def _check_map_targets(run: LocateRun, mapping: dict[str, str] | None) -> None:
    """`eval_map` may rename labels to the run's poles, their opposites, or a value inside the run's conflict poles."""
    contrasts = [tuple(c) for c in run.manifest.get("contrasts", [])]
    known = set(run.sets) | {b for a, b in contrasts} | {OPPOSITE[p] for p in run.sets if p in OPPOSITE}
    known |= {part for label in known for part in label.split(PAIR) if part != ANY}
    wrong = [v for v in dict.fromkeys((mapping or {}).values()) if v not in known]
    if wrong:
        raise VneuronError(f"`eval_map` maps to {', '.join(repr(w) for w in wrong)}, which the run has no pole for",
                           f"map to the run's poles: {', '.join(run.sets)}")


def items_for(items: list[Item], pole: str, limit: int | None) -> list[Item]:
    """Items on ``pole``'s axis (for a whole-value pole "X|*", every conflict of X); ``limit`` per side."""
    axis = [i for i in items if expresses(i, pole) is not None]
    if limit:
        own = [i for i in axis if expresses(i, pole)][:limit]
        other = [i for i in axis if not expresses(i, pole)][:limit]
        axis = own + other
    return axis


def model_for(run: LocateRun, model: LoadedModel | str | None, say, remote=None, dtype: str | None = None) -> LoadedModel:
    """The run's model (or ``model``, which must be the same), computing in ``dtype`` (None: the run's)."""
    recorded = run.manifest["model"]
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if remote:
            from vneuron.runtime.remote import check_key, resolve_target

            remote = resolve_target(remote)  # True, "local", a URL or a RemoteTarget
            check_key(remote)
        loaded = load_model(model or run.model_spec(), dtype=dtype or recorded.get("dtype", "float32"),
                            progress=lambda m: say(m, 0, 0),
                            remote=remote)
    if loaded.revision != recorded["revision"]:
        raise VneuronError(f"The model ({loaded.source.model_id} {loaded.revision[:24]}) is not the one the run located "
                           f"neurons in ({recorded['model_id']} {recorded['revision'][:24]})", "pass the same `model`")
    return loaded


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


@dataclass
class ValidationResult:
    run_dir: Path
    manifest: dict
    summaries: list[dict] = field(default_factory=list)

    def to_pandas(self):
        """One row per pole (ablate) or per pole and γ (steer) as a DataFrame (needs ``vneuron[pandas]``): scalars as
        columns, each CI as ``_lo``/``_hi``; per-control lists and nested records (side effects, PVQ) stay in the manifest."""
        from vneuron.runtime.frames import flat, pandas

        rows = []
        for summary in self.summaries:
            if "curve" in summary:
                rows += [{"neurons": summary.get("neurons"), **flat(point)} for point in summary["curve"]]
            else:
                rows.append(flat(summary))
        return pandas().DataFrame(rows)


def ablate(run: str | Path | LocateRun, config: ValidateConfig | None = None, *, model: LoadedModel | str | None = None,
           out: str | Path | None = None, progress: Progress | None = None, remote=None) -> ValidationResult:
    """Edit each pole's located neurons (and matched random controls) and measure forced choice."""
    config = (config or ValidateConfig()).check_ablation()
    work = budget.reset()
    inventory = None
    if config.pvq:  # a bad questionnaire fails before the model loads
        from vneuron.data import load_inventory

        inventory = load_inventory(config.pvq)
    say, run, poles, loaded, all_items, out, judge = _study(run, config, model, remote, progress, out, "ablate")
    started = time.time()
    summaries, item_rows, control_rows, samples, side_rows = [], [], [], [], []
    baselines: dict[tuple, ChoiceResult] = {}  # per item list: a pole's items are also another pole's matrix column
    beside = Beside(loaded, config, all_items, judge, select=items_for, baselines=baselines)
    partial = _Partial(out, {"config": asdict(config), "run": str(run.path), "revision": loaded.revision,
                             "dtype": loaded.extra.get("dtype")})
    for pole in poles:
        if pole in partial.poles:  # finished before an interruption: nothing computed is lost
            done = partial.poles[pole]
            summaries.append(done["summary"])
            item_rows += done["item_rows"]
            control_rows += done["control_rows"]
            samples += done["samples"]
            side_rows += done.get("side_rows", [])
            say(f"{pole}: kept from the interrupted run", 1, 1)
            continue
        first_item, first_control, first_sample, first_side = len(item_rows), len(control_rows), len(samples), len(side_rows)
        items = items_for(all_items, pole, config.limit)
        if not items:
            raise VneuronError(f"No evaluation items touch {pole!r} in split {config.split!r}", "use `split` all")
        neurons = run.sets[pole] if config.top_k is None else run.sets[pole].top(config.top_k)
        key = tuple(i.id for i in items)
        if key not in baselines:
            baselines[key] = forced_choice(loaded, items, batch_tokens=config.batch_tokens, choice=config.choice,
                                           template=config.template,
                                           progress=lambda d, t: say(f"{pole}: baseline", d, t))
        base = baselines[key].toward(pole)
        edit = edit_for(run, neurons, pole, config)
        reuse = LowerLayers()  # the located set and its controls share everything below their lowest layer
        seeds = []

        def control_edit(n: int):
            seeds.append(config.seed * 1000 + n)
            return edit_for(run, neurons.random_matched(seeds[-1]), pole, config)

        tail = config.tail or EDIT_MODES[config.mode].tail(config.gamma)
        stage = f"{pole}: located {len(neurons)} and random controls (sets; up to {config.controls}, sequential)"
        located, controls, rule = _sequential(loaded, items, pole, base, edit, control_edit, tail, config, reuse,
                                              lambda done, total: say(stage, done, total))
        summary = summarize(pole, base, located, controls, items, config, tail)
        summary.update(rule.report())
        summary["neurons"] = len(neurons)
        if inventory:
            summary["pvq"] = _pvq_shift(loaded, inventory, edit, [edit_for(run, neurons.random_matched(s), pole, config)
                                                                  for s in seeds], config, say, pole)
        summaries.append(summary)
        for n, item in enumerate(items):
            item_rows.append({"dimension": pole, "item": item.id, "item_pole": item.dimension, "baseline": round(float(base[n]), 6),
                              "after": round(float(located[n]), 6),
                              "controls_mean": round(float(torch.stack(controls)[:, n].mean()), 6) if controls else ""})
        for seed, c in zip(seeds, controls):
            control_rows.append({"dimension": pole, "seed": seed, "effect": round(float((c - base).mean()), 6)})
        extra = [edit_for(run, neurons.random_matched(config.seed * 1000 + n), pole, config)
                 for n in range(beside_count(len(controls), config))]
        beside.own = ([i.id for i in items], base, located, controls)
        side_rows += beside.measure(summary, pole, items, edit, extra, say)
        if config.generations:
            samples.extend(beside.generations(summary, pole, _opposite(run, pole), items[: config.generations], edit, extra, say)
                           if judge else _samples(loaded, items[: config.generations], edit, pole, config))
        partial.add(pole, {"summary": summary, "item_rows": item_rows[first_item:], "control_rows": control_rows[first_control:],
                           "samples": samples[first_sample:], "side_rows": side_rows[first_side:]})
    manifest = {**base_manifest("ablate"), "locate_run": str(run.path), "model": loaded.manifest(), "evaluation": run.evaluation,
                "config": asdict(config), "timings": {"total_s": round(time.time() - started, 1)},
                "threads": threads.describe(), "work": work.report(), **beside.describe(), "results": summaries}

    def write(directory: Path) -> None:
        write_json(directory / MANIFEST, manifest)
        write_csv(directory / "items.csv", item_rows)
        write_csv(directory / "controls.csv", control_rows)
        beside.write(directory, side_rows, summaries)
        if samples:
            write_jsonl(directory / "generations.jsonl", samples)

    write_run(out, write, what="ablation results")
    partial.clear()
    return ValidationResult(out, manifest, summaries)


class _Partial:
    """Per-pole results of an unfinished ablation, beside its output, reused by a rerun."""

    def __init__(self, out: Path, key: dict):
        self.path = out.with_name(f".{out.name}.partial.json")
        self.key, self.poles = key, {}
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("key") != key:
                raise VneuronError(f"{self.path} holds an interrupted ablation with other settings",
                                   "rerun with the same options to continue it, or delete that file")
            self.poles = data["poles"]

    def add(self, pole: str, record: dict) -> None:
        self.poles[pole] = record
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "poles": self.poles}, default=str), encoding="utf-8")
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def steer(run: str | Path | LocateRun, gammas: Sequence[float] = STEER_GAMMAS, config: ValidateConfig | None = None, *,
          model: LoadedModel | str | None = None, out: str | Path | None = None, progress: Progress | None = None,
          remote=None) -> ValidationResult:
    """Dose–response: orientation toward each pole as its located neurons are scaled (or boosted) by γ."""
    config = (config or ValidateConfig(mode=STEER_MODES[0])).check_steering()
    if not gammas:
        raise VneuronError("No `gammas` to steer with", "pass e.g. 0,0.5,1,2,4")
    gammas = [float(g) for g in gammas]
    say, run, poles, loaded, all_items, out, judge = _study(run, config, model, remote, progress, out, "steer", {"gammas": gammas})
    started = time.time()
    work = budget.reset()
    rows, summaries, side_rows, samples = [], [], [], []
    beside = Beside(loaded, config, all_items, judge)
    for pole in poles:
        items = items_for(all_items, pole, config.limit)
        neurons = run.sets[pole] if config.top_k is None else run.sets[pole].top(config.top_k)
        base = forced_choice(loaded, items, batch_tokens=config.batch_tokens, choice=config.choice, template=config.template).toward(pole)
        controls: dict[int, NeuronSet] = {}
        curve = []
        reuse = LowerLayers()  # one layer profile for every γ and control: the layers below it run once
        for g, gamma in enumerate(gammas):
            cfg = ValidateConfig(**{**asdict(config), "gamma": gamma})

            def control_edit(n: int):
                seed = config.seed * 1000 + n
                return edit_for(run, controls.setdefault(seed, neurons.random_matched(seed)), pole, cfg)

            tail = EDIT_MODES[config.mode].tail(gamma)
            located, ctrl, rule = _sequential(loaded, items, pole, base, edit_for(run, neurons, pole, cfg), control_edit,
                                              tail, config, reuse,
                                              lambda d, t, g=gamma: say(f"{pole}: γ = {g:g}, located and controls (sets)", d, t))
            say(f"{pole}: γ sweep", g + 1, len(gammas))
            s = summarize(pole, base, located, ctrl, items, cfg, tail)
            s.update(rule.report())
            s["gamma"] = gamma
            edit = edit_for(run, neurons, pole, cfg)
            extra = [control_edit(n) for n in range(beside_count(len(ctrl), config))]
            for row in beside.measure(s, pole, items, edit, extra, say):
                side_rows.append({"gamma": gamma, **row})
            if config.generations and judge:
                for row in beside.generations(s, pole, _opposite(run, pole), items[: config.generations], edit, extra, say):
                    samples.append({"gamma": gamma, **row})
            curve.append(s)
            rows.append({"dimension": pole, "gamma": gamma, "baseline": round(s["baseline"], 6), "after": round(s["after"], 6),
                         "effect": round(s["effect"], 6), "control_effect": round(s.get("control_effect", float("nan")), 6),
                         "effect_minus_control": round(s.get("effect_minus_control", float("nan")), 6),
                         "controls_drawn": s["controls_drawn"], "p_sequential": round(s["p_sequential"], 6),
                         **beside.columns(s)})
        summaries.append({"dimension": pole, "neurons": len(neurons), "curve": curve})
    manifest = {**base_manifest("steer"), "locate_run": str(run.path), "model": loaded.manifest(), "evaluation": run.evaluation,
                "gammas": gammas,
                "config": asdict(config), "timings": {"total_s": round(time.time() - started, 1)},
                "threads": threads.describe(), "work": work.report(), **beside.describe(), "results": summaries}

    def write(directory: Path) -> None:
        write_json(directory / MANIFEST, manifest)
        write_csv(directory / "dose_response.csv", rows)
        beside.write(directory, side_rows, [])
        if samples:
            write_jsonl(directory / "generations.jsonl", samples)

    write_run(out, write, what="steering results")
    return ValidationResult(out, manifest, summaries)


def _sequential(loaded, items, pole: str, base, edit, control_edit, tail: str, config: ValidateConfig, reuse, progress):
    """The located set and its first controls in one go, then controls one at a time until the
    sequential rule (Besag–Clifford) stops: returns P toward the pole after the located edit, per
    control, and the rule (its report says how many were drawn and why it stopped). ``progress``
    counts edit sets against the most the rule may still draw, so its ETA is an upper bound."""
    rule = Sequential(0.0, tail, config.stop_after, config.controls, extend_to=config.max_controls)
    ceiling = lambda: 1 + max(config.controls, len(controls) + (1 if rule.more() else 0))  # noqa: E731
    progress(0, 1 + config.controls)
    first = forced_choice_sets(loaded, items, [edit] + [control_edit(n) for n in range(rule.first())],
                               batch_tokens=config.batch_tokens, choice=config.choice, template=config.template, reuse=reuse)
    located = first[0].toward(pole)
    rule.effect = float((located - base).mean())
    controls = [r.toward(pole) for r in first[1:]]
    for c in controls:
        rule.add(float((c - base).mean()))
    progress(1 + len(controls), ceiling())
    while rule.more():
        controls.append(forced_choice(loaded, items, control_edit(len(controls)), batch_tokens=config.batch_tokens,
                                      choice=config.choice, template=config.template, reuse=reuse).toward(pole))
        rule.add(float((controls[-1] - base).mean()))
        progress(1 + len(controls), ceiling())
    progress(1 + len(controls), 1 + len(controls))
    return located, controls, rule


def _pvq_shift(model: LoadedModel, inventory, edit, control_edits, config: ValidateConfig, say, pole: str) -> dict:
    """Centred PVQ scores per higher-order dimension: before, after the edit, and under the controls."""
    from vneuron.validate.evaluate import pvq

    language = getattr(inventory[0], "language", "en")
    kw = {"language": language, "batch_tokens": config.batch_tokens, "template": config.pvq_template}
    before = pvq(model, inventory, **kw)
    after = pvq(model, inventory, edit, **kw)
    controls = []
    for n, control in enumerate(control_edits):
        controls.append(pvq(model, inventory, control, **kw).dimensions)
        say(f"{pole}: PVQ under controls", n + 1, len(control_edits))
    mean = {d: sum(c[d] for c in controls) / len(controls) for d in before.dimensions} if controls else {}
    return {"before": before.dimensions, "after": after.dimensions, "controls_mean": mean,
            "values_before": before.values, "values_after": after.values}


def _study(run, config: ValidateConfig, model, remote, progress, out, kind: str, extra: dict | None = None):
    """What ablate and steer share: the run, its poles, the model it located in, the items, the output.

    Everything that can be checked without the model is checked first (``prepare_study``).
    """
    say = progress or (lambda stage, done, total: None)
    study = prepare_study(run, config, out, kind, extra)
    loaded = model_for(study.run, model, say, remote, config.dtype)
    return say, study.run, study.poles, loaded, study.evaluation.items, study.out, study.judge


@dataclass
class Study:
    """What a study works on, known before the model loads."""

    run: LocateRun
    poles: list[str]
    evaluation: Evaluation
    out: Path
    judge: Any = None  # the generation judge (`judge`), built and checked against the poles and languages


def prepare_study(run, config: ValidateConfig, out=None, kind: str = "ablate", extra: dict | None = None) -> Study:
    """Every check of an ablation or a steering sweep that needs no model, for all poles at once: the run's
    files, the poles, the evaluation items of every pole, `top_k` against the located sets, the judge (its
    spec, and that it reads these poles and languages), the output directory and its disk. ``--dry-run``
    makes exactly these checks before it plans."""
    run = run if isinstance(run, LocateRun) else LocateRun.open(run)
    if config.template is None:  # the template the run located with
        config.template = run.template()
    config.check()
    judge = _judge_of(config)  # a malformed judge spec fails first, whatever the data
    if config.pvq:  # a bad questionnaire fails here too
        from vneuron.data import load_inventory

        load_inventory(config.pvq)
    evaluation = evaluation_items(run, config)
    poles = poles_for(run, config, evaluation)
    evaluation.data["template"] = choice_template(config.template).describe()
    if config.pvq:
        evaluation.data["pvq_template"] = pvq_template(config.pvq_template).describe()
    run.evaluation = evaluation.data
    if config.top_k is not None:
        smallest = min(len(run.sets[p]) for p in poles)
        if config.top_k > smallest:
            raise VneuronError(f"`top_k` {config.top_k} is more than the run located ({smallest} neurons in its smallest set)",
                               f"pick 1..{smallest}, or locate more: re-select with `from_run` {run.path} and `top_k` {config.top_k} into "
                               f"a new `out`")
    if out:
        out = Path(out)
    else:  # every setting that changes the result is in the name, so different studies never collide
        settings = {k: v for k, v in asdict(config).items() if k != "batch_tokens" and not (k == "dtype" and v is None)}
        tag = settings_tag({**settings, **(extra or {}), "poles": poles})
        on = "-on-" + set_filename(evaluation.data["name"]).removesuffix(".safetensors") if config.eval_dataset else ""
        out = run.path / f"{kind}-{config.mode}-k{config.top_k or 'all'}{on}-{tag}"
    if judge is not None:  # a pole or language the judge cannot read fails before any work
        judge.check([(p, _opposite(run, p)) for p in poles], sorted({i.language for i in evaluation.items}))
    check_fresh(out, fix="choose another `out`, or delete that directory to redo the study")
    check_space(out, 1 << 20)
    return Study(run, poles, evaluation, out, judge)


def poles_for(run: LocateRun, config: ValidateConfig, evaluation: Evaluation | None = None) -> list[str]:
    # a bare C-voice value ("友善") names its whole-value pole ("友善|*") when the run has one
    poles = [p if p in run.sets or aggregate_label(p) not in run.sets else aggregate_label(p) for p in config.dimensions or run.sets]
    unknown = [p for p in poles if p not in run.sets]
    if unknown:
        raise VneuronError(f"The run has no neuron set for {', '.join(unknown)}", f"use: {', '.join(run.sets)}")
    if evaluation is None:
        return poles
    if not config.eval_dataset:  # the run's own split: every pole asked for needs items there, checked for all at once
        empty = [p for p in poles if not items_for(evaluation.items, p, config.limit)]
        if empty:
            have = [p for p in poles if p not in empty]
            raise VneuronError(f"No evaluation items touch {', '.join(repr(p) for p in empty)} in split {config.split!r}",
                               "use `split` all" + (f", or `dimensions` {','.join(have)}" if have else "")
                               + ", or evaluate on an `eval_dataset` FILE")
        return poles
    covered = [p for p in poles if any(expresses(i, p) is not None for i in evaluation.items)]
    labels = [l for l in evaluation.labels if l not in (config.eval_map or {})] or evaluation.labels
    shown = ", ".join(labels[:8]) + (" …" if len(labels) > 8 else "")
    if not covered or (config.dimensions and len(covered) < len(poles)):
        missing = [p for p in poles if p not in covered]
        raise VneuronError(f"No item of {config.eval_dataset} is on the axis of {', '.join(missing[:6])} (its labels: {shown})",
                           f"map its labels to the run's poles, e.g. `eval_map` {labels[0] if labels else 'theirs'}={missing[0]}")
    evaluation.data["poles"] = covered
    evaluation.data["poles_without_items"] = [p for p in poles if p not in covered]
    return covered


def _opposite(run: LocateRun, pole: str) -> str | None:
    return dict(map(tuple, run.manifest.get("contrasts", []))).get(pole, OPPOSITE.get(pole))


def _judge_of(config: ValidateConfig):
    """The generation judge named by `judge` (built, and so checked, before any model loads), or None."""
    if not config.judge:
        return None
    from vneuron.validate.judges import make_judge

    return make_judge(config.judge)


def edit_for(run: LocateRun, neurons: NeuronSet, pole: str, config: ValidateConfig):
    opposite = _opposite(run, pole)
    gamma = 1.0 if config.gamma is None else config.gamma  # modes without a dose ignore it
    return edit_from_stats(neurons, config.mode, run.stats, gamma=gamma, pole=pole, opposite=opposite)


def _samples(model: LoadedModel, items: list[Item], edit, pole: str, config: ValidateConfig) -> list[dict]:
    prompts = [f"{i.scenario}\nAnswer:" if i.language != "zh" else f"{i.scenario}\n回答：" for i in items]
    before = generate(model, prompts, None, max_new_tokens=config.max_new_tokens)
    after = generate(model, prompts, edit, max_new_tokens=config.max_new_tokens)
    return [{"dimension": pole, "item": i.id, "prompt": p, "before": b, "after": a}
            for i, p, b, a in zip(items, prompts, before, after)]
