"""Locate value neurons: corpus → statistics → scores → NeuronSets → run directory.

``locate`` is the whole of ``vneuron locate``; recipes call it the same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .capture import ActivationStats, CaptureConfig, capture
from .data import load_corpus
from .data.schema import Corpus
from .errors import VneuronError
from .models.loading import LoadedModel, load_model
from .runs import NEURONS_CSV, NEURONS_DIR, STATS, base_manifest, check_fresh, default_run_dir, read_manifest, staged, write_csv, write_json, write_jsonl
from .scoring import METHODS, NeuronSet, contrast_scores, lape_select, select, stability

Progress = Callable[[str, int, int], None]


@dataclass
class LocateConfig:
    """Everything that decides a locate run (recorded in the manifest)."""

    dataset: str | None = None  # None: the built-in corpus
    columns: dict[str, str] | None = None  # our field → the user's column name
    contrasts: list[tuple[str, str]] | None = None  # (pole, opposite) label pairs; default: Schwartz partners
    dimensions: list[str] | None = None  # pole labels to rank; None: all
    language: str = "en"
    split: str = "train"
    limit: int | None = None  # at most this many items per dimension (quick looks, tests)
    site: str = "gate"
    mode: str = "prompt"  # prompt | generate
    span: str = "option"  # prompt mode: count the action's tokens, or all of the prompt
    method: str = "delta_p"  # delta_p | mean_diff | cohen_d | welch_t | lape
    rule: str = "top_k"  # top_k | per_layer | valuelocate
    top_k: int = 200
    direction: str = "pole"
    threshold: float = 0.1  # valuelocate rule
    min_count: int = 2000  # valuelocate rule
    lape_top_rate: float = 0.01
    lape_quantile: float = 0.95
    folds: int = 2
    null_shuffles: int = 0  # label-shuffle null runs (each is one more capture)
    batch_tokens: int = 4096
    max_new_tokens: int = 32
    request_batches: int = 8  # remote: forward batches per NDIF request

    def capture_config(self) -> CaptureConfig:
        return CaptureConfig(site=self.site, mode=self.mode, folds=self.folds, batch_tokens=self.batch_tokens,
                             max_new_tokens=self.max_new_tokens, counted_span=self.span == "option",
                             request_batches=self.request_batches).check()

    def check(self) -> "LocateConfig":
        if self.method not in (*METHODS, "lape"):
            raise VneuronError(f"Unknown method {self.method!r}", f"use one of: {', '.join((*METHODS, 'lape'))}")
        if self.top_k < 1:
            raise VneuronError(f"--top-k must be at least 1, got {self.top_k}")
        self.capture_config()
        return self

    def selection(self) -> dict[str, Any]:
        keys = ("method", "rule", "top_k", "direction", "threshold", "min_count", "lape_top_rate", "lape_quantile")
        return {k: getattr(self, k) for k in keys}


@dataclass
class LocateResult:
    run_dir: Path
    manifest: dict[str, Any]
    stats: ActivationStats
    sets: dict[str, NeuronSet]
    stability: dict[str, dict] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _capture_key(model_manifest: dict, corpus: Corpus, config: LocateConfig) -> dict[str, Any]:
    """What the statistics depend on; two runs with the same key have the same statistics."""
    return {
        "model_id": model_manifest["model_id"],
        "revision": model_manifest["revision"],
        "dtype": model_manifest.get("dtype"),
        "dataset_hash": corpus.content_hash(),
        **{k: getattr(config, k) for k in ("language", "split", "limit", "site", "mode", "span", "folds")},
        "max_new_tokens": config.max_new_tokens if config.mode == "generate" else None,
    }


def prepare_corpus(config: LocateConfig) -> Corpus:
    corpus = load_corpus(config.dataset, columns=config.columns, contrasts=config.contrasts)
    return corpus.select(split=config.split, language=config.language, dimensions=config.dimensions, limit=config.limit)


def _threads_used() -> dict:
    from .threads import describe

    return describe()


def locate(
    model: str | LoadedModel | None = None,
    config: LocateConfig | None = None,
    *,
    out: str | Path | None = None,
    from_run: str | Path | None = None,
    dtype: str = "float32",
    progress: Progress | None = None,
    remote: Any = None,
    resume: bool = False,
    detach: bool = False,
) -> LocateResult:
    """Rank neurons for every pole of the corpus; writes and returns a run.

    ``from_run`` re-selects from a finished run's statistics without loading the model; an
    ``out`` directory holding statistics with the same capture key is reused the same way.
    """
    config = (config or LocateConfig()).check()
    say = progress or (lambda stage, done, total: None)
    started = time.time()
    if from_run is not None:
        return _reselect(Path(from_run), config, say)
    corpus = prepare_corpus(config)
    if remote:
        from .remote import check_key, resolve_target

        remote = resolve_target(remote)  # True, "local", a URL or a RemoteTarget
        check_key(remote)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, progress=lambda msg: say(msg, 0, 0),
                                                                      remote=remote)
    if config.method != "lape":  # a bad --top-k fails before any work
        select(torch.zeros(loaded.n_layers, loaded.width), config.rule, config.top_k)
    model_manifest = loaded.manifest()
    key = _capture_key(model_manifest, corpus, config)
    run_dir = Path(out) if out else default_run_dir("locate", loaded.source.alias or loaded.source.model_id)
    contrasts = corpus.pole_contrasts()
    labels = corpus.labels
    reused = _reusable(run_dir, key)
    if reused is None:
        check_fresh(run_dir)
    checkpoint = None
    if loaded.remote is not None and reused is None:
        from .remote import Checkpoint

        checkpoint = Checkpoint.for_run(run_dir, {**key, "request_batches": config.request_batches,
                                                  "batch_tokens": config.batch_tokens}, resume)
    generations: list[dict] = []
    timings = {"load_s": round(time.time() - started, 2)}
    if reused is not None:
        stats = reused
        say(f"Reusing statistics from {run_dir}", 1, 1)
    else:
        prompts = corpus.action_prompts(config.span) if config.mode == "prompt" else corpus.conditioned_prompts()
        t0 = time.time()
        stage = "Capturing activations" if checkpoint is None else f"NDIF requests ({loaded.remote.host})"
        stats = capture(loaded, prompts, config.capture_config(), labels=labels,
                        progress=lambda d, t: say(stage, d, t),
                        generations=generations if config.mode == "generate" else None, checkpoint=checkpoint, detach=detach)
        timings["capture_s"] = round(time.time() - t0, 2)
    manifest = {
        **base_manifest("locate"),
        "model": model_manifest,
        "dataset": {"name": corpus.name, "spec": _dataset_spec(config.dataset), "columns": config.columns, "sha256": key["dataset_hash"], "items": len(corpus.items), "texts": len(corpus.texts),
                    "counts": corpus.counts(), "language": config.language, "split": config.split, "limit": config.limit},
        "capture": {**asdict(config.capture_config()), **stats.meta, "tokens": {l: float(stats.n[i].sum()) for i, l in enumerate(stats.labels)}},
        "capture_key": key,
        "contrasts": contrasts,
        "selection": config.selection(),
        "timings": timings,
        "threads": _threads_used(),
    }
    if checkpoint is not None:
        log = checkpoint.log
        manifest["remote"] = {**loaded.remote.describe(), "requests": len(log),
                              "sent_tensor_bytes": sum(r["sent_tensor_bytes"] for r in log),
                              "received_tensor_bytes": sum(r["received_tensor_bytes"] for r in log), "log": log}
    with staged(run_dir, replace=reused is not None) as tmp:
        if reused is None:
            stats.save(tmp / STATS)
        if generations:
            write_jsonl(tmp / "generations.jsonl", generations)
        result = _score_and_write(tmp, stats, contrasts, config, manifest)
        if config.null_shuffles:
            t0 = time.time()
            manifest["null"] = label_shuffle_null(loaded, corpus, config, result, progress=say)
            timings["null_s"] = round(time.time() - t0, 2)
        timings["total_s"] = round(time.time() - started, 2)
        write_json(tmp / "manifest.json", manifest)
    if checkpoint is not None:
        checkpoint.clear()  # the run is complete; partial statistics are no longer needed
    result.run_dir = run_dir
    return result


def shuffled(corpus: Corpus, seed: int) -> Corpus:
    """The same corpus with pole labels shuffled within each scenario (a coin flip per item)."""
    gen = torch.Generator().manual_seed(seed)
    flips = torch.rand(len(corpus.items), generator=gen) < 0.5
    items = [replace(i, option_pole=i.option_opposite, option_opposite=i.option_pole) if f else i
             for i, f in zip(corpus.items, flips.tolist())]
    labels = [t.label for t in corpus.texts]
    order = torch.randperm(len(labels), generator=gen).tolist()
    texts = [replace(t, label=labels[j]) for t, j in zip(corpus.texts, order)]
    return replace(corpus, items=items, texts=texts)


def label_shuffle_null(model: LoadedModel, corpus: Corpus, config: LocateConfig, result: "LocateResult",
                       progress: Progress | None = None) -> dict[str, Any]:
    """How many neurons pass each pole's cut when pole labels carry no information.

    Each shuffle re-captures the corpus with labels flipped at random within scenarios and
    counts neurons whose score reaches the real selection's weakest score: an estimate of how
    many of the selected neurons are there by chance.
    """
    if config.method == "lape":
        return {"note": "the label-shuffle null is defined for contrast scores, not LAPE"}
    say = progress or (lambda stage, done, total: None)
    counts: dict[str, list[int]] = {pole: [] for pole in result.sets}
    for r in range(config.null_shuffles):
        null_corpus = shuffled(corpus, seed=10_000 + r)
        prompts = null_corpus.action_prompts(config.span) if config.mode == "prompt" else null_corpus.conditioned_prompts()
        stats = capture(model, prompts, config.capture_config(), labels=result.stats.labels,
                        progress=lambda d, t, r=r: say(f"Label-shuffle null {r + 1}/{config.null_shuffles}", d, t))
        for pole, neuron_set in result.sets.items():
            opposite = neuron_set.meta.get("opposite")
            scores = contrast_scores(stats, pole, opposite, config.method)
            signed = {"pole": scores, "opposite": -scores, "both": scores.abs()}[config.direction]
            cut = float({"pole": neuron_set.scores, "opposite": -neuron_set.scores, "both": neuron_set.scores.abs()}[config.direction].min())
            counts[pole].append(int((signed >= cut).sum()))
    return {pole: {"shuffles": config.null_shuffles, "selected": len(result.sets[pole]), "passing_by_chance": c,
                   "mean": sum(c) / len(c), "false_discovery_estimate": min(1.0, (sum(c) / len(c)) / len(result.sets[pole]))}
            for pole, c in counts.items()}


def _dataset_spec(dataset: str | None) -> str | None:
    """An absolute path for files, so a run can be evaluated from another working directory."""
    if dataset and Path(dataset).expanduser().exists():
        return str(Path(dataset).expanduser().resolve())
    return dataset


def _reusable(run_dir: Path, key: dict) -> ActivationStats | None:
    if not (run_dir / "manifest.json").is_file() or not (run_dir / STATS).is_file():
        return None
    if read_manifest(run_dir).get("capture_key") != key:
        return None
    return ActivationStats.load(run_dir / STATS)


def _reselect(run_dir: Path, config: LocateConfig, say: Progress) -> LocateResult:
    manifest = read_manifest(run_dir)
    if manifest.get("kind") != "locate" or not (run_dir / STATS).is_file():
        raise VneuronError(f"{run_dir} holds no locate statistics", "pass a directory written by vneuron locate")
    stats = ActivationStats.load(run_dir / STATS)
    if config.method != "lape":
        select(torch.zeros(stats.n_layers, stats.width), config.rule, config.top_k)
    contrasts = [tuple(c) for c in manifest["contrasts"]]
    if config.dimensions:
        unknown = set(config.dimensions) - {c[0] for c in contrasts}
        if unknown:
            raise VneuronError(f"Run {run_dir} has no dimension {', '.join(sorted(unknown))}", f"use: {', '.join(c[0] for c in contrasts)}")
        contrasts = [c for c in contrasts if c[0] in config.dimensions]
    say(f"Re-selecting from {run_dir}", 1, 1)
    manifest["selection"] = config.selection()
    with staged(run_dir, replace=True) as tmp:
        for old in (tmp / NEURONS_DIR).glob("*.safetensors"):
            old.unlink()
        result = _score_and_write(tmp, stats, contrasts, config, manifest)
        write_json(tmp / "manifest.json", manifest)
    result.run_dir = run_dir
    return result


def _score_and_write(tmp: Path, stats: ActivationStats, contrasts, config: LocateConfig, manifest: dict) -> LocateResult:
    sets: dict[str, NeuronSet] = {}
    rows: list[dict[str, Any]] = []
    stab: dict[str, dict] = {}
    model = manifest.get("model", {})
    common = {"model_id": model.get("model_id"), "revision": model.get("revision"), **config.selection()}
    if config.method == "lape":
        chosen = lape_select(stats, top_rate=config.lape_top_rate, quantile=config.lape_quantile)
        for label, flat in chosen.items():
            p = stats.moments(label).p
            sets[label] = NeuronSet.from_flat(flat, p, stats.site, label=label, **common)
    opposite_of = dict(contrasts)
    for pole, opposite in contrasts:
        scores = contrast_scores(stats, pole, opposite, config.method if config.method != "lape" else "delta_p")
        if config.method != "lape":
            flat = select(scores, config.rule, config.top_k, direction=config.direction,
                          threshold=config.threshold, min_count=config.min_count)
            sets[pole] = NeuronSet.from_flat(flat, scores, stats.site, label=pole, opposite=opposite, **common)
            stab[pole] = stability(stats, pole, opposite, config.method, len(flat))
    for label, neuron_set in sets.items():
        rows.extend(_rows(stats, neuron_set, label, opposite_of.get(label)))
    (tmp / NEURONS_DIR).mkdir(exist_ok=True)
    for label, neuron_set in sets.items():
        neuron_set.save(tmp / NEURONS_DIR / f"{label}.safetensors")
    write_csv(tmp / NEURONS_CSV, rows)
    manifest["stability"] = stab
    manifest["selected"] = {label: {"count": len(s), "per_layer": s.per_layer()} for label, s in sets.items()}
    return LocateResult(tmp, manifest, stats, sets, stab, rows)


def _rows(stats: ActivationStats, neuron_set: NeuronSet, label: str, opposite: str | None) -> list[dict[str, Any]]:
    a = stats.moments(label)
    b = stats.moments(opposite) if opposite else None
    layers, units = neuron_set.layers.tolist(), neuron_set.units.tolist()
    out = []
    for rank, (layer, unit, score) in enumerate(zip(layers, units, neuron_set.scores.tolist()), 1):
        row = {"dimension": label, "opposite": opposite or "", "rank": rank, "layer": layer, "unit": unit,
               "score": round(score, 6), "p_pole": round(float(a.p[layer, unit]), 6),
               "p_opposite": round(float(b.p[layer, unit]), 6) if b else "",
               "mean_pole": round(float(a.mean[layer, unit]), 6),
               "mean_opposite": round(float(b.mean[layer, unit]), 6) if b else "",
               "mean_diff": round(float(a.mean[layer, unit] - b.mean[layer, unit]), 6) if b else ""}
        out.append(row)
    return out
