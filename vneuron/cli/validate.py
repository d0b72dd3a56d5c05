"""``vneuron ablate`` and ``vneuron steer``: edit located neurons beside matched random controls."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vneuron.cli import output
from vneuron.cli.options import (DATA, EVALUATION, RUN, SELECTION, DeviceMapOpt, DeviceOpt, DryRunOpt, DtypeOpt, HostOpt, JsonOpt, ModelOpt,
                                 QuietOpt, RemoteOpt, RunDirArg, ThreadsOpt, TimeoutOpt, joined, mapping, named, numbers, out_option,
                                 setting, setup, split_list, target, with_options)
from vneuron.config import EDIT_MODES, STEER_GAMMAS, STEER_MODES, LocateConfig, ValidateConfig, choices
from vneuron.errors import VneuronError

V = ValidateConfig

# options both commands take
DimensionOpt = setting(V, "dimensions", "--dimension", panel=SELECTION, help="Comma-separated poles; default: every pole of the run.")
ControlsOpt = setting(V, "controls", "--controls", panel=EVALUATION,
                      help="Random neuron sets with the same per-layer counts (at every γ when steering): the most drawn.")
StopAfterOpt = setting(V, "stop_after", "--stop-after", panel=EVALUATION,
                       help="Sequential controls (Besag–Clifford): stop drawing once this many are at least as extreme as "
                            "the located set; 0 draws all --controls.")
SplitOpt = setting(V, "split", "--split", panel=EVALUATION, metavar="[test|train|all]",
                   help="Evaluation items of the run's corpus: test (held out), train or all.")
LimitOpt = setting(V, "limit", "--limit", panel=EVALUATION, help="At most this many evaluation items per pole side.")
SeedOpt = setting(V, "seed", "--seed", panel=EVALUATION, help="Seed of the random controls.")
ChoiceOpt = setting(V, "choice", "--choice", panel=EVALUATION, metavar="[listed|continuation]",
                    help="Forced choice: listed (both actions shown, both orders) or continuation (each action read after "
                         "the scenario alone).")
TemplateOpt = setting(V, "template", "--template", panel=EVALUATION,
                      help="Forced-choice template: third_person, first_person, response, NAME:zh, or a string with "
                           "{scenario}, {first}, {second}, {option}. Default: the run's.")
EvalDatasetOpt = setting(V, "eval_dataset", "--eval-dataset", panel=EVALUATION,
                         help="Evaluate on this corpus (any format vneuron reads) instead of the run's held-out split.")
EvalColumnsOpt = setting(V, "eval_columns", "--eval-columns", panel=EVALUATION,
                         help="Map our fields to the eval corpus's columns: dilemma=Question,...")
EvalMapOpt = setting(V, "eval_map", "--map", panel=EVALUATION,
                     help="Its pole labels (or C-voice values) to the run's poles: theirs=ours,... e.g. moral=self_transcendence.")
EvalSplitOpt = setting(V, "eval_split", "--eval-split", panel=EVALUATION, metavar="[all|test|train]",
                       help="Which items of --eval-dataset: all, test or train.")
StrictOpt = setting(V, "eval_strict", "--strict", panel=DATA,
                    help="Refuse incomplete rows (an empty required cell) in --eval-dataset, or in --dataset when locating "
                         "first; by default they are left out and a note names them.")
TestFractionOpt = setting(V, "eval_test_fraction", "--test-fraction", panel=DATA,
                          help="Data without a split column: the share held out as test, chosen by a hash of each item's id.")
BatchTokensOpt = setting(V, "batch_tokens", "--batch-tokens", panel=RUN,
                         help="Padded tokens per forward batch, or auto: 1,024 on the CPU (the fastest measured on 2 cores), "
                              "sized from the free memory on a GPU.")
MaxControlsOpt = setting(V, "max_controls", "--max-controls", panel=EVALUATION,
                         help="A located set ahead of all --controls keeps drawing up to this many (p can reach 1/(N+1), "
                              "0.005 at 200); --controls or less: never.")
SideEffectsOpt = setting(V, "side_effects", "--side-effects/--no-side-effects", panel=EVALUATION,
                         help="KL and perplexity on neutral prose and a factual/grammatical forced choice, for the located set "
                              "and its controls, and a verdict.")
NeutralOpt = setting(V, "neutral", "--neutral", panel=EVALUATION,
                     help="Your own neutral text for the side effects: one passage a line, and/or prompt<TAB>right<TAB>wrong "
                          "lines (default: the built-in EN/ZH corpus).")
SideControlsOpt = setting(V, "side_controls", "--side-controls", panel=EVALUATION,
                          help="Side effects: at least this many controls (every one drawn, if more); the cross-value matrix: "
                               "the value controls drawn, at most this many.")
GenerationsOpt = setting(V, "generations", "--generations", panel=EVALUATION,
                         help="Scenarios whose generations before/after are saved (and judged with --judge); off by default.")
JudgeOpt = setting(V, "judge", "--judge", panel=EVALUATION,
                   help="Score the generations' orientation: touche (offline classifier), openai:MODEL@URL or model:SPEC[@ndif] "
                        "(an LLM with a rubric).")
JudgeControlsOpt = setting(V, "judge_controls", "--judge-controls", panel=EVALUATION,
                           help="Controls whose generations are made and judged too.")
DirectionsOpt = setting(V, "directions", "--directions/--no-directions", panel=EVALUATION,
                        help="Direction baselines beside the neurons: the pole's mean-difference direction at one layer, added "
                             "with α matched to the neuron edit's size, against random directions; on when the run has "
                             "residual means.")
DirectionLayerOpt = setting(V, "direction_layer", "--direction-layer", panel=EVALUATION,
                            help="The layer the direction baselines edit (default: where the pole's held-out mean-difference "
                                 "probe reads it best).")
DirectionControlsOpt = setting(V, "direction_controls", "--direction-controls", panel=EVALUATION,
                               help="Random directions per direction baseline (same layer, α and mode), drawn sequentially "
                                    "like --controls: the most drawn (and at most --controls). Default: as many as the "
                                    "neurons' value shift drew (at least --stop-after, at most 9).")
FirstDatasetOpt = setting(LocateConfig, "dataset", "--dataset", "-d", panel=DATA, help="Corpus for locating first (no RUN_DIR).")
FirstLanguageOpt = setting(LocateConfig, "language", "--language", panel=DATA, help="Corpus language when locating first.")


# what both commands take, declared once
STUDY_OPTIONS = {
    "model": (Optional[str], ModelOpt),
    "dataset": (Optional[str], FirstDatasetOpt),
    "language": (str, FirstLanguageOpt),
    "test_fraction": (float, TestFractionOpt),
    "strict": (bool, StrictOpt),
    "dimension": (Optional[str], DimensionOpt),
    "controls": (int, ControlsOpt),
    "stop_after": (int, StopAfterOpt),
    "max_controls": (int, MaxControlsOpt),
    "side_effects": (bool, SideEffectsOpt),
    "neutral": (Optional[str], NeutralOpt),
    "side_controls": (int, SideControlsOpt),
    "generations": (int, GenerationsOpt),
    "judge": (Optional[str], JudgeOpt),
    "judge_controls": (int, JudgeControlsOpt),
    "directions": (bool, DirectionsOpt),
    "direction_layer": (Optional[int], DirectionLayerOpt),
    "direction_controls": (Optional[int], DirectionControlsOpt),
    "split": (str, SplitOpt),
    "limit": (Optional[int], LimitOpt),
    "seed": (int, SeedOpt),
    "choice": (str, ChoiceOpt),
    "template": (Optional[str], TemplateOpt),
    "eval_dataset": (Optional[str], EvalDatasetOpt),
    "eval_columns": (Optional[str], EvalColumnsOpt),
    "eval_map": (Optional[str], EvalMapOpt),
    "eval_split": (str, EvalSplitOpt),
    "remote": (bool, RemoteOpt),
    "host": (Optional[str], HostOpt),
    "timeout": (float, TimeoutOpt),
    "batch_tokens": (str, BatchTokensOpt),
    "threads": (Optional[int], ThreadsOpt),
    "dtype": (Optional[str], DtypeOpt),
    "device": (Optional[str], DeviceOpt),
    "device_map": (Optional[str], DeviceMapOpt),
    "dry_run": (bool, DryRunOpt),
    "json_out": (bool, JsonOpt),
    "quiet": (bool, QuietOpt),
}
EVALUATION_SETTINGS = ("dtype", "controls", "stop_after", "split", "limit", "seed", "choice", "template", "eval_dataset",
                       "eval_split", "batch_tokens", "max_controls", "side_effects", "neutral", "side_controls", "generations",
                       "judge", "judge_controls", "directions", "direction_layer",
                       "direction_controls")


def _config(study: dict, **settings) -> ValidateConfig:
    """The ValidateConfig of a command's options."""
    return ValidateConfig(dimensions=split_list(study["dimension"]),
                          eval_columns=mapping(study["eval_columns"], "column mapping", "ours=yours,ours=yours"),
                          eval_map=mapping(study["eval_map"], "--map", "theirs=ours,theirs=ours"),
                          eval_test_fraction=study["test_fraction"], eval_strict=study["strict"],
                          **{k: study[k] for k in EVALUATION_SETTINGS}, **settings)


def _run(kind: str, run_dir, config: ValidateConfig, top_k, out, study: dict, gammas=None) -> None:
    """What ablate and steer share: a dry run, or locate-first, the study and its printout."""
    from vneuron.results.direction_tables import directions_table
    from vneuron.results.tables import ablate_table, cross_table, steer_side_table, steer_table
    from vneuron.runtime.progress import console, progress_bar
    from vneuron.validate.study import ablate, locate_first, steer

    remote = target(study["remote"], study["host"], study["timeout"])
    model, dataset = study["model"], study["dataset"]
    if study["dry_run"]:
        from vneuron.validate.plan import validation_plan

        if run_dir is None:
            raise VneuronError("--dry-run needs a locate run directory", "locate first (vneuron locate --dry-run plans that step)")
        with progress_bar(not study["quiet"]) as bar:
            planned = validation_plan(run_dir, config, kind, gammas, model=model, remote=remote, progress=bar, out=out)
        output.plan(planned, study["json_out"])
        return
    if run_dir is not None and dataset:
        raise VneuronError(f"--dataset {dataset} names the corpus to locate on, but {run_dir} is already located",
                           f"evaluate the run on it with --eval-dataset {dataset}")
    with progress_bar(not study["quiet"]) as bar:
        if run_dir is None:  # locate first, with the same model
            first = LocateConfig(dataset=dataset, language=study["language"], top_k=max(top_k or LocateConfig.top_k, 1),
                                 test_fraction=study["test_fraction"], template=study["template"], strict=study["strict"])
            run_dir, model = locate_first(model, first, out=out, progress=bar, remote=remote, dtype=study["dtype"])
        if kind == "ablate":
            result = ablate(run_dir, config, model=model, out=out, progress=bar, remote=remote)
        else:
            result = steer(run_dir, gammas, config, model=model, out=out, progress=bar, remote=remote)
    if study["json_out"]:
        from vneuron.results.jsonout import emit, validation_json

        emit(validation_json(result))
        return
    console.print(ablate_table(result) if kind == "ablate" else steer_table(result))
    matrix = cross_table(result) if kind == "ablate" else steer_side_table(result)
    if matrix is not None:
        console.print(matrix)
    baselines = directions_table(result)
    if baselines is not None:
        console.print(baselines)
    output.direction_note(result.manifest)
    output.evaluation_note(result.manifest)
    output.guard_notes(result)
    console.print(f"Results written to [bold]{result.run_dir}[/]")


@with_options(STUDY_OPTIONS)
def ablate(
    run_dir: Optional[Path] = RunDirArg,
    top_k: Optional[int] = setting(V, "top_k", "--top-k", "-k", panel=SELECTION,
                                   help="Edit the top K of each located set (default: the whole set)."),
    mode: str = setting(V, "mode", "--mode", panel=SELECTION, metavar=choices(EDIT_MODES),
                        help="; ".join(f"{m.name}: {m.formula}" for m in EDIT_MODES.values()) + "."),
    gamma: Optional[float] = setting(V, "gamma", "--gamma", panel=SELECTION,
                                     help=f"γ for --mode {' and '.join(STEER_MODES)} (needed there)."),
    tail: Optional[str] = setting(V, "tail", "--tail", panel=SELECTION, metavar="[lower|higher]",
                                  help="Direction the edit is expected to move P toward the pole: lower (default for switching "
                                       "off) or higher (e.g. neurons that veto their own pole)."),
    cross_values: bool = setting(V, "cross_values", "--cross-values/--no-cross-values", panel=EVALUATION,
                                 help="Also evaluate each located set on the items of every other value or axis (the cross-value "
                                      "matrix; with the same controls)."),
    matrix_items: Optional[int] = setting(V, "matrix_items", "--matrix-items", panel=EVALUATION,
                                          help="The cross-value matrix: at most N items per other column (default: every "
                                               "item; each cell's CI shows what fewer cost), so many values cost a bounded "
                                               "multiple of the value shift."),
    projected_out: bool = setting(V, "projected_out", "--projected-out/--no-projected-out", panel=EVALUATION,
                                  help="A third direction baseline: the pole's direction projected out of the residual "
                                       "stream (its own size, not the neurons' budget), against its own random directions."),
    direction_matrix: bool = setting(V, "direction_matrix", "--direction-matrix/--no-direction-matrix", panel=EVALUATION,
                                     help="Also run each direction baseline on the cross-value matrix's columns against its "
                                          "random directions: its leakage ratio beside the neurons' (a matrix per arm)."),
    pvq: Optional[str] = setting(V, "pvq", "--pvq", panel=EVALUATION,
                                 help="Also score a questionnaire before/after: PVQ-40 (from a ValueBench copy) or an "
                                      "item,value,key file."),
    pvq_template: Optional[str] = setting(V, "pvq_template", "--pvq-template", panel=EVALUATION,
                                          help="PVQ template: third_person (portraits, default), first_person, NAME:zh, or a "
                                               "string with {item} and {answer}."),
    out: Optional[Path] = out_option("Output directory (default: RUN_DIR/ablate-MODE-kK-HASH, the hash of the settings)."),
    **study,
):
    """Switch located neurons off and measure the shift in value orientation against random controls.

    Examples:
      vneuron ablate runs/locate-gemma-3-270m-20261124-101500 --top-k 200
      vneuron ablate --model smollm2-135m --top-k 200 --mode mean --controls 20
    """
    setup(study["threads"], study["quiet"], study["device"], study["device_map"])
    config = _config(study, top_k=top_k, mode=mode, gamma=gamma, tail=tail, cross_values=cross_values, pvq=pvq,
                     pvq_template=pvq_template, matrix_items=matrix_items, projected_out=projected_out,
                     direction_matrix=direction_matrix).check_ablation()
    _run("ablate", run_dir, config, top_k, out, study)


@with_options(STUDY_OPTIONS)
def steer(
    run_dir: Optional[Path] = RunDirArg,
    gamma: str = named(typer.Option(joined(STEER_GAMMAS), "--gamma", rich_help_panel=SELECTION,
                                    help="Comma-separated γ values (scale: multiply, 1 = unedited; add: boost, negative = away)."),
                       "gammas"),
    top_k: Optional[int] = setting(V, "top_k", "--top-k", "-k", panel=SELECTION, help="Steer the top K of each located set."),
    mode: str = typer.Option(STEER_MODES[0], "--mode", metavar=choices(STEER_MODES), rich_help_panel=SELECTION,
                             help="; ".join(f"{m}: {EDIT_MODES[m].formula}" for m in STEER_MODES) + "."),
    out: Optional[Path] = out_option("Output directory (default: RUN_DIR/steer-MODE-kK-HASH, the hash of the settings)."),
    **study,
):
    """Dose–response: value orientation as located neurons are amplified or suppressed by γ.

    Examples:
      vneuron steer runs/locate-gemma --gamma 0,0.5,1,2,4 -k 200
      vneuron steer RUN --mode add --gamma -4,0,4 --dimension self_transcendence
    """
    setup(study["threads"], study["quiet"], study["device"], study["device_map"])
    gammas = numbers(gamma, "--gamma")
    config = _config(study, top_k=top_k, mode=mode).check_steering()
    _run("steer", run_dir, config, top_k, out, study, gammas)


COMMANDS = (ablate, steer)
