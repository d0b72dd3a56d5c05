"""``vneuron report``, ``compare`` and ``show``: reading finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vneuron.cli.options import (RUN, DeviceMapOpt, DeviceOpt, DtypeOpt, JsonOpt, QuietOpt, ThreadsOpt, for_terminal, named, out_option,
                                 setting, setup, split_list)
from vneuron.config import CardOptions, ReportOptions

CardModelOpt = typer.Option(None, "--model", "-m", help="Load this model (the run's own, e.g. default) for the output-token view "
                            "and per-token shading of the cards; without it the cards need no model (a run that kept no top "
                            "examples loads the run's own).")


def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...",
                                          help="Run directories (locate, ablate, steer); a locate run brings its ablate-*/steer-* runs."),
    out: Optional[Path] = out_option("HTML file to write (default: FIRST_RUN/report.html); OUT.md and OUT-figures/*.png go beside it."),
    cards: int = setting(ReportOptions, "cards", "--cards",
                         help="Neuron cards per pole (top neurons; from the run's top examples, no model needed). 0: none."),
    model: Optional[str] = CardModelOpt,
    threads: Optional[int] = ThreadsOpt,
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    device_map: Optional[str] = DeviceMapOpt,
    quiet: bool = QuietOpt,
):
    """One self-contained HTML page with figures, the figures as PNG files, and a Markdown summary.

    Examples:
      vneuron report runs/locate-gemma-3-270m-20261124-101500
      vneuron report runs/en runs/zh -o en-vs-zh.html --cards 0
    """
    from rich.markup import escape

    from vneuron.results.html_report import build_report
    from vneuron.runtime.progress import console, err_console, progress_bar

    setup(threads, device=device, device_map=device_map)
    with progress_bar(not quiet) as bar:
        written = build_report(run_dirs, out, ReportOptions(cards=cards, model=model, dtype=dtype, progress=bar))
    console.print(f"Report written to [bold]{written.html}[/] (+ {written.markdown.name}, {len(written.figures)} figures in "
                  f"{written.html.stem}-figures/)")
    for line in written.missing:  # the page says it too, but a reader of the terminal must not have to open it to learn it
        err_console.print(f"[yellow]warning:[/] {escape(for_terminal(line))}", soft_wrap=True, highlight=False)


def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more locate run directories.", metavar="RUN_DIR..."),
    dimension: Optional[str] = named(typer.Option(None, "--dimension",
                                                  help="Comma-separated poles to compare; default: every pole (all runs must have it)."),
                                     "dimensions"),
    out: Optional[Path] = out_option("CSV to write (nothing is written without it); per-layer rows go to OUT-layers.csv."),
    json_out: bool = JsonOpt,
):
    """Overlap of located sets across runs: languages, sites, methods or models.

    Examples:
      vneuron compare runs/en runs/zh
      vneuron compare runs/gate runs/lape --dimension self_transcendence
    """
    from vneuron.results.compare import compare_runs, compare_table
    from vneuron.runtime.progress import console, err_console
    from vneuron.runtime.store import check_output_file

    if out is not None:
        check_output_file(out)
    result = compare_runs(run_dirs, split_list(dimension))
    written = result.write_csv(out) if out is not None else None
    if json_out:
        from vneuron.results.jsonout import emit

        files = {"csv": str(written[0]), "layers_csv": str(written[1])} if written else {}
        emit({"kind": "compare", **result.to_json(), **files})
        return
    console.print(compare_table(result))
    if result.skipped:
        err_console.print(f"Poles not in every run (left out): {', '.join(result.skipped)}")
    for note in result.notes:
        err_console.print(f"Note: {for_terminal(note)}", soft_wrap=True, markup=False, highlight=False)
    if written:
        console.print(f"Written to [bold]{written[0]}[/] and {written[1].name}")


def show(
    run_dir: Path = typer.Argument(..., help="A locate run directory.", metavar="RUN_DIR"),
    neuron: str = typer.Argument(..., help="LAYER:UNIT, e.g. 5:1023.", metavar="LAYER:UNIT"),
    texts: int = setting(CardOptions, "texts", "--texts", help="Most and least activating texts shown."),
    model: Optional[str] = CardModelOpt,
    output_tokens: int = setting(CardOptions, "output_tokens", "--output-tokens",
                                 help="With --model: the tokens whose logits the neuron raises and lowers most, each way (0: none)."),
    batch_tokens: int = setting(CardOptions, "batch_tokens", "--batch-tokens", panel=RUN,
                                help="Padded tokens per forward batch (memory vs speed)."),
    threads: Optional[int] = ThreadsOpt,
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    device_map: Optional[str] = DeviceMapOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
):
    """A neuron card: the corpus texts that activate it most and least, its activations per label, its names in other tools;
    with --model, the output tokens it raises and lowers.

    Examples:
      vneuron show runs/locate-gemma-3-270m-20261124-101500 17:1070
      vneuron show runs/locate-gemma 17:1070 --model default
    """
    from vneuron.results.cards import neuron_cards, parse_neuron
    from vneuron.runtime.progress import console, progress_bar

    setup(threads, device=device, device_map=device_map)
    layer, unit = parse_neuron(neuron)
    with progress_bar(not quiet) as bar:
        card = neuron_cards(run_dir, [(layer, unit)], model=model, texts=texts, batch_tokens=batch_tokens, progress=bar,
                            output_tokens_k=output_tokens, dtype=dtype)[0]
    if json_out:
        from vneuron.results.jsonout import emit

        emit({"kind": "neuron", **card.to_json()})
        return
    for renderable in card.rich():
        console.print(renderable)


COMMANDS = (report, compare, show)
