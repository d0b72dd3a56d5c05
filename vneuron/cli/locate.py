"""``vneuron locate``: rank the neurons that separate each value pole from its opposite."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vneuron.cli import output
from vneuron.cli.options import (DATA, DryRunOpt, DeviceMapOpt, DeviceOpt, DtypeOpt, HostOpt, JsonOpt, ModelOpt, OUTPUT, QuietOpt, REMOTE,
                                 RemoteOpt, RUN, SELECTION, ThreadsOpt, TimeoutOpt, given_settings, mapping, out_option, pairs, setting,
                                 setup, split_list, target)
from vneuron.config import MEASURES, LocateConfig, choices
from vneuron.errors import VneuronError

L = LocateConfig


def locate(
    model: Optional[str] = ModelOpt,
    dataset: Optional[str] = setting(L, "dataset", "--dataset", "-d", panel=DATA,
                                     help="Corpus file or directory; default: the built-in corpus."),
    columns: Optional[str] = setting(L, "columns", "--columns", panel=DATA,
                                     help="Map our fields to your columns: text=sentence,label=value_label."),
    contrast: Optional[str] = setting(L, "contrasts", "--contrast", panel=DATA,
                                      help="Pole:opposite label pairs for non-Schwartz labels, e.g. kind:unkind."),
    dimension: Optional[str] = setting(L, "dimensions", "--dimension", panel=DATA,
                                       help="Comma-separated poles to rank, e.g. self_transcendence,conservation. Default: all."),
    language: str = setting(L, "language", "--language", panel=DATA, metavar="[en|zh|all]", help="Corpus language."),
    split: str = setting(L, "split", "--split", panel=DATA, metavar="[train|test|all]", help="Corpus split."),
    limit: Optional[int] = setting(L, "limit", "--limit", panel=DATA, help="At most this many items per dimension (for a quick look)."),
    test_fraction: float = setting(L, "test_fraction", "--test-fraction", panel=DATA,
                                   help="Data without a split column: the share held out as test, chosen by a hash of each "
                                        "item's id (0: none)."),
    whole_values: bool = setting(L, "whole_values", "--whole-values", panel=DATA,
                                 help="C-voice: also rank each value against all its conflicts (pole 'X|*'); --dimension X asks for one."),
    strict: bool = setting(L, "strict", "--strict", panel=DATA,
                           help="Refuse a corpus with incomplete rows (an empty required cell); by default they are left out "
                                "and a note names them."),
    site: str = setting(L, "site", "--site", panel=SELECTION, metavar="[gate|down_in]",
                        help="gate: the activation function's output (the papers' site); down_in: the output projection's "
                             "input (act·up)."),
    mode: str = setting(L, "mode", "--mode", panel=SELECTION, metavar="[prompt|generate]",
                        help="prompt: count the action's tokens; generate: count generated tokens under a value-conditioned "
                             "prompt (ValueLocate)."),
    span: str = setting(L, "span", "--span", panel=SELECTION, metavar="[option|all]",
                        help="Prompt mode: count the action's tokens (option) or the whole prompt (all)."),
    template: Optional[str] = setting(L, "template", "--template", panel=SELECTION,
                                      help="Prompt mode: how each action follows its scenario — third_person (default: 'The "
                                           "right thing to do is to …' / 我会), first_person, response, NAME:zh, or a template "
                                           "string with {scenario} and {option}."),
    method: str = setting(L, "method", "--method", panel=SELECTION, metavar=choices(MEASURES),
                          help="; ".join(f"{m.name}: {m.formula}" for m in MEASURES.values()) + "."),
    rule: str = setting(L, "rule", "--rule", panel=SELECTION, metavar="[top_k|per_layer|valuelocate]",
                        help="top_k (the best --top-k over all layers), per_layer (the best --top-k in each layer), or "
                             "valuelocate (max(2000, #{Δp ≥ 0.1}), as ValueLocate's code)."),
    top_k: int = setting(L, "top_k", "--top-k", "-k", panel=SELECTION,
                         help="Neurons to keep per pole (per layer with --rule per_layer)."),
    direction: str = setting(L, "direction", "--direction", panel=SELECTION, metavar="[pole|opposite|both]",
                             help="pole: higher for the pole; opposite: higher for its opposite; both: |score|."),
    max_new_tokens: int = setting(L, "max_new_tokens", "--max-new-tokens", panel=SELECTION,
                                  help="Generate mode: generated tokens counted per prompt."),
    folds: int = setting(L, "folds", "--folds", panel=SELECTION, help="Folds for the split-half stability estimate (1 turns it off)."),
    null: int = setting(L, "null_shuffles", "--null", panel=SELECTION,
                        help="Label-shuffle null runs: how many neurons pass the cut by chance (each costs one capture)."),
    probe_width: int = setting(L, "probe_width", "--probe-width", panel=SELECTION,
                               help="The probes' rows, each prompt's mean residual per layer: exact up to this hidden size, a "
                                    "signed sketch of this width above it (4·prompts·layers·width bytes on disk and from NDIF)."),
    probe_l2: float = setting(L, "probe_l2", "--probe-l2", panel=SELECTION,
                              help="The logistic probe's λ: mean log-loss + λ/2·‖w‖² on z-scored rows. With --from, the "
                                   "probes are refitted from the run's rows."),
    probe_bootstrap: int = setting(L, "probe_bootstrap", "--probe-bootstrap", panel=SELECTION,
                                   help="Bootstrap draws over prompts for the probes' AUROC intervals (with --from: refitted)."),
    from_run: Optional[Path] = typer.Option(None, "--from", rich_help_panel=SELECTION,
                                            help="Re-select from a finished run's statistics, without the model, into a new run "
                                                 "(--out, or a name beside it); the finished run is never changed."),
    remote: bool = RemoteOpt,
    host: Optional[str] = HostOpt,
    timeout: float = TimeoutOpt,
    request_batches: int = setting(L, "request_batches", "--request-batches", panel=REMOTE,
                                   help="Remote: forward batches per NDIF request."),
    resume: bool = typer.Option(False, "--resume", rich_help_panel=RUN,
                                help="Continue an interrupted run: what it counted (or collected from NDIF) is kept beside --out."),
    detach: bool = typer.Option(False, "--detach", rich_help_panel=REMOTE,
                                help="Remote: submit every request and exit; collect later with --resume."),
    batch_tokens: str = setting(L, "batch_tokens", "--batch-tokens", panel=RUN,
                                help="Padded tokens per forward batch, or auto: 4,096 on the CPU, sized from the free memory on a GPU."),
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    device_map: Optional[str] = DeviceMapOpt,
    top_examples: int = setting(L, "top_examples", "--examples", panel=OUTPUT,
                                help="Texts kept per neuron, label and side (most and least activating) for the neuron cards of "
                                     "`vneuron show` and `report` (local runs; 0: none)."),
    threads: Optional[int] = ThreadsOpt,
    dry_run: bool = DryRunOpt,
    out: Optional[Path] = out_option("Run directory to write (default: runs/locate-MODEL-TIME)."),
    force: bool = typer.Option(False, "--force", rich_help_panel=OUTPUT,
                               help="Replace an existing --out run (its statistics are reused if the capture settings match)."),
    show: int = typer.Option(10, "--show", rich_help_panel=OUTPUT, help="Rows shown per pole."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    ctx: typer.Context = None,
):
    """Rank the MLP neurons whose activation separates each value pole from its opposite.

    Examples (the first: embedded model, built-in corpus, 4 dimensions):
      vneuron locate
      vneuron locate --dimension self_transcendence --top-k 500 --site down_in
      vneuron locate --mode generate --rule valuelocate
      vneuron locate --from runs/locate-gemma --method cohen_d --out runs/cohen
      vneuron locate --remote --model llama-70b --out runs/llama70b   # NDIF
      vneuron locate --remote --model llama-70b --out runs/llama70b --resume
    """
    from vneuron.locate.locating import locate as run_locate
    from vneuron.runtime.remote import Detached
    from vneuron.runtime.progress import console, progress_bar
    from vneuron.results.tables import locate_tables

    setup(threads, quiet, device, device_map)
    config = LocateConfig(
        dataset=dataset, columns=mapping(columns, "column mapping", "ours=yours,ours=yours"),
        contrasts=pairs(contrast, ":", "contrast", "pole:opposite"), dimensions=split_list(dimension), language=language,
        split=split, limit=limit, site=site, mode=mode, span=span, method=method, rule=rule, top_k=top_k, direction=direction,
        max_new_tokens=max_new_tokens, batch_tokens=batch_tokens, folds=folds, null_shuffles=null,
        request_batches=request_batches, test_fraction=test_fraction, template=template, whole_values=whole_values,
        top_examples=top_examples, strict=strict, probe_width=probe_width, probe_l2=probe_l2,
        probe_bootstrap=probe_bootstrap)
    if (resume or detach) and out is None:
        raise VneuronError("--resume and --detach need --out", "name the run directory, e.g. --out runs/llama70b")
    if dry_run:
        from vneuron.locate.plan import locate_plan

        if from_run is not None:
            raise VneuronError("--dry-run has nothing to plan with --from: re-selection reads saved statistics and runs no model",
                               "drop --dry-run (re-selection takes seconds)")
        with progress_bar(not quiet) as bar:
            planned = locate_plan(model, config.check(), remote=target(remote, host, timeout), dtype=dtype, progress=bar,
                                  out=out, force=force)
        output.plan(planned, json_out)
        return
    given = given_settings(ctx, locate) if from_run is not None else None
    if force and out is not None and from_run is None and not json_out:  # --json: the manifest says what it replaced
        from vneuron.runtime.store import describe_run, is_run

        if is_run(out):  # anything else is refused, and no line may say it will be replaced
            console.print(f"--force: replacing {describe_run(out)} when this run completes")
    try:
        with progress_bar(not quiet) as bar:
            result = run_locate(model, config, out=out, from_run=from_run, dtype=dtype, progress=bar,
                                remote=target(remote, host, timeout), resume=resume, detach=detach, force=force, given=given)
    except Detached as done:
        if json_out:
            from vneuron.results.jsonout import emit

            emit({"kind": "locate", "detached": str(done)})
            return
        console.print(f"{done}. Collect them with the same command and --resume instead of --detach.")
        return
    if json_out:
        from vneuron.results.jsonout import emit, locate_json

        emit(locate_json(result))
        return
    for table in locate_tables(result, top=show):
        console.print(table)
    output.data_notes(result.manifest.get("dataset", {}))
    console.print(f"Run written to [bold]{result.run_dir}[/]")


COMMANDS = (locate,)
