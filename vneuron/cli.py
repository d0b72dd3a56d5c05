"""The ``vneuron`` command: thin wrappers that turn options into one library call each."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import VneuronError


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, `--top-k abc`, a missing value) as one `error:` line, exit 2.

    Typer would draw a multi-line box; every other vneuron error is one line, so these are too.
    `--help` and a bare `vneuron` still print the help.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        self._argv = ["vneuron", *args]
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        from .runs import recording_command

        with _one_line_usage_errors(), recording_command(getattr(self, "_argv", ["vneuron"])):
            return super().invoke(ctx)


class _one_line_usage_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        # Typer ≥ 0.20 vendors its own click: take the classes from Typer, not from `import click`.
        usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
        no_args = getattr(sys.modules[usage_error.__module__], "NoArgsIsHelpError", ())
        if not isinstance(exc, usage_error) or isinstance(exc, no_args):
            return False
        from rich.markup import escape

        from .report import err_console

        where = " ".join(["vneuron", *exc.ctx.command_path.split()[1:]]) if exc.ctx is not None else "vneuron"
        message = " ".join(exc.format_message().split()).rstrip(".")
        err_console.print(f"[bold red]error:[/] {escape(message)}. See: {escape(where)} --help", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Find the neurons of a language model that encode human values, and test them causally.",
    rich_markup_mode="rich",
)


def handle_errors(fn):
    """One line and exit code 2 for anything the user can fix; tracebacks only with VNEURON_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from .report import err_console

        try:
            return fn(*args, **kwargs)
        except VneuronError as exc:
            if os.environ.get("VNEURON_DEBUG") == "1":
                raise
            err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/] (nothing half-written was kept)")
            raise typer.Exit(130) from None

    return wrapper


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _pairs(value: Optional[str], sep: str, what: str, example: str) -> Optional[list[tuple[str, str]]]:
    if not value:
        return None
    out = []
    for part in _split_list(value):
        left, found, right = part.partition(sep)
        if not found or not left.strip() or not right.strip():
            raise VneuronError(f"Cannot read {what} {part!r}", f"write it as {example}")
        out.append((left.strip(), right.strip()))
    return out


def _threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise VneuronError(f"--threads must be at least 1, got {threads}")
    from .threads import pick

    pick(threads)  # without --threads (or OMP_NUM_THREADS): the fastest count measured here


def _quiet(quiet: bool) -> None:
    if quiet:
        from .quiet import set_quiet

        set_quiet()


RemoteOpt = typer.Option(False, "--remote", help="Run on NDIF: the weights stay on the server, only reduced tensors come back.")
HostOpt = typer.Option(None, "--host", help="NDIF host URL (default: NDIF_HOST, nnsight's config, or the public NDIF); 'local' simulates the server in-process.")
TimeoutOpt = typer.Option(1800.0, "--timeout", help="Remote: seconds one request may take (queue included).")
TestFractionOpt = typer.Option(0.2, "--test-fraction", help="Data without a split column: the share held out as test, chosen by a hash of each item's id (0: none).")
EvalDatasetOpt = typer.Option(None, "--eval-dataset", help="Evaluate on this corpus (any format vneuron reads) instead of the run's held-out split.")
EvalColumnsOpt = typer.Option(None, "--eval-columns", help="Map our fields to the eval corpus's columns: dilemma=Question,...")
EvalMapOpt = typer.Option(None, "--map", help="Its pole labels (or C-voice values) to the run's poles: theirs=ours,... e.g. moral=self_transcendence.")
EvalSplitOnOpt = typer.Option("all", "--eval-split", help="Which items of --eval-dataset: all, test or train.")
ChoiceTemplateOpt = typer.Option(None, "--template", help="Forced-choice template: third_person, first_person, response, NAME:zh, or a string with {scenario}, {first}, {second}, {option}. Default: the run's.")


def _target(remote: bool, host: Optional[str], timeout: float):
    from .remote import resolve_target

    if not remote and host:
        remote = True
    if not remote:
        return None
    return resolve_target("local" if host == "local" else (host or True), timeout=timeout)


PolesOpt = typer.Option(None, "--dimension", help="Comma-separated poles; default: every pole of the run.")
ControlsOpt = typer.Option(20, help="Random neuron sets with the same per-layer counts (at every γ when steering).")
EvalSplitOpt = typer.Option("test", help="Evaluation items: test (held out), train or all.", metavar="[test|train|all]")
EvalLimitOpt = typer.Option(None, help="At most this many evaluation items per pole side.")
SeedOpt = typer.Option(0, help="Seed of the random controls.")
ChoiceOpt = typer.Option("listed", "--choice", help="Forced choice: listed (both actions shown, both orders) or continuation (each action read after the scenario alone).", metavar="[listed|continuation]")
BatchTokensOpt = typer.Option(4096, help="Padded tokens per forward batch (memory vs speed).")
# evaluation: 1,024-token batches ran 17 % faster per token than 4,096 on a 2-core CPU (interleaved medians,
# benchmarks/ablate.py's machine); GPUs and NDIF prefer larger ones
EvalBatchTokensOpt = typer.Option(1024, "--batch-tokens", help="Padded tokens per forward batch (1,024 is fastest on a small CPU; raise it on a GPU or NDIF).")
ThreadsOpt = typer.Option(None, help="torch CPU threads (default: OMP_NUM_THREADS, else the fastest count measured at start; recorded in the manifest).")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the plan (forward passes, tokens, requests, bytes each way, memory per batch, a time estimate from a one-batch calibration) and exit without writing anything.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")
FirstDatasetOpt = typer.Option(None, "--dataset", "-d", help="Corpus for locating first (no RUN_DIR).")
FirstLanguageOpt = typer.Option("en", help="Corpus language when locating first.")
ModelOpt = typer.Option(None, "--model", "-m", help="Alias (see `vneuron models`), model directory, .gguf file or hub id. Default: the embedded model.")


@app.command()
@handle_errors
def locate(
    model: Optional[str] = ModelOpt,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Corpus file or directory; default: the built-in corpus."),
    columns: Optional[str] = typer.Option(None, help="Map our fields to your columns: text=sentence,label=value_label."),
    contrast: Optional[str] = typer.Option(None, help="Pole:opposite label pairs for non-Schwartz labels, e.g. kind:unkind."),
    dimension: Optional[str] = typer.Option(None, "--dimension", help="Comma-separated poles to rank, e.g. self_transcendence,conservation. Default: all."),
    language: str = typer.Option("en", help="Corpus language (en, zh, all).", metavar="[en|zh|all]"),
    split: str = typer.Option("train", help="Corpus split (train, test, all).", metavar="[train|test|all]"),
    limit: Optional[int] = typer.Option(None, help="At most this many items per dimension (for a quick look)."),
    site: str = typer.Option("gate", help="gate: the activation function's output (the papers' site); down_in: the output projection's input (act·up).", metavar="[gate|down_in]"),
    mode: str = typer.Option("prompt", help="prompt: count the action's tokens; generate: count generated tokens under a value-conditioned prompt (ValueLocate).", metavar="[prompt|generate]"),
    span: str = typer.Option("option", help="Prompt mode: count the action's tokens (option) or the whole prompt (all).", metavar="[option|all]"),
    method: str = typer.Option("delta_p", help="delta_p, mean_diff, cohen_d, welch_t or lape.", metavar="[delta_p|mean_diff|cohen_d|welch_t|lape]"),
    rule: str = typer.Option("top_k", help="top_k (global), per_layer, or valuelocate (max(2000, #{Δp ≥ 0.1})).", metavar="[top_k|per_layer|valuelocate]"),
    top_k: int = typer.Option(200, "--top-k", "-k", help="Neurons to keep per pole (per layer with --rule per_layer)."),
    direction: str = typer.Option("pole", help="pole: higher for the pole; opposite: higher for its opposite; both: |score|.", metavar="[pole|opposite|both]"),
    max_new_tokens: int = typer.Option(32, help="Generate mode: generated tokens counted per prompt."),
    batch_tokens: int = typer.Option(4096, help="Padded tokens per forward batch (memory vs speed)."),
    folds: int = typer.Option(2, help="Folds for the split-half stability estimate (1 turns it off)."),
    null: int = typer.Option(0, help="Label-shuffle null runs: how many neurons pass the cut by chance (each costs one capture)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (default: runs/locate-MODEL-TIME)."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Re-select from a finished run's statistics, without the model, into a new run (--out, or a name beside it); the finished run is never changed."),
    remote: bool = RemoteOpt,
    host: Optional[str] = HostOpt,
    timeout: float = TimeoutOpt,
    request_batches: int = typer.Option(8, help="Remote: forward batches per NDIF request."),
    resume: bool = typer.Option(False, "--resume", help="Remote: continue an interrupted run (needs the same --out)."),
    detach: bool = typer.Option(False, "--detach", help="Remote: submit every request and exit; collect later with --resume."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16.", metavar="[float32|bfloat16|float16]"),
    show: int = typer.Option(10, help="Rows shown per pole."),
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    test_fraction: float = TestFractionOpt,
    template: Optional[str] = typer.Option(None, "--template", help="Prompt mode: how each action follows its scenario — third_person (default: 'The right thing to do is to …' / 我会), first_person, response, NAME:zh, or a template string with {scenario} and {option}."),
    whole_values: bool = typer.Option(False, "--whole-values", help="C-voice: also rank each value against all its conflicts (pole 'X|*'); --dimension X asks for one."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out run (its statistics are reused if the capture settings match)."),
    ctx: typer.Context = None,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the tables' numbers) on stdout instead of tables."),
    dry_run: bool = DryRunOpt,
):
    """Rank the MLP neurons whose activation separates each value pole from its opposite.

    Examples:
      vneuron locate                                  # embedded model, built-in corpus, 4 dimensions
      vneuron locate --dimension self_transcendence --top-k 500 --site down_in
      vneuron locate --mode generate --rule valuelocate
      vneuron locate --from runs/locate-gemma-3-270m-20261124-101500 --method cohen_d --out runs/cohen   # a new run
      vneuron locate --remote --model llama-70b --out runs/llama70b     # on NDIF (NDIF_API_KEY)
      vneuron locate --remote --model llama-70b --out runs/llama70b --resume
    """
    from .locating import LocateConfig
    from .locating import locate as run_locate
    from .report import console, locate_tables, progress_bar

    _threads(threads)
    _quiet(quiet)
    column_map = dict(_pairs(columns, "=", "column mapping", "ours=yours,ours=yours") or [])
    config = LocateConfig(dataset=dataset, columns=column_map or None, contrasts=_pairs(contrast, ":", "contrast", "pole:opposite"), dimensions=_split_list(dimension), language=language, split=split, limit=limit,
                          site=site, mode=mode, span=span, method=method, rule=rule, top_k=top_k, direction=direction,
                          max_new_tokens=max_new_tokens, batch_tokens=batch_tokens, folds=folds,
                          null_shuffles=null, request_batches=request_batches, test_fraction=test_fraction, template=template,
                          whole_values=whole_values)
    if (resume or detach) and out is None:
        raise VneuronError("--resume and --detach need --out", "name the run directory, e.g. --out runs/llama70b")
    if dry_run:
        from .dryrun import locate_plan, render

        with progress_bar(not quiet) as bar:
            plan = locate_plan(model, config.check(), remote=_target(remote, host, timeout), dtype=dtype, progress=bar)
        console.print(render(plan), markup=False, highlight=False, soft_wrap=True)
        return
    from .remote import Detached

    given = _given_options(ctx) if from_run is not None else None
    if force and out is not None and from_run is None and not json_out:  # --json: the manifest says what it replaced
        from .runs import describe_run

        if out.is_dir() and any(out.iterdir()):
            console.print(f"--force: replacing {describe_run(out)} when this run completes")
    try:
        with progress_bar(not quiet) as bar:
            result = run_locate(model, config, out=out, from_run=from_run, dtype=dtype, progress=bar,
                                remote=_target(remote, host, timeout), resume=resume, detach=detach, force=force, given=given)
    except Detached as done:
        if json_out:
            from .jsonout import emit

            emit({"kind": "locate", "detached": str(done)})
            return
        console.print(f"{done}. Collect them with the same command and --resume instead of --detach.")
        return
    if json_out:
        from .jsonout import emit, locate_json

        emit(locate_json(result, top=show))
        return
    for table in locate_tables(result, top=show):
        console.print(table)
    _data_notes(result.manifest.get("dataset", {}))
    console.print(f"Run written to [bold]{result.run_dir}[/]")


def _given_options(ctx) -> set[str]:
    """The options typed on the command line (so --from can refuse the ones it cannot honour)."""
    given = set()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # an enum of click's, or of the click Typer vendors
        if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(next((o for o in param.opts if o.startswith("--")), param.opts[0]))
    return given


def _locate_first(run_dir, model, dataset, top_k, language, say, target=None, test_fraction=0.2, template=None, out=None):
    """`ablate --model M` without a run: locate with defaults first (its run is kept).

    Returns (run directory, model): a local model is loaded once and serves both steps."""
    if run_dir is not None:
        return run_dir, model
    if out is not None:  # an --out that cannot be used fails before the locate run, not after it
        from .runs import check_fresh

        check_fresh(out, fix="choose another --out, or delete that directory to redo the study")
    from .locating import LocateConfig, prepare_corpus
    from .locating import locate as run_locate

    config = LocateConfig(dataset=dataset, language=language, top_k=max(top_k or 200, 1), test_fraction=test_fraction,
                          template=template).check()
    if not target:
        from .models.loading import load_model

        prepare_corpus(config)  # a bad corpus fails before the model loads
        model = load_model(model, progress=lambda m: say(m, 0, 0))
    result = run_locate(model, config, progress=say, remote=target)
    return result.run_dir, model


def _validate_config(dimension, top_k, mode, gamma, controls, split, limit, generations, seed, batch_tokens, pvq=None,
                     choice="listed", eval_dataset=None, eval_columns=None, eval_map=None, eval_split="all", template=None,
                     pvq_template=None, test_fraction=0.2):
    from .validate import ValidateConfig

    return ValidateConfig(dimensions=_split_list(dimension), top_k=top_k, mode=mode, gamma=gamma, controls=controls,
                          split=split, limit=limit, generations=generations, seed=seed, batch_tokens=batch_tokens, pvq=pvq,
                          choice=choice, eval_dataset=eval_dataset,
                          eval_columns=dict(_pairs(eval_columns, "=", "column mapping", "ours=yours,ours=yours") or []) or None,
                          eval_map=dict(_pairs(eval_map, "=", "--map", "theirs=ours,theirs=ours") or []) or None,
                          eval_split=eval_split, template=template, pvq_template=pvq_template, eval_test_fraction=test_fraction)


def _data_notes(data: dict) -> None:
    """What the terminal must say about the data: hash-made splits, pole pairs left without texts."""
    from rich.markup import escape

    from .report import console

    source = data.get("split_source") or {}
    if source.get("kind") == "hash":
        console.print(escape(f"Split: {source['note']} (--test-fraction)"))
    dropped = data.get("dropped_contrasts") or []
    if dropped:
        console.print(escape(f"Skipped {len(dropped)} pole pair(s) with no texts on one side after --split/--limit: "
                             + ", ".join(f"{a}:{b}" for a, b in dropped[:6]) + (" …" if len(dropped) > 6 else "")))


def _evaluation_note(manifest: dict) -> None:
    from rich.markup import escape

    from .report import console

    data = manifest.get("evaluation") or {}
    if not data:
        return
    line = f"Evaluated on {data.get('name')} ({data.get('source')}, split {data.get('split')}, {data.get('items')} items read"
    line += f", template {data.get('template', {}).get('spec')}"
    if data.get("map"):
        line += ", map " + ",".join(f"{k}={v}" for k, v in data["map"].items())
    console.print(escape(line + ")"))
    if data.get("split") != "all":  # how the split was made matters only when one part of the data is read
        _data_notes(data)
    if data.get("poles_without_items"):
        console.print(escape(f"Not evaluated (no items on their axis): {', '.join(data['poles_without_items'])}"))


def _no_dataset_with_run(run_dir, dataset) -> None:
    if run_dir is not None and dataset:
        raise VneuronError(f"--dataset {dataset} names the corpus to locate on, but {run_dir} is already located",
                           f"evaluate the run on it with --eval-dataset {dataset}")


StopAfterOpt = typer.Option(3, "--stop-after", help="Sequential controls (Besag–Clifford): stop drawing once this many are at least as extreme as the located set; 0 draws all --controls.")
RunArg = typer.Argument(None, help="A locate run directory. Without it, --model is located first (built-in corpus).")


@app.command()
@handle_errors
def ablate(
    run_dir: Optional[Path] = RunArg,
    model: Optional[str] = ModelOpt,
    dataset: Optional[str] = FirstDatasetOpt,
    language: str = FirstLanguageOpt,
    dimension: Optional[str] = PolesOpt,
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", help="Edit the top K of each located set (default: the whole set)."),
    mode: str = typer.Option("zero", help="zero, clamp (min(a,0)) or mean (the corpus mean); also scale, set.", metavar="[zero|clamp|mean|scale|set|add]"),
    gamma: float = typer.Option(0.0, help="γ for --mode scale."),
    controls: int = ControlsOpt,
    split: str = EvalSplitOpt,
    limit: Optional[int] = EvalLimitOpt,
    generations: int = typer.Option(0, help="Scenarios whose generations before/after are saved (optional work, batched; off by default)."),
    pvq: Optional[str] = typer.Option(None, "--pvq", help="Also score a questionnaire before/after: PVQ-40 (from a ValueBench copy) or an item,value,key file."),
    seed: int = SeedOpt,
    choice: str = ChoiceOpt,
    batch_tokens: int = EvalBatchTokensOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: RUN_DIR/ablate-MODE-kK-HASH, the hash of the settings)."),
    remote: bool = RemoteOpt,
    host: Optional[str] = HostOpt,
    timeout: float = TimeoutOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    eval_dataset: Optional[str] = EvalDatasetOpt,
    eval_columns: Optional[str] = EvalColumnsOpt,
    eval_map: Optional[str] = EvalMapOpt,
    eval_split: str = EvalSplitOnOpt,
    template: Optional[str] = ChoiceTemplateOpt,
    pvq_template: Optional[str] = typer.Option(None, "--pvq-template", help="PVQ template: third_person (portraits, default), first_person, NAME:zh, or a string with {item} and {answer}."),
    test_fraction: float = TestFractionOpt,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the table's numbers) on stdout instead of the table."),
    stop_after: int = StopAfterOpt,
    dry_run: bool = DryRunOpt,
    tail: Optional[str] = typer.Option(None, "--tail", help="Direction the edit is expected to move P toward the pole: lower (default for switching off) or higher (e.g. neurons that veto their own pole).", metavar="[lower|higher]"),
):
    """Switch located neurons off and measure the shift in value orientation against random controls.

    Examples:
      vneuron ablate runs/locate-gemma-3-270m-20261124-101500 --top-k 200
      vneuron ablate --model smollm2-135m --top-k 200 --mode mean --controls 20
    """
    from .report import ablate_table, console, progress_bar
    from .validate import ablate as run_ablate

    _threads(threads)
    _quiet(quiet)
    _no_dataset_with_run(run_dir, dataset)
    config = _validate_config(dimension, top_k, mode, gamma, controls, split, limit, generations, seed, batch_tokens, pvq, choice,
                              eval_dataset, eval_columns, eval_map, eval_split, template, pvq_template, test_fraction)
    config.stop_after = stop_after
    config.tail = tail
    config.check()
    if dry_run:
        return _dry_run(run_dir, config, "ablate", None, model, _target(remote, host, timeout), quiet)
    with progress_bar(not quiet) as bar:
        target = _target(remote, host, timeout)
        run_dir, model = _locate_first(run_dir, model, dataset, top_k, language, bar, target, test_fraction, template, out)
        result = run_ablate(run_dir, config, model=model, out=out, progress=bar, remote=target)
    if json_out:
        from .jsonout import emit, validation_json

        emit(validation_json(result))
        return
    console.print(ablate_table(result))
    _evaluation_note(result.manifest)
    console.print(f"Results written to [bold]{result.run_dir}[/]")


@app.command()
@handle_errors
def steer(
    run_dir: Optional[Path] = RunArg,
    gamma: str = typer.Option("0,0.5,1,2,4", "--gamma", help="Comma-separated γ values (scale: multiply; add: boost, negative = away)."),
    model: Optional[str] = ModelOpt,
    dataset: Optional[str] = FirstDatasetOpt,
    language: str = FirstLanguageOpt,
    dimension: Optional[str] = PolesOpt,
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", help="Steer the top K of each located set."),
    mode: str = typer.Option("scale", help="scale (a ← γ·a) or add (ValueLocate: a ← a + γ·v·σ(10(Δp−0.15))).", metavar="[scale|add]"),
    controls: int = ControlsOpt,
    split: str = EvalSplitOpt,
    limit: Optional[int] = EvalLimitOpt,
    seed: int = SeedOpt,
    choice: str = ChoiceOpt,
    batch_tokens: int = EvalBatchTokensOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: RUN_DIR/steer-MODE-kK-HASH, the hash of the settings)."),
    remote: bool = RemoteOpt,
    host: Optional[str] = HostOpt,
    timeout: float = TimeoutOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    eval_dataset: Optional[str] = EvalDatasetOpt,
    eval_columns: Optional[str] = EvalColumnsOpt,
    eval_map: Optional[str] = EvalMapOpt,
    eval_split: str = EvalSplitOnOpt,
    template: Optional[str] = ChoiceTemplateOpt,
    test_fraction: float = TestFractionOpt,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the table's numbers) on stdout instead of the table."),
    stop_after: int = StopAfterOpt,
    dry_run: bool = DryRunOpt,
):
    """Dose–response: value orientation as located neurons are amplified or suppressed by γ.

    Examples:
      vneuron steer runs/locate-gemma-3-270m-20261124-101500 --gamma 0,0.5,1,2,4 -k 200
      vneuron steer RUN --mode add --gamma -4,-2,0,2,4 --dimension self_transcendence
    """
    from .report import console, progress_bar, steer_table
    from .validate import steer as run_steer

    _threads(threads)
    _quiet(quiet)
    gammas = [float(g) for g in _split_list(gamma) or []] if _is_numbers(gamma) else None
    if gammas is None:
        raise VneuronError(f"Cannot read --gamma {gamma!r}", "pass numbers separated by commas, e.g. 0,0.5,1,2")
    _no_dataset_with_run(run_dir, dataset)
    config = _validate_config(dimension, top_k, mode, 1.0, controls, split, limit, 0, seed, batch_tokens, None, choice,
                              eval_dataset, eval_columns, eval_map, eval_split, template, None, test_fraction)
    config.stop_after = stop_after
    config.check()
    if dry_run:
        return _dry_run(run_dir, config, "steer", gammas, model, _target(remote, host, timeout), quiet)
    with progress_bar(not quiet) as bar:
        target = _target(remote, host, timeout)
        run_dir, model = _locate_first(run_dir, model, dataset, top_k, language, bar, target, test_fraction, template, out)
        result = run_steer(run_dir, gammas, config, model=model, out=out, progress=bar, remote=target)
    if json_out:
        from .jsonout import emit, validation_json

        emit(validation_json(result))
        return
    console.print(steer_table(result))
    _evaluation_note(result.manifest)
    console.print(f"Results written to [bold]{result.run_dir}[/]")


def _dry_run(run_dir, config, kind, gammas, model, target, quiet) -> None:
    """ablate/steer --dry-run: the plan of an existing locate run's validation."""
    from .dryrun import render, validation_plan
    from .report import console, progress_bar

    if run_dir is None:
        raise VneuronError("--dry-run needs a locate run directory", "locate first (vneuron locate --dry-run plans that step)")
    with progress_bar(not quiet) as bar:
        plan = validation_plan(run_dir, config, kind, gammas, model=model, remote=target, progress=bar)
    console.print(render(plan), markup=False, highlight=False, soft_wrap=True)


def _is_numbers(text: str) -> bool:
    try:
        return bool([float(g) for g in _split_list(text) or []])
    except ValueError:
        return False


@app.command()
@handle_errors
def models(remote: bool = typer.Option(False, "--remote", help="Also ask NDIF which aliases it serves now."),
           host: Optional[str] = HostOpt,
           json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table.")):
    """Model aliases, where their weights come from, and (with --remote/--host) whether NDIF serves them now."""
    from rich.table import Table

    from .models.registry import ALIASES, DEFAULT_ALIAS
    from .report import console

    served = None
    if remote or host:
        from .remote import probe, resolve_target, served_models

        target = resolve_target(host or True)
        found = probe(target.host)
        if not found.get("reachable"):
            raise VneuronError(f"NDIF host {target.host} is unreachable ({found.get('error', 'no answer')})",
                               "check --host / NDIF_HOST and your network")
        served = served_models(found.get("status"))
    table = Table(title="Model aliases", title_justify="left")
    for column in ("alias", "model id", "source", "description") + (("NDIF now",) if served is not None else ()):
        table.add_column(column)
    records = []
    for name, alias in ALIASES.items():
        if name == "default":
            continue
        source = f"packaged ({alias.package})" if alias.package else "hub / NDIF"
        row = [name + (" (default)" if name == DEFAULT_ALIAS else ""), alias.hub_id, source, alias.description]
        records.append({"alias": name, "default": name == DEFAULT_ALIAS, "model_id": alias.hub_id, "source": source,
                        "description": alias.description})
        if served is not None:
            row.append("" if alias.package else served.get(alias.hub_id, "not running"))
            records[-1]["ndif"] = row[-1] or None
        table.add_row(*row)
    if json_out:
        from .jsonout import emit

        emit({"kind": "models", "models": records})
        return
    console.print(table)


@app.command()
@handle_errors
def datasets(json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table.")):
    """Corpora that ship with vneuron (any JSONL/CSV/TSV/XLSX file works too)."""
    from rich.table import Table

    from .data import list_datasets
    from .report import console

    table = Table(title="Datasets", title_justify="left")
    for column in ("name", "languages", "items", "labels", "description"):
        table.add_column(column)
    found = list_datasets()
    if json_out:
        from .jsonout import emit

        emit({"kind": "datasets", "datasets": found})
        return
    for d in found:
        table.add_row(d["name"], ", ".join(d["languages"]), str(d["items"]), ", ".join(d["labels"]), d["description"])
    console.print(table)


@app.command()
@handle_errors
def doctor(remote: bool = typer.Option(False, "--remote", help="Also contact the NDIF host."), host: Optional[str] = HostOpt,
           json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table.")):
    """Versions, installed models, API key presence; with --remote/--host also NDIF reachability and compatibility."""
    from importlib import util

    from .models.registry import ALIASES
    from .remote import api_key, probe, resolve_target
    from .report import console, key_value_table
    from .runs import versions

    rows = [(k, v) for k, v in versions().items()]
    for name in ("gemma-3-270m", "smollm2-135m"):
        alias = ALIASES[name]
        ok = util.find_spec(alias.module) is not None
        rows.append((f"model {name}", "installed" if ok else f"missing — {alias.install}"))
    rows.append(("NDIF API key", "set (NDIF_API_KEY or nnsight config)" if api_key() else "not set — export NDIF_API_KEY=..."))
    target = resolve_target(host or True)
    rows.append(("NDIF host", target.host))
    if not (remote or host):
        rows.append(("reachable", "not checked (pass --remote)"))
        _doctor_out(rows, json_out)
        return
    found = probe(target.host)
    rows.append(("reachable", "yes" if found.get("reachable") else f"no ({found.get('error', 'no answer')})"))
    status = found.get("status")
    server_version = status.get("nnsight_version") or status.get("version") if isinstance(status, dict) else None
    if server_version:
        same = str(server_version).split(".")[:2] == versions()["nnsight"].split(".")[:2]
        rows.append(("server nnsight", f"{server_version} ({'compatible' if same else 'differs from the client: install it'})"))
    _doctor_out(rows, json_out)


def _doctor_out(rows: list[tuple[str, str]], json_out: bool) -> None:
    from .report import console, key_value_table

    if json_out:
        from .jsonout import emit

        emit({"kind": "doctor", "checks": dict(rows)})
    else:
        console.print(key_value_table("vneuron doctor", rows))


# -- report, compare, show, --version (see vneuron/html_report.py, compare.py, cards.py) ---------------
def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"vneuron {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """Find the neurons of a language model that encode human values, and test them causally."""


@app.command()
@handle_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (locate, ablate, steer); a locate run brings its ablate-*/steer-* runs.", metavar="RUN_DIR..."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: FIRST_RUN/report.html); OUT.md and OUT-figures/*.png go beside it."),
    cards: int = typer.Option(1, help="Neuron cards per pole (top neurons; needs the run's model for one forward pass). 0: none."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for the neuron cards (default: the run's own)."),
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
):
    """One self-contained HTML page with figures, the figures as PNG files, and a Markdown summary.

    Examples:
      vneuron report runs/locate-gemma-3-270m-20261124-101500
      vneuron report runs/en runs/zh -o en-vs-zh.html --cards 0
    """
    from .html_report import ReportOptions, build_report
    from .report import console, progress_bar

    _threads(threads)
    with progress_bar(not quiet) as bar:
        written = build_report(run_dirs, out, ReportOptions(cards=cards, model=model, progress=bar))
    console.print(f"Report written to [bold]{written.html}[/] (+ {written.markdown.name}, {len(written.figures)} figures in "
                  f"{written.html.stem}-figures/)")


@app.command()
@handle_errors
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more locate run directories.", metavar="RUN_DIR..."),
    dimension: Optional[str] = typer.Option(None, "--dimension", help="Comma-separated poles to compare; default: every pole (all runs must have it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV to write (default: runs/compare-TIME.csv); per-layer rows go to OUT-layers.csv."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
):
    """Overlap of located sets across runs: languages, sites, methods or models.

    Examples:
      vneuron compare runs/en runs/zh
      vneuron compare runs/gate runs/down_in runs/lape --dimension self_transcendence
    """
    from .compare import compare_runs, compare_table, default_csv
    from .report import console, err_console
    from .runs import check_output_file

    out = out or default_csv()
    check_output_file(out)
    result = compare_runs(run_dirs, _split_list(dimension))
    table_path, layers_path = result.write_csv(out)
    if json_out:
        from .jsonout import emit

        emit({"kind": "compare", **result.to_json(), "csv": str(table_path), "layers_csv": str(layers_path)})
        return
    console.print(compare_table(result))
    if result.skipped:
        err_console.print(f"Poles not in every run (left out): {', '.join(result.skipped)}")
    console.print(f"Written to [bold]{table_path}[/] and {layers_path.name}")


@app.command()
@handle_errors
def show(
    run_dir: Path = typer.Argument(..., help="A locate run directory.", metavar="RUN_DIR"),
    neuron: str = typer.Argument(..., help="LAYER:UNIT, e.g. 5:1023.", metavar="LAYER:UNIT"),
    texts: int = typer.Option(5, help="Most and least activating texts shown."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the run's own)."),
    batch_tokens: int = BatchTokensOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the card."),
):
    """A neuron card: the corpus texts that activate it most and least, its activations per label, its names in other tools.

    Examples:
      vneuron show runs/locate-gemma-3-270m-20261124-101500 17:1070
    """
    from .cards import neuron_cards, parse_neuron
    from .report import console, progress_bar

    _threads(threads)
    layer, unit = parse_neuron(neuron)
    with progress_bar(not quiet) as bar:
        card = neuron_cards(run_dir, [(layer, unit)], model=model, texts=texts, batch_tokens=batch_tokens, progress=bar)[0]
    if json_out:
        from .jsonout import emit

        emit({"kind": "neuron", **card.to_json()})
        return
    for renderable in card.rich():
        console.print(renderable)


# -- positive control: planting and power ---------------------------------------------------------
ReadSpreadOpt = typer.Option(2.0, "--read-spread", help="Spread (sd) of the planted units' read pre-activation over the action tokens.")
ReadQuantileOpt = typer.Option(None, "--read-quantile", help="Share of the other pole's action tokens a unit may fire on (default: split at the midpoint).")
ReadPassesOpt = typer.Option(1, "--read-passes", help="Passes of the read setting: after the first, each layer's read is fitted to what earlier planted layers write.")
ReadContextOpt = typer.Option(None, "--read-context", help="Gated MLPs: the up rows read 'an action, not the scenario' (0 on scenario tokens, this value on actions), so units fire only inside actions.")
MechanismOpt = typer.Option("promote", "--mechanism", metavar="[promote|veto]",
                            help="promote: the planted units read the pole and raise its actions; veto: they read the opposite pole "
                                 "and suppress its actions (located under the opposite's label; switching them off raises P toward it).")


@app.command()
@handle_errors
def plant(
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (must not exist)."),
    model: Optional[str] = ModelOpt,
    dimension: str = typer.Option("self_transcendence", "--dimension", help="The pole the planted model comes to prefer over its opposite."),
    k: int = typer.Option(200, "--k", "-k", help="Neurons to plant."),
    neurons: Optional[Path] = typer.Option(None, "--neurons", help="Plant exactly the neurons of this NeuronSet file instead of K random ones."),
    profile: str = typer.Option("uniform", help="Per-layer profile of random neurons: uniform, random, or one weight per layer (0,0,1,1,...)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Corpus file or directory; default: the built-in corpus."),
    language: str = typer.Option("en", help="Corpus language (en, zh, all)."),
    steps: int = typer.Option(120, help="Optimisation steps at most (early stopping on a validation slice)."),
    lr: float = typer.Option(2e-3, help="Adam learning rate of the planted parameters."),
    batch_items: int = typer.Option(8, help="Scenarios per step."),
    kl_weight: float = typer.Option(1.0, help="Weight of the KL to the original model on neutral text."),
    seed: int = SeedOpt,
    train_limit: Optional[int] = typer.Option(None, help="Training scenarios per pole side (default: the whole train split)."),
    test_limit: Optional[int] = typer.Option(None, help="Test scenarios per side in the before/after report (default: all)."),
    batch_tokens: int = BatchTokensOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    train_choice: Optional[str] = typer.Option(None, "--train-choice", help="Formats optimised each step, comma-separated (default: listed,continuation); both are still validated and reported."),
    eval_every: int = typer.Option(10, help="Steps between validation evaluations (early stopping)."),
    patience: int = typer.Option(3, help="Validation evaluations without improvement before stopping."),
    micro_items: int = typer.Option(2, help="Scenarios per forward pass."),
    val_fraction: float = typer.Option(0.2, help="Share of the training scenarios held out for early stopping."),
    report_limit: Optional[int] = typer.Option(32, help="Train scenarios per side in the before/after report."),
    mechanism: str = MechanismOpt,
    read_spread: float = ReadSpreadOpt,
    read_quantile: Optional[float] = ReadQuantileOpt,
    read_passes: int = ReadPassesOpt,
    read_context: Optional[float] = ReadContextOpt,
):
    """Positive control: plant a preference for one pole into K known neurons, training only their own weights.

    Writes an ordinary model directory (use it with --model DIR in every command); the planted neurons (the ground truth) and a manifest are in DIR/plant/.

    Examples:
      vneuron plant --out runs/planted-st --k 200 --dimension self_transcendence
      vneuron locate --model runs/planted-st --dimension self_transcendence --out runs/planted-st-locate
    """
    from .planting import PlantConfig
    from .planting import plant as run_plant
    from .report import console, progress_bar

    _threads(threads)
    config = PlantConfig(dimension=dimension, dataset=dataset, language=language, k=k, neurons=str(neurons) if neurons else None,
                         profile=profile, seed=seed, steps=steps, lr=lr, batch_items=batch_items, kl_weight=kl_weight,
                         train_limit=train_limit, test_limit=test_limit, batch_tokens=batch_tokens,
                         train_choices=tuple(c.strip() for c in train_choice.split(",") if c.strip()) if train_choice else None,
                         eval_every=eval_every, patience=patience, micro_items=micro_items,
                         val_fraction=val_fraction, report_limit=report_limit, mechanism=mechanism,
                         read_spread=read_spread, read_quantile=read_quantile, read_context=read_context, read_passes=read_passes).check()
    with progress_bar(not quiet) as bar:
        result = run_plant(model, config, out=out, progress=bar)
    pref = result.manifest["preference"]
    for split in ("train", "test"):
        for choice, after in pref["after"][split].items():
            console.print(f"{split:5} {choice:12} P({dimension}) {pref['before'][split][choice]:.3f} → {after:.3f}")
    console.print(f"Planted {len(result.neurons)} neurons (per layer {result.neurons.per_layer()}) in "
                  f"{result.manifest['timings']['total_s']:.0f} s; model written to [bold]{result.out}[/]")


@app.command()
@handle_errors
def power(
    out: Path = typer.Option(..., "--out", "-o", help="Study directory to write (power.csv, layers.csv, manifest.json, runs)."),
    model: Optional[str] = ModelOpt,
    dimension: str = typer.Option("self_transcendence", "--dimension", help="The planted pole."),
    k: str = typer.Option("50,200", "--k", "-k", help="Planted (and located) set sizes, comma-separated."),
    sizes: str = typer.Option("16,64,256", "--sizes", help="Locating scenarios per pole, comma-separated (capped by the corpus)."),
    planted: Optional[str] = typer.Option(None, "--planted", help="Reuse planted models: K=DIR,K=DIR (written by vneuron plant)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Corpus file or directory; default: the built-in corpus."),
    language: str = typer.Option("en", help="Corpus language (en, zh, all)."),
    controls: int = ControlsOpt,
    mode: str = typer.Option("zero", help="Ablation: zero or mean."),
    limit: Optional[int] = EvalLimitOpt,
    choice: str = ChoiceOpt,
    steps: int = typer.Option(120, help="Planting: optimisation steps at most."),
    seed: int = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    mechanism: str = MechanismOpt,
    read_spread: float = ReadSpreadOpt,
    read_quantile: Optional[float] = ReadQuantileOpt,
    read_passes: int = ReadPassesOpt,
    read_context: Optional[float] = ReadContextOpt,
):
    """How many scenarios does locate need? plant → locate → ablate against the known planted neurons.

    Examples:
      vneuron power --out runs/power-st --k 50,200 --sizes 16,64,256
      vneuron power --out runs/power-st --planted 200=runs/planted-st --k 200 --limit 16
    """
    from .planting import PlantConfig
    from .power import PowerConfig
    from .power import power as run_power
    from .power import power_table
    from .report import console, progress_bar

    _threads(threads)

    def ints(text, what):
        try:
            return [int(v) for v in _split_list(text) or []]
        except ValueError:
            raise VneuronError(f"Cannot read {what} {text!r}", "pass whole numbers separated by commas, e.g. 16,64,256") from None

    planted_dirs = {int(a): b for a, b in _pairs(planted, "=", "--planted", "200=runs/planted-st") or []} if planted else None
    config = PowerConfig(dimension=dimension, dataset=dataset, language=language, ks=ints(k, "--k"), sizes=ints(sizes, "--sizes"),
                         controls=controls, mode=mode, choice=choice, eval_limit=limit, seed=seed,
                         plant=PlantConfig(steps=steps, seed=seed, mechanism=mechanism, read_spread=read_spread, read_quantile=read_quantile,
                                           read_passes=read_passes, read_context=read_context).check()).check()
    with progress_bar(not quiet) as bar:
        result = run_power(model, config, out=out, planted_dirs=planted_dirs, progress=bar)
    console.print(power_table(result))
    console.print(f"Written to [bold]{result.out}[/] (power.csv, layers.csv)")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
