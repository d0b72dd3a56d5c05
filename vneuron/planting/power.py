"""Power of locate → ablate, measured on planted models whose value neurons are known.

For each K a model is planted (or a planted directory is reused); for each corpus size n the
SAME locate and ablate code that real runs use is run on the planted model, and the table says
how much of the ground truth comes back: recall / precision of the planted units in the located
top-K (overall and per layer), where the planted units fall in the score ranking, and the
ablation effect of the located set against matched random controls, beside the planted set
itself (the ceiling) and the planted set restored to its original weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vneuron.config import PowerConfig, ValidateConfig
from vneuron.errors import VneuronError
from vneuron.locate.locating import LocateConfig, locate, prepare_corpus
from vneuron.locate.runs import LocateRun
from vneuron.locate.scoring import NeuronSet, contrast_scores
from vneuron.models.loading import LoadedModel, load_model
from vneuron.planting import (NEURONS_FILE, PLANT_DIR, axis_items, check_loaded, check_trainable, choose_neurons, original_weights, plant,
                              rescale)
from vneuron.runtime import devices
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.store import base_manifest, check_fresh, read_manifest, write_csv, write_json
from vneuron.validate.evaluate import forced_choice
from vneuron.validate.study import ablate

Progress = Callable[[str, int, int], None]


@dataclass
class PowerResult:
    out: Path
    rows: list[dict[str, Any]]
    layer_rows: list[dict[str, Any]]
    manifest: dict[str, Any]


def _ranks(scores: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """1-based rank of each neuron in ``flat`` when all neurons are ordered by score (best first)."""
    order = scores.reshape(-1).argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, len(order) + 1)
    return rank[flat]


def _removed(planted: float, original: float, after: float) -> float | None:
    gain = planted - original
    return (planted - after) / gain if abs(gain) > 1e-9 else None


def _check_inputs(model, base: LoadedModel | None, config: PowerConfig, planted_dirs: dict, say) -> LoadedModel | None:
    """The planted models given, the corpus axis and each K to plant: checked before anything is written."""
    for k, pdir in planted_dirs.items():
        pdir = Path(pdir)
        if not pdir.is_dir():
            raise VneuronError(f"`planted_dirs` {k}={pdir}: {pdir} does not exist", "pass a model directory written by vneuron plant")
        if not (pdir / PLANT_DIR / "manifest.json").is_file():
            raise VneuronError(f"`planted_dirs` {k}={pdir}: {pdir} is not a planted model (no {PLANT_DIR}/manifest.json)",
                               "pass a model directory written by vneuron plant")
        pmanifest = read_manifest(pdir / PLANT_DIR)
        if pmanifest.get("dimension") != config.dimension:
            raise VneuronError(f"{pdir} was planted for {pmanifest.get('dimension')!r}, not {config.dimension!r}",
                               "pass a planted model of the same dimension")
    to_plant = [k for k in config.ks if k not in planted_dirs]
    if not to_plant:
        return base
    plant_config = replace(config.plant, dimension=config.dimension, dataset=config.dataset, language=config.language)
    axis_items(plant_config)
    if base is None:
        check_trainable(model)
        base = load_model(model, dtype="float32", progress=lambda m: say(m, 0, 0))  # planting trains in float32
    check_loaded(base)
    for k in to_plant:
        choose_neurons(base, replace(plant_config, k=k).check())
    return base


@one_writer
def power(model: str | LoadedModel | None, config: PowerConfig | None = None, *, out: str | Path,
          planted_dirs: dict[int, str | Path] | None = None, progress: Progress | None = None,
          dtype: str | None = None, device: str | None = None) -> PowerResult:
    """plant → locate (at each corpus size) → ablate, against the known planted units.

    Planting trains in float32; ``dtype`` is what the planted models compute in while they are
    located and ablated (None: the default of ``load_model``), recorded in the manifest. ``device``: where
    every model of the study computes (None: the process's placement)."""
    with devices.placed(device):
        return _power(model, config, out, planted_dirs, progress, dtype)


def _power(model, config: PowerConfig | None, out, planted_dirs, progress, dtype) -> PowerResult:
    config = (config or PowerConfig()).check()
    say = progress or (lambda stage, done, total: None)
    out = Path(out)
    claim(out)
    check_fresh(out)
    planted_dirs = dict(planted_dirs or {})
    base: LoadedModel | None = model if isinstance(model, LoadedModel) else None
    base = _check_inputs(model, base, config, planted_dirs, say)  # every bad input fails before out/ is made
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows, layer_rows, plants = [], [], {}
    for k in config.ks:
        if k in planted_dirs:
            pdir = Path(planted_dirs[k])
        else:
            if base is None:
                base = load_model(model, dtype="float32", progress=lambda m: say(m, 0, 0))
            pdir = out / f"planted-k{k}"
            say(f"Planting K={k}", 0, 0)
            plant(base, replace(config.plant, dimension=config.dimension, dataset=config.dataset, language=config.language, k=k),
                  out=pdir, progress=say)
        for target, sdir in _strengths(pdir, k, config, out, say):
            _power_rows(k, target, sdir, config, out, say, rows, layer_rows, plants, dtype)
    manifest = {**base_manifest("power"), "config": asdict(config), "plants": plants,
                "timings": {"total_s": round(time.time() - started, 1)}, "rows": rows}
    write_json(out / "manifest.json", manifest)
    return PowerResult(out, rows, layer_rows, manifest)


def _strengths(pdir: Path, k: int, config: PowerConfig, out: Path, say) -> list[tuple[float | None, Path]]:
    """The plant as trained, or one copy per target strength (its write rescaled on the validation scenarios)."""
    if not config.targets:
        return [(None, pdir)]
    found = []
    for target in config.targets:
        sdir = out / f"planted-k{k}-p{target:g}"
        if not sdir.is_dir():
            say(f"K={k}: rescaling the plant to P = {target:g}", 0, 0)
            rescale(pdir, target, sdir, progress=say)
        found.append((target, sdir))
    return found


def _power_rows(k: int, target: float | None, pdir: Path, config: PowerConfig, out: Path, say, rows: list, layer_rows: list,
                plants: dict, dtype: str | None = None) -> None:
    """locate → ablate at every corpus size on one planted model (a K, a strength); rows appended in place."""
    tag = f"k{k}" + (f"-p{target:g}" if target is not None else "")
    pmanifest = read_manifest(pdir / PLANT_DIR)
    truth = NeuronSet.load(pdir / PLANT_DIR / NEURONS_FILE)
    planted_model = load_model(str(pdir), dtype=dtype, progress=lambda m: say(m, 0, 0))
    opposite = pmanifest["opposite"]
    # what the planted units read: the pole itself, or (mechanism "veto") the opposite, whose actions they suppress;
    # locate looks for them under that label, and switching a veto set off is expected to RAISE P toward it
    reads = pmanifest.get("reads", config.dimension)
    other = config.dimension if reads != config.dimension else opposite
    toward_dim = (lambda p: 1 - p) if reads != config.dimension else (lambda p: p)  # the axis items: P(opposite) = 1 − P(pole)
    tail = "higher" if reads != config.dimension else None
    recorded_original = pmanifest["preference"]["before"]["test"].get(config.choice)
    plants[tag] = {"dir": str(pdir), "k": k, "target": target, "neurons": len(truth), "per_layer": truth.per_layer(),
                   "reads": reads, "side_effects": pmanifest.get("side_effects"), "strength": pmanifest.get("strength"),
                 "dtype": planted_model.extra.get("dtype"),
                 "mechanism": pmanifest.get("mechanism", "promote"),
                 "preference": pmanifest["preference"], "timings": pmanifest.get("timings")}
    side = pmanifest.get("side_effects") or {}
    ceiling = None
    for n in config.sizes:
        say(f"K={k}: locating with {n} scenarios per pole", 0, 0)
        located_config = LocateConfig(dataset=config.dataset, language=config.language, dimensions=[reads],
                                      limit=n, top_k=len(truth), method=config.method, site=config.site)
        located = locate(planted_model, located_config, out=out / f"locate-{tag}-n{n}", progress=say)
        found = located.sets[reads]
        scores = contrast_scores(located.stats, reads, other, config.method)
        ranks = _ranks(scores, truth.flat).double()
        hits = torch.isin(found.flat, truth.flat)
        n_used = sum(1 for i in prepare_corpus(located_config).items if i.dimension == reads)
        # the power table ranks among `controls` only (no extension); the plant's own side effects are in its manifest
        vconfig = ValidateConfig(dimensions=[reads], mode=config.mode, controls=config.controls, limit=config.eval_limit,
                                 generations=0, seed=config.seed, choice=config.choice, tail=tail, max_controls=config.controls,
                                 side_effects=False, cross_values=False)
        run = LocateRun.open(located.run_dir)
        say(f"K={k}, n={n}: ablating the located set", 0, 0)
        loc_summary = ablate(run, vconfig, model=planted_model, out=located.run_dir / f"ablate-{config.mode}").summaries[0]
        if ceiling is None:  # the planted set itself, and the planted units restored (once per K)
            say(f"K={k}: ablating the planted set", 0, 0)
            ceiling = ablate(replace(run, sets={reads: truth}), vconfig, model=planted_model,
                             out=out / f"planted-{tag}-ablate-{config.mode}").summaries[0]
            items = _eval_items(run, config)
            with original_weights(planted_model, pdir):
                restored = float(forced_choice(planted_model, items, choice=config.choice).toward(config.dimension).mean())
            ceiling["restored"] = restored
        # preferences below are toward the planted dimension, whichever label the units were located under
        base_pref = toward_dim(loc_summary["baseline"])
        located_after, planted_after = toward_dim(loc_summary["after"]), toward_dim(ceiling["after"])
        # restoring the planted slices gives the original weights bit for bit: the original preference on these items
        original_pref = ceiling["restored"]
        row = {
            "k": k, "target": target, "scale": (pmanifest.get("strength") or {}).get("scale"),
            "ppl_ratio": side.get("ppl_ratio"), "kl_all_positions": side.get("kl_all_positions"),
            "located_as": reads, "tail": tail or "lower", "scenarios_per_pole": n, "scenarios_used": n_used,
            "neurons_total": truth.n_layers * truth.width,
            "recall": round(float(hits.sum()) / len(truth), 4), "precision": round(float(hits.sum()) / len(found), 4),
            "chance_recall": round(len(found) / (truth.n_layers * truth.width), 5),
            "planted_rank_median": int(ranks.median()), "planted_rank_q10": int(torch.quantile(ranks, 0.1)),
            "planted_rank_q90": int(torch.quantile(ranks, 0.9)),
            "planted_in_top_2k": round(float((ranks <= 2 * len(truth)).double().mean()), 4),
            "pref_original": round(original_pref, 4),
            "pref_original_recorded": _round(recorded_original),
            "pref_planted": round(base_pref, 4),
            "pref_after_located": round(located_after, 4),
            "located_removed": _round(_removed(base_pref, original_pref, located_after)),
            "located_rank": loc_summary.get("rank"), "controls": loc_summary.get("controls"),
            "control_effect": _round(loc_summary.get("control_effect")), "control_sd": _round(loc_summary.get("control_sd")),
            "pref_after_planted": round(planted_after, 4),
            "planted_removed": _round(_removed(base_pref, original_pref, planted_after)),
            "planted_rank": ceiling.get("rank"),
        }
        rows.append(row)
        for layer in range(truth.n_layers):
            in_layer = truth.layers == layer
            if in_layer.any():
                found_here = torch.isin(truth.flat[in_layer], found.flat)
                layer_rows.append({"k": k, "target": target, "scenarios_per_pole": n, "layer": layer, "planted": int(in_layer.sum()),
                                   "located": int((found.layers == layer).sum()), "recovered": int(found_here.sum()),
                                   "recall": round(float(found_here.double().mean()), 4)})
        write_csv(out / "power.csv", rows)
        write_csv(out / "layers.csv", layer_rows)


def _eval_items(run: LocateRun, config: PowerConfig):
    from vneuron.validate.items import items_for

    return items_for(run.items("test"), config.dimension, config.eval_limit)


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def power_table(result: PowerResult):
    """One row per (K, scenarios per pole): recovery and ablation beside chance and the ceiling (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    table = Table(title="Power: planted neurons found by locate, removed by ablate", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption="n = scenarios per pole used to locate; recall = planted units in the located top-K (chance in "
                          "brackets); rank = median rank of the planted units by score; P = preference for the planted pole "
                          "(original → planted); P* = the strength (validation P the write was scaled to; — as trained); ppl× = the "
                          "planted model's perplexity on neutral prose over the original's; loc / plant: P after zeroing the located / "
                          "planted set, share of the planted preference "
                          "removed (rm), rank among matched random controls (1 = beyond all)")
    for column in ("K", "P*", "ppl×", "n", "recall", "rank", "P orig→plant", "loc P", "rm", "rank", "plant rm", "rank"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in result.rows:
        pct = lambda v: "—" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        table.add_row(str(r["k"]), "—" if r.get("target") is None else f"{r['target']:g}",
                      "—" if r.get("ppl_ratio") is None else f"{r['ppl_ratio']:.2f}",
                      str(r["scenarios_used"]), f"{r['recall']:.2f} ({r['chance_recall']:.3f})",
                      str(r["planted_rank_median"]), f"{r['pref_original']:.3f}→{r['pref_planted']:.3f}",
                      f"{r['pref_after_located']:.3f}", pct(r["located_removed"]), f"{r['located_rank']}/{(r['controls'] or 0) + 1}",
                      pct(r["planted_removed"]), str(r["planted_rank"]))
    return table
