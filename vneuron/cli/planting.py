"""``vneuron plant`` and ``vneuron power``: the positive control, and the power it measures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vneuron.cli.options import (DATA, EVALUATION, RUN, SELECTION, TRAINING, DeviceMapOpt, DeviceOpt, DtypeOpt, ModelOpt, QuietOpt,
                                 ThreadsOpt, joined, named, numbers, out_option, pairs, setting, setup, split_list, with_options)
from vneuron.config import PlantConfig, PowerConfig

P, W = PlantConfig, PowerConfig

# the planted units' reads: one definition for both commands
ReadSpreadOpt = setting(P, "read_spread", "--read-spread", panel=TRAINING,
                        help="Spread (sd) of the planted units' read pre-activation over the action tokens.")
ReadQuantileOpt = setting(P, "read_quantile", "--read-quantile", panel=TRAINING,
                          help="Share of the other pole's action tokens a unit may fire on (default: split at the midpoint).")
ReadPassesOpt = setting(P, "read_passes", "--read-passes", panel=TRAINING,
                        help="Passes of the read setting: after the first, each layer's read is fitted to what earlier "
                             "planted layers write.")
ReadContextOpt = setting(P, "read_context", "--read-context", panel=TRAINING,
                         help="Gated MLPs: the up rows read 'an action, not the scenario' (0 on scenario tokens, this value "
                              "on actions), so units fire only inside actions.")
ReadBackgroundOpt = setting(P, "read_background", "--read-background", panel=TRAINING,
                            help="Share of ordinary prose tokens (the fit prose, its first tokens apart) on which a unit's gate "
                                 "may read above threshold: what keeps the plant from firing on every text.")
MechanismOpt = setting(P, "mechanism", "--mechanism", panel=TRAINING, metavar="[promote|veto]",
                       help="promote: the planted units read the pole and raise its actions; veto: they read the opposite "
                            "pole and suppress its actions (located under the opposite's label; switching them off raises P "
                            "toward it).")
# what both commands take, declared once
PLANT_OPTIONS = {
    "model": (Optional[str], ModelOpt),
    "mechanism": (str, MechanismOpt),
    "read_spread": (float, ReadSpreadOpt),
    "read_quantile": (Optional[float], ReadQuantileOpt),
    "read_passes": (int, ReadPassesOpt),
    "read_context": (Optional[float], ReadContextOpt),
    "read_background": (Optional[float], ReadBackgroundOpt),
    "threads": (Optional[int], ThreadsOpt),
    "dtype": (Optional[str], DtypeOpt),
    "device": (Optional[str], DeviceOpt),
    "device_map": (Optional[str], DeviceMapOpt),
    "quiet": (bool, QuietOpt),
}
READ_SETTINGS = ("mechanism", "read_spread", "read_quantile", "read_passes", "read_context", "read_background")
LanguageOpt = setting(P, "language", "--language", panel=DATA, help="Corpus language (en, zh, all).")
DatasetOpt = setting(P, "dataset", "--dataset", "-d", panel=DATA, help="Corpus file or directory; default: the built-in corpus.")


@with_options(PLANT_OPTIONS)
def plant(
    out: Path = out_option("Model directory to write (must not exist).", required=True),
    dimension: str = setting(P, "dimension", "--dimension", panel=DATA,
                             help="The pole the planted model comes to prefer over its opposite."),
    dataset: Optional[str] = DatasetOpt,
    language: str = LanguageOpt,
    train_limit: Optional[int] = setting(P, "train_limit", "--train-limit", panel=DATA,
                                         help="Training scenarios per pole side (default: the whole train split)."),
    test_limit: Optional[int] = setting(P, "test_limit", "--test-limit", panel=DATA,
                                        help="Test scenarios per side in the before/after report (default: all)."),
    report_limit: Optional[int] = setting(P, "report_limit", "--report-limit", panel=DATA,
                                          help="Train scenarios per side in the before/after report."),
    k: int = setting(P, "k", "--k", "-k", panel=SELECTION, help="Neurons to plant."),
    neurons: Optional[Path] = setting(P, "neurons", "--neurons", panel=SELECTION,
                                      help="Plant exactly the neurons of this NeuronSet file instead of K random ones."),
    profile: str = setting(P, "profile", "--profile", panel=SELECTION,
                           help="Per-layer profile of random neurons: uniform, random, or one weight per layer (0,0,1,1,...)."),
    seed: int = setting(P, "seed", "--seed", panel=SELECTION, help="Seed of the neuron choice and the training order."),
    steps: int = setting(P, "steps", "--steps", panel=TRAINING, help="Optimisation steps at most (early stopping on a validation slice)."),
    lr: float = setting(P, "lr", "--lr", panel=TRAINING, help="Adam learning rate of the planted parameters."),
    batch_items: int = setting(P, "batch_items", "--batch-items", panel=TRAINING, help="Scenarios per step."),
    micro_items: int = setting(P, "micro_items", "--micro-items", panel=TRAINING, help="Scenarios per forward pass."),
    kl_weight: float = setting(P, "kl_weight", "--kl-weight", panel=TRAINING,
                               help="Weight of the KL to the original model on neutral text."),
    train_choice: Optional[str] = setting(P, "train_choices", "--train-choice", panel=TRAINING,
                                          help="Formats optimised each step, comma-separated (default: listed,continuation); "
                                               "both are still validated and reported."),
    eval_every: int = setting(P, "eval_every", "--eval-every", panel=TRAINING,
                              help="Steps between validation evaluations (early stopping)."),
    patience: int = setting(P, "patience", "--patience", panel=TRAINING,
                            help="Validation evaluations without improvement before stopping."),
    val_fraction: float = setting(P, "val_fraction", "--val-fraction", panel=TRAINING,
                                  help="Share of the training scenarios held out for early stopping."),
    batch_tokens: int = setting(P, "batch_tokens", "--batch-tokens", panel=RUN, help="Padded tokens per forward batch (memory vs speed)."),
    target: Optional[float] = setting(P, "target", "--target", panel=TRAINING,
                                      help="Scale the planted write until the validation preference is this (e.g. 0.7; default: as "
                                           "trained)."),
    neutral: Optional[Path] = setting(P, "neutral", "--neutral", panel=DATA,
                                      help="Neutral prose the plant is checked on: perplexity and KL before/after (default: the "
                                           "built-in check prose)."),
    fit_neutral: Optional[Path] = setting(P, "fit_neutral", "--fit-neutral", panel=DATA,
                                          help="Neutral prose the plant is fitted on: the KL term and the reads' background "
                                               "(default: the built-in fit prose, disjoint from the check prose)."),
    **shared,
):
    """Positive control: plant a preference for one pole into K known neurons, training only their own weights.

    Writes an ordinary model directory (use it with --model DIR in every command); the planted neurons (the ground
    truth) and a manifest are in DIR/plant/.

    Examples:
      vneuron plant --out runs/planted-st --k 200 --dimension self_transcendence
      vneuron locate --model runs/planted-st --out runs/planted-st-locate
    """
    from vneuron.planting import plant as run_plant
    from vneuron.runtime.progress import console, progress_bar

    setup(shared["threads"], device=shared["device"], device_map=shared["device_map"])
    reads = {k: shared[k] for k in READ_SETTINGS}
    config = PlantConfig(dimension=dimension, dataset=dataset, language=language, k=k, neurons=str(neurons) if neurons else None,
                         profile=profile, seed=seed, steps=steps, lr=lr, batch_items=batch_items, kl_weight=kl_weight,
                         train_limit=train_limit, test_limit=test_limit, batch_tokens=batch_tokens,
                         train_choices=tuple(split_list(train_choice)) if train_choice else None,
                         eval_every=eval_every, patience=patience, micro_items=micro_items,
                         val_fraction=val_fraction, report_limit=report_limit, target=target,
                         neutral=str(neutral) if neutral else None, fit_neutral=str(fit_neutral) if fit_neutral else None,
                         **reads).check()
    with progress_bar(not shared["quiet"]) as bar:
        result = run_plant(shared["model"], config, out=out, progress=bar, dtype=shared["dtype"])
    pref = result.manifest["preference"]
    for split in ("train", "test"):
        for choice, after in pref["after"][split].items():
            console.print(f"{split:5} {choice:12} P({dimension}) {pref['before'][split][choice]:.3f} → {after:.3f}")
    side = result.manifest.get("side_effects") or {}
    if side:
        console.print(f"neutral prose (every position): perplexity {side['ppl_before']:.2f} → {side['ppl_after']:.2f} "
                      f"(× {side['ppl_ratio']:.3f}), KL {side['kl_all_positions']:.3f} nats/position "
                      f"(after BOS {side['kl_first_prediction']:.3f}); "
                      f"non-value pairs {side.get('task_acc_before', float('nan')):.2f} → {side.get('task_acc_after', float('nan')):.2f}")
    console.print(f"Planted {len(result.neurons)} neurons (per layer {result.neurons.per_layer()}) in "
                  f"{result.manifest['timings']['total_s']:.0f} s; model written to [bold]{result.out}[/]")


@with_options(PLANT_OPTIONS)
def power(
    out: Path = out_option("Study directory to write (power.csv, layers.csv, manifest.json, runs).", required=True),
    dimension: str = setting(W, "dimension", "--dimension", panel=DATA, help="The planted pole."),
    dataset: Optional[str] = setting(W, "dataset", "--dataset", "-d", panel=DATA,
                                     help="Corpus file or directory; default: the built-in corpus."),
    language: str = setting(W, "language", "--language", panel=DATA, help="Corpus language (en, zh, all)."),
    k: str = setting(W, "ks", "--k", "-k", panel=SELECTION, show=joined, help="Planted (and located) set sizes, comma-separated."),
    sizes: str = setting(W, "sizes", "--sizes", panel=SELECTION, show=joined,
                         help="Locating scenarios per pole, comma-separated (capped by the corpus)."),
    planted: Optional[str] = named(typer.Option(None, "--planted", rich_help_panel=SELECTION,
                                                help="Reuse planted models: K=DIR,K=DIR (written by vneuron plant)."), "planted_dirs"),
    controls: int = setting(W, "controls", "--controls", panel=EVALUATION,
                            help="Random neuron sets with the same per-layer counts: the most drawn."),
    mode: str = setting(W, "mode", "--mode", panel=EVALUATION, metavar="[zero|mean]", help="Ablation: zero or mean."),
    limit: Optional[int] = setting(W, "eval_limit", "--limit", panel=EVALUATION, help="At most this many evaluation items per pole side."),
    choice: str = setting(W, "choice", "--choice", panel=EVALUATION, metavar="[listed|continuation]",
                          help="Forced choice: listed (both actions shown, both orders) or continuation."),
    seed: int = setting(W, "seed", "--seed", panel=EVALUATION, help="Seed of the controls and the plants."),
    steps: int = setting(P, "steps", "--steps", panel=TRAINING, help="Planting: optimisation steps at most."),
    targets: Optional[str] = setting(W, "targets", "--targets", panel=SELECTION, show=lambda v: joined(v) if v else None,
                                     help="Plant strengths: each plant's write rescaled to these validation preferences, "
                                          "comma-separated (e.g. 0.6,0.7,0.8; default: as trained)."),
    **shared,
):
    """How many scenarios does locate need? plant → locate → ablate against the known planted neurons.

    Examples:
      vneuron power --out runs/power-st --k 50,200 --sizes 16,64,256
      vneuron power --out runs/power-st --planted 200=runs/planted-st --k 200
    """
    from vneuron.planting.power import power as run_power
    from vneuron.planting.power import power_table
    from vneuron.runtime.progress import console, progress_bar

    setup(shared["threads"], device=shared["device"], device_map=shared["device_map"])
    planted_dirs = {int(a): b for a, b in pairs(planted, "=", "--planted", "200=runs/planted-st") or []} if planted else None
    config = PowerConfig(dimension=dimension, dataset=dataset, language=language, ks=numbers(k, "--k", int, "50,200"),
                         sizes=numbers(sizes, "--sizes", int, "16,64,256"), controls=controls, mode=mode, choice=choice,
                         eval_limit=limit, seed=seed, targets=numbers(targets, "--targets", float, "0.6,0.7,0.8") if targets else None,
                         plant=PlantConfig(steps=steps, seed=seed, **{k: shared[k] for k in READ_SETTINGS}).check()).check()
    with progress_bar(not shared["quiet"]) as bar:
        result = run_power(shared["model"], config, out=out, planted_dirs=planted_dirs, progress=bar, dtype=shared["dtype"])
    console.print(power_table(result))
    console.print(f"Written to [bold]{result.out}[/] (power.csv, layers.csv)")


COMMANDS = (plant, power)
