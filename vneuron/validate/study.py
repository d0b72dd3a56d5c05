"""``ablate`` and ``steer``: edit each pole's located neurons, and matched random controls, and measure value
orientation (forced choice, PVQ, generations) before and after, with side effects and the cross-value matrix beside.

A study is prepared before any model loads (``prepare_study``: every check that needs no model, for all poles
at once), then runs pole by pole; each finished pole is kept in the run's checkpoint
(``vneuron.runtime.checkpoint``), so an interrupted study continues where it stopped. The statistics against
the controls: ``vneuron.validate.controls``; the items: ``vneuron.validate.items``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from vneuron.config import EDIT_MODES, STEER_GAMMAS, STEER_MODES, LocateConfig, ValidateConfig
from vneuron.data.schema import OPPOSITE, Item
from vneuron.data.templates import choice_template, pvq_template
from vneuron.errors import VneuronError, call
from vneuron.locate.runs import LocateRun
from vneuron.locate.scoring import NeuronSet
from vneuron.models.loading import LoadedModel, load_model
from vneuron.runtime import budget, threads
from vneuron.runtime.checkpoint import Checkpoint
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.store import (MANIFEST, base_manifest, check_fresh, check_space, set_filename, settings_tag, write_csv, write_json,
                                   write_jsonl, write_run)
from vneuron.validate.baselines import Arms, check_directions, csv_rows
from vneuron.validate.controls import computed, control_seed, sequential_controls, summarize
from vneuron.validate.edits import Edit, edit_from_stats
from vneuron.validate.evaluate import LowerLayers, generate
from vneuron.validate.items import Evaluation, evaluation_items, items_for, poles_for
from vneuron.validate.specificity import Beside, Unedited, beside_count, prompts_of

Progress = Callable[[str, int, int], None]


def locate_first(model: LoadedModel | str | None = None, config: LocateConfig | None = None, *, out: str | Path | None = None,
                 progress: Progress | None = None, remote=None, dtype: str | None = None,
                 device: str | None = None) -> tuple[Path, LoadedModel | str | None]:
    """Ablate or steer without a locate run: locate with ``config`` first (its run is kept).

    Returns (run directory, model): a local model is loaded once and serves both steps. ``out``
    (the study's output) is checked before the locate run, so a bad one fails first. ``dtype``:
    what the model computes in (``load_model``).
    """
    from vneuron.locate.locating import locate, prepare_corpus

    say = progress or (lambda stage, done, total: None)
    if out is not None:
        claim(out)  # only whether another command writes there: the study claims it when it starts
        check_fresh(Path(out), fix="choose another `out`, or delete that directory to redo the study")
    config = (config or LocateConfig()).check()
    if not remote:
        prepare_corpus(config)  # a bad corpus fails before the model loads
        if not isinstance(model, LoadedModel):
            model = load_model(model, dtype=dtype, progress=lambda m: say(m, 0, 0), device=device)
    return locate(model, config, dtype=dtype, progress=say, remote=remote).run_dir, model


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


@dataclass
class Study:
    """What a study works on, known before the model loads; ``loaded`` once it has (``open_study``)."""

    run: LocateRun
    config: ValidateConfig  # the caller's, with what the run decides filled in (its template)
    poles: list[str]
    evaluation: Evaluation
    out: Path
    judge: Any = None  # the generation judge (`judge`), built and checked against the poles and languages
    loaded: LoadedModel | None = None
    kept: Checkpoint | None = None  # where the study's finished parts are kept (``checkpoint``)
    baselines: dict = field(default_factory=dict)  # the direction baselines' setup (``baselines.check_directions``)

    @property
    def items(self) -> list[Item]:
        return self.evaluation.items

    def neurons(self, pole: str) -> NeuronSet:
        """The located set of ``pole`` as the study edits it (its top `top_k`)."""
        located = self.run.sets[pole]
        return located if self.config.top_k is None else located.top(self.config.top_k)

    def opposite(self, pole: str) -> str | None:
        return opposite_of(self.run, pole)

    def edit(self, neurons: NeuronSet, pole: str, gamma: float | None = None) -> Edit:
        """The study's edit of ``neurons`` for ``pole`` (at dose ``gamma``: a point of a sweep; None: the config's)."""
        config = self.config if gamma is None else replace(self.config, gamma=gamma)
        return edit_for(self.run, neurons, pole, config)

    def control(self, neurons: NeuronSet, pole: str, n: int, gamma: float | None = None) -> Edit:
        """The n-th matched random control of ``neurons`` (same count per layer), edited as the located set is."""
        return self.edit(neurons.random_matched(control_seed(self.config.seed, n)), pole, gamma)

    def manifest(self, kind: str, started: float, work, beside: Beside, summaries: list[dict], **extra) -> dict[str, Any]:
        return {**base_manifest(kind), "locate_run": str(self.run.path), "model": self.loaded.manifest(),
                "evaluation": self.evaluation.data, **extra, "config": asdict(self.config),
                "timings": {"total_s": round(time.time() - started, 1), "stages": budget.stage_report()},  # this process's stages
                "threads": threads.describe(), "work": work.report(), **beside.describe(), "results": summaries}

    def by_pole(self, checkpoint: Checkpoint, measure: Callable[[str], dict], say) -> Iterator[dict]:
        """Each pole's record, in order: kept from an interrupted run, or measured now and kept at once."""
        for pole in self.poles:
            done = checkpoint.pieces.get(pole)
            if done is None:
                done = measure(pole)
                checkpoint.forget_memos(f"{pole}: ")  # the record holds what its parts made
                checkpoint.put(pole, done)
            else:  # finished before an interruption: nothing computed is lost
                say(f"{pole}: kept from the interrupted run", 1, 1)
            yield done

    def checkpoint(self) -> Checkpoint:
        """Where the finished poles, and the finished parts of the pole under way (the unedited items, the value
        shift's sets, each round of side effects, each matrix column), are kept until the study is written:
        continued by a rerun with the same settings."""
        key = {"config": asdict(self.config), "run": str(self.run.path), "revision": self.loaded.revision,
               "dtype": self.loaded.extra.get("dtype")}
        self.kept = Checkpoint.open(self.out, key, what="study")
        return self.kept

    def memo(self, prefix: str) -> Callable[[str, Callable[[], Any]], Any]:
        """``memo(name, compute)`` for the parts of a step (``Checkpoint.memo``), named after it."""
        if self.kept is None:
            return computed
        return lambda name, compute: self.kept.memo(f"{prefix}{name}", compute)


def prepare_study(run, config: ValidateConfig, out=None, kind: str = "ablate", extra: dict | None = None) -> Study:
    """Every check of an ablation or a steering sweep that needs no model, for all poles at once: the run's
    files, the poles, the evaluation items of every pole, `top_k` against the located sets, the judge (its
    spec, and that it reads these poles and languages), the output directory and its disk. ``--dry-run``
    makes exactly these checks before it plans. Neither ``run`` nor ``config`` is changed."""
    run = run if isinstance(run, LocateRun) else LocateRun.open(run)
    if config.template is None:  # the template the run located with
        config = replace(config, template=run.template())
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
    if config.top_k is not None:
        smallest = min(len(run.sets[p]) for p in poles)
        if config.top_k > smallest:
            raise VneuronError(f"`top_k` {config.top_k} is more than the run located ({smallest} neurons in its smallest set)",
                               f"pick 1..{smallest}, or re-select more into a new run and study that: "
                               + call("locate", from_run=run.path, top_k=config.top_k, out="NEW_RUN"))
    if out:
        out = Path(out)
    else:  # every setting that changes the result is in the name, so different studies never collide
        settings = {k: v for k, v in asdict(config).items() if k != "batch_tokens" and not (k == "dtype" and v is None)}
        tag = settings_tag({**settings, **(extra or {}), "poles": poles})
        on = "-on-" + set_filename(evaluation.data["name"]).removesuffix(".safetensors") if config.eval_dataset else ""
        out = run.path / f"{kind}-{config.mode}-k{config.top_k or 'all'}{on}-{tag}"
    if judge is not None:  # a pole or language the judge cannot read fails before any work
        judge.check([(p, opposite_of(run, p)) for p in poles], sorted({i.language for i in evaluation.items}))
    baselines = check_directions(run, config)  # a bad direction layer, or one a run cannot have, fails before the model loads
    claim(out)  # within ablate or steer: held until they end; in a dry run: only whether another command writes there
    check_fresh(out, fix="choose another `out`, or delete that directory to redo the study")
    check_space(out, 1 << 20)
    return Study(run, config, poles, evaluation, out, judge, baselines=baselines)


def open_study(run, config: ValidateConfig, model, remote, say, out, kind: str, extra: dict | None = None) -> Study:
    """What ablate and steer share: the prepared study (checked before the model loads), then the run's model."""
    study = prepare_study(run, config, out, kind, extra)
    study.loaded = model_for(study.run, model, say, remote, study.config.dtype)
    return study


@one_writer
def ablate(run: str | Path | LocateRun, config: ValidateConfig | None = None, *, model: LoadedModel | str | None = None,
           out: str | Path | None = None, progress: Progress | None = None, remote=None) -> ValidationResult:
    """Edit each pole's located neurons (and matched random controls) and measure forced choice."""
    config = (config or ValidateConfig()).check_ablation()
    work = budget.reset()
    inventory = None
    if config.pvq:  # a bad questionnaire fails before the model loads
        from vneuron.data import load_inventory

        inventory = load_inventory(config.pvq)
    say = progress or (lambda stage, done, total: None)
    study = open_study(run, config, model, remote, say, out, "ablate")
    config, loaded, run = study.config, study.loaded, study.run
    started = time.time()
    summaries, item_rows, control_rows, samples, side_rows = [], [], [], [], []
    checkpoint = study.checkpoint()
    # per item list, once: a pole's items are also another pole's matrix column
    unedited = Unedited(loaded, config, study.memo(""))
    beside = Beside(loaded, config, study.items, study.judge, select=items_for, unedited=unedited)
    arms = Arms(study, beside, say) if study.baselines.get("on") else None
    for done in study.by_pole(checkpoint, lambda pole: _ablate_pole(study, pole, inventory, beside, say, arms), say):
        summaries.append(done["summary"])
        item_rows += done["item_rows"]
        control_rows += done["control_rows"]
        samples += done["samples"]
        side_rows += done["side_rows"]
    manifest = study.manifest("ablate", started, work, beside, summaries, directions=study.baselines)

    def write(directory: Path) -> None:
        write_json(directory / MANIFEST, manifest)
        write_csv(directory / "items.csv", item_rows)
        write_csv(directory / "controls.csv", control_rows)
        beside.write(directory, side_rows, summaries)
        direction_rows = [row for s in summaries for row in csv_rows(s)]
        if direction_rows:
            write_csv(directory / "directions.csv", direction_rows)
        if samples:
            write_jsonl(directory / "generations.jsonl", samples)

    write_run(study.out, write, what="ablation results")
    checkpoint.clear()
    return ValidationResult(study.out, manifest, summaries)


def _ablate_pole(study: Study, pole: str, inventory, beside: Beside, say, arms: Arms | None = None) -> dict[str, Any]:
    """One pole of an ablation: its value shift against sequential controls, PVQ, side effects, the cross-value row,
    the direction baselines (``arms``) and generations; returned as the record the checkpoint keeps and the run's files are written from."""
    config, loaded = study.config, study.loaded
    items = items_for(study.items, pole, config.limit)
    if not items:
        raise VneuronError(f"No evaluation items touch {pole!r} in split {config.split!r}", "use `split` all")
    neurons = study.neurons(pole)
    base = beside.unedited(items, progress=lambda d, t: say(f"{pole}: unedited items", d, t)).toward(pole)
    edit = study.edit(neurons, pole)
    tail = config.tail or EDIT_MODES[config.mode].tail(config.gamma)
    stage = f"{pole}: value shift, located {len(neurons)} and random controls (sets; up to {config.controls}, sequential)"
    located, controls, rule = sequential_controls(loaded, items, pole, base, edit, lambda n: study.control(neurons, pole, n), tail,
                                                  config, LowerLayers(), lambda done, total: say(stage, done, total),
                                                  memo=study.memo(f"{pole}: value shift "),
                                                  reads=arms.readings.get(pole) if arms is not None else None)
    seeds = [control_seed(config.seed, n) for n in range(len(controls))]
    summary = summarize(pole, base, located, controls, items, config, tail)
    summary.update(rule.report())
    summary["neurons"] = len(neurons)
    if inventory:
        summary["pvq"] = _pvq_shift(loaded, inventory, edit, [study.control(neurons, pole, n) for n in range(len(controls))],
                                    config, say, pole)
    item_rows = [{"dimension": pole, "item": item.id, "item_pole": item.dimension, "baseline": round(float(base[n]), 6),
                  "after": round(float(located[n]), 6),
                  "controls_mean": round(float(torch.stack(controls)[:, n].mean()), 6) if controls else ""}
                 for n, item in enumerate(items)]
    control_rows = [{"dimension": pole, "seed": seed, "effect": round(float((c - base).mean()), 6)} for seed, c in zip(seeds, controls)]
    extra = [study.control(neurons, pole, n) for n in range(beside_count(len(controls), config))]
    beside.own = ([i.id for i in items], base, located, controls)
    side_rows = beside.measure(summary, pole, items, edit, extra, say, memo=study.memo(f"{pole}: "))
    if arms is not None:
        summary["directions"] = arms.ablate(pole, items, base, edit, tail, summary)
    samples = []
    if config.generations:
        samples = (beside.generations(summary, pole, study.opposite(pole), items[: config.generations], edit, extra, say)
                   if study.judge else _samples(loaded, items[: config.generations], edit, pole, config))
    return {"summary": summary, "item_rows": item_rows, "control_rows": control_rows, "samples": samples, "side_rows": side_rows}


@one_writer
def steer(run: str | Path | LocateRun, gammas: Sequence[float] = STEER_GAMMAS, config: ValidateConfig | None = None, *,
          model: LoadedModel | str | None = None, out: str | Path | None = None, progress: Progress | None = None,
          remote=None) -> ValidationResult:
    """Dose–response: orientation toward each pole as its located neurons are scaled (or boosted) by γ."""
    config = (config or ValidateConfig(mode=STEER_MODES[0])).check_steering()
    if not gammas:
        raise VneuronError("No `gammas` to steer with", "pass e.g. 0,0.5,1,2,4")
    gammas = [float(g) for g in gammas]
    say = progress or (lambda stage, done, total: None)
    study = open_study(run, config, model, remote, say, out, "steer", {"gammas": gammas})
    started = time.time()
    work = budget.reset()
    rows, summaries, side_rows, samples = [], [], [], []
    checkpoint = study.checkpoint()
    beside = Beside(study.loaded, study.config, study.items, study.judge, unedited=Unedited(study.loaded, study.config, study.memo("")))
    arms = Arms(study, beside, say) if study.baselines.get("on") else None
    for done in study.by_pole(checkpoint, lambda pole: _steer_pole(study, pole, gammas, beside, say, arms), say):
        summaries.append(done["summary"])
        rows += done["rows"]
        side_rows += done["side_rows"]
        samples += done["samples"]
    manifest = study.manifest("steer", started, work, beside, summaries, gammas=gammas, directions=study.baselines)

    def write(directory: Path) -> None:
        write_json(directory / MANIFEST, manifest)
        write_csv(directory / "dose_response.csv", rows)
        beside.write(directory, side_rows, [])
        direction_rows = [row for s in summaries for point in s["curve"] for row in csv_rows({**point, "dimension": s["dimension"]},
                                                                                              point["gamma"])]
        if direction_rows:
            write_csv(directory / "directions.csv", direction_rows)
        if samples:
            write_jsonl(directory / "generations.jsonl", samples)

    write_run(study.out, write, what="steering results")
    checkpoint.clear()
    return ValidationResult(study.out, manifest, summaries)


def _steer_pole(study: Study, pole: str, gammas: list[float], beside: Beside, say, arms: Arms | None = None) -> dict[str, Any]:
    """One pole of a sweep: at each γ the located set against sequential controls, side effects, the mean-difference
    direction of the same size (``arms``) and generations."""
    config, loaded = study.config, study.loaded
    items = items_for(study.items, pole, config.limit)
    neurons = study.neurons(pole)
    base = beside.unedited(items, progress=lambda d, t: say(f"{pole}: unedited items", d, t)).toward(pole)
    rows, side_rows, samples, curve = [], [], [], []
    reuse = LowerLayers()  # one layer profile for every γ and control: the layers below it run once
    for g, gamma in enumerate(gammas):
        tail = EDIT_MODES[config.mode].tail(gamma)
        edit = study.edit(neurons, pole, gamma)
        located, ctrl, rule = sequential_controls(loaded, items, pole, base, edit, lambda n: study.control(neurons, pole, n, gamma),
                                                  tail, config, reuse,
                                                  lambda d, t, g=gamma: say(f"{pole}: γ = {g:g}, located and controls (sets)", d, t),
                                                  memo=study.memo(f"{pole}: γ = {gamma:g}, value shift "),
                                                  reads=arms.readings.get(pole) if arms is not None else None)
        say(f"{pole}: γ sweep", g + 1, len(gammas))
        s = summarize(pole, base, located, ctrl, items, replace(config, gamma=gamma), tail)
        s.update(rule.report())
        s["gamma"] = gamma
        extra = [study.control(neurons, pole, n, gamma) for n in range(beside_count(len(ctrl), config))]
        side_rows += [{"gamma": gamma, **row} for row in beside.measure(s, pole, items, edit, extra, say,
                                                                         memo=study.memo(f"{pole}: γ = {gamma:g}, "))]
        if arms is not None:
            s["directions"] = arms.steer(pole, items, base, edit, tail, s, gamma)
        if config.generations and study.judge:
            samples += [{"gamma": gamma, **row}
                        for row in beside.generations(s, pole, study.opposite(pole), items[: config.generations], edit, extra, say)]
        curve.append(s)
        rows.append({"dimension": pole, "gamma": gamma, "baseline": round(s["baseline"], 6), "after": round(s["after"], 6),
                     "effect": round(s["effect"], 6), "control_effect": round(s.get("control_effect", float("nan")), 6),
                     "effect_minus_control": round(s.get("effect_minus_control", float("nan")), 6),
                     "controls_drawn": s["controls_drawn"], "p_sequential": round(s["p_sequential"], 6),
                     **beside.columns(s), **_direction_columns(s)})
    return {"summary": {"dimension": pole, "neurons": len(neurons), "curve": curve}, "rows": rows, "side_rows": side_rows,
            "samples": samples}


def _direction_columns(point: dict) -> dict[str, Any]:
    """dose_response.csv: the mean-difference direction of the same size at this γ, beside the neurons."""
    arm = ((point.get("directions") or {}).get("arms") or {}).get("mean_difference")
    if arm is None:
        return {}
    value = lambda key: "" if arm.get(key) is None else round(float(arm[key]), 6)  # noqa: E731
    return {"direction_alpha": value("alpha"), "direction_effect": value("effect"), "direction_control_effect": value("control_effect"),
            "direction_p_sequential": value("p_sequential")}


@budget.stage("PVQ")
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


def opposite_of(run: LocateRun, pole: str) -> str | None:
    """The pole a run contrasted ``pole`` with (Schwartz's partner when the run does not say)."""
    return dict(map(tuple, run.manifest.get("contrasts", []))).get(pole, OPPOSITE.get(pole))


def _judge_of(config: ValidateConfig):
    """The generation judge named by `judge` (built, and so checked, before any model loads), or None."""
    if not config.judge:
        return None
    from vneuron.validate.judges import make_judge

    return make_judge(config.judge)


def edit_for(run: LocateRun, neurons: NeuronSet, pole: str, config: ValidateConfig) -> Edit:
    gamma = 1.0 if config.gamma is None else config.gamma  # modes without a dose ignore it
    return edit_from_stats(neurons, config.mode, run.stats, gamma=gamma, pole=pole, opposite=opposite_of(run, pole))


@budget.stage("generations")
def _samples(model: LoadedModel, items: list[Item], edit, pole: str, config: ValidateConfig) -> list[dict]:
    prompts = prompts_of(items)
    before = generate(model, prompts, None, max_new_tokens=config.max_new_tokens)
    after = generate(model, prompts, edit, max_new_tokens=config.max_new_tokens)
    return [{"dimension": pole, "item": i.id, "prompt": p, "before": b, "after": a}
            for i, p, b, a in zip(items, prompts, before, after)]
