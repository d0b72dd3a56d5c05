"""Locate value neurons: corpus → statistics → scores → NeuronSets → run directory.

``locate`` is the whole of ``vneuron locate``; recipes call it the same way.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vneuron.config import LocateConfig
from vneuron.data import load_corpus
from vneuron.data.schema import Corpus, aggregate_label
from vneuron.data.templates import choice_template
from vneuron.errors import VneuronError
from vneuron.locate.capture import ActivationStats, capture
from vneuron.locate.examples import EXAMPLES, TopExamples
from vneuron.locate.probes import probe_record
from vneuron.locate.residual import RESIDUAL, ResidualStats, residual_bytes
from vneuron.locate.runs import NEURONS_CSV, NEURONS_DIR, STATS, residual_file, set_filenames, stats_file
from vneuron.locate.scoring import NeuronSet, contrast_scores, lape_select, select, stability
from vneuron.models.loading import LoadedModel, load_model, peek_dims, resolve
from vneuron.runtime.checkpoint import Checkpoint
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.precision import check_dtype
from vneuron.runtime.store import (MANIFEST, base_manifest, check_fresh, check_space, default_run_dir, file_sha256, read_manifest, require,
                                   settings_tag, write_csv, write_json, write_jsonl, write_run)

Progress = Callable[[str, int, int], None]


@dataclass
class LocateResult:
    run_dir: Path
    manifest: dict[str, Any]
    stats: ActivationStats
    sets: dict[str, NeuronSet]
    stability: dict[str, dict] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_pandas(self):
        """Every selected neuron of every pole as a DataFrame, the rows of its neurons.csv (needs the extra ``vneuron[pandas]``)."""
        from vneuron.runtime.frames import pandas

        return pandas().DataFrame(self.rows)


def _capture_key(model_manifest: dict, corpus: Corpus, config: LocateConfig) -> dict[str, Any]:
    """What the statistics depend on; two runs with the same key have the same statistics."""
    return {
        "model_id": model_manifest["model_id"],
        "revision": model_manifest["revision"],
        "dtype": model_manifest.get("dtype"),
        "dataset_hash": corpus.content_hash(),
        **{k: getattr(config, k) for k in ("language", "split", "limit", "site", "mode", "span", "folds", "probe_width")},
        "max_new_tokens": config.max_new_tokens if config.mode == "generate" else None,
        # only a non-default template enters the key, so runs made before templates existed are still reused
        **({"template": choice_template(config.template).describe()} if config.template and config.mode == "prompt" else {}),
    }


def prepare_corpus(config: LocateConfig) -> Corpus:
    corpus = load_corpus(config.dataset, columns=config.columns, contrasts=config.contrasts, test_fraction=config.test_fraction,
                         strict=config.strict)
    if config.whole_values:
        corpus = corpus.whole_values()
    corpus = corpus.select(split=config.split, language=config.language, dimensions=config.dimensions, limit=config.limit)
    if not corpus.pole_contrasts():
        gone = ", ".join(f"{a}:{b}" for a, b in corpus.dropped[:4])
        raise VneuronError(f"No pole pair of {corpus.name} has texts on both sides in split {config.split!r}"
                           + (f" (left empty: {gone})" if gone else ""),
                           "use `split` all, a larger `limit`, or a smaller `test_fraction`")
    return corpus


def _threads_used() -> dict:
    from vneuron.runtime.threads import describe

    return describe()


@one_writer
def locate(
    model: str | LoadedModel | None = None,
    config: LocateConfig | None = None,
    *,
    out: str | Path | None = None,
    from_run: str | Path | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
    remote: Any = None,
    resume: bool = False,
    detach: bool = False,
    force: bool = False,
    given: set[str] | None = None,
    device: str | None = None,
) -> LocateResult:
    """Rank neurons for every pole of the corpus; writes and returns a new run.

    ``from_run`` re-selects from a finished run's statistics without loading the model, into a
    new run that refers to them (see ``reselect``). An existing ``out`` is an error before any
    work, unless ``force``: then it is replaced (its statistics reused if the capture matches).
    ``given`` names the command-line options the user set (checked against ``from_run``).
    """
    config = (config or LocateConfig()).check()
    say = progress or (lambda stage, done, total: None)
    started = time.time()
    if from_run is not None:
        if given is None:
            given = _given_from_api(config, model, remote, resume, detach, dtype)
        return reselect(Path(from_run), config, out=out, force=force, given=given, progress=say)
    check_dtype(dtype)  # float32, bfloat16, float16, auto; None: the default (remote: the server's)
    if out is not None:  # one writer per run directory: a second command writing here is refused now, not at the end
        claim(out)
    replacing = check_fresh(Path(out), force=force, fix=reselect_fix(Path(out))) if out is not None else None
    corpus = prepare_corpus(config)
    if remote:
        from vneuron.runtime.remote import check_key, resolve_target

        remote = resolve_target(remote)  # True, "local", a URL or a RemoteTarget
        check_key(remote)
    source = model.source if isinstance(model, LoadedModel) else resolve(model)
    run_dir = Path(out) if out else default_run_dir("locate", source.alias or source.model_id)
    if out is None:
        claim(run_dir)
        check_fresh(run_dir)
    dims = (model.n_layers, model.width) if isinstance(model, LoadedModel) else peek_dims(source)
    prompts = corpus.action_prompts(config.span, template=config.template) if config.mode == "prompt" else corpus.conditioned_prompts()
    if dims:  # what can be checked before the weights load
        _check_size(run_dir, corpus, config, *dims)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, progress=lambda msg: say(msg, 0, 0), device=device,
                                                                      remote=remote)
    _check_size(run_dir, corpus, config, loaded.n_layers, loaded.width, loaded.arch.hidden(loaded.config), len(prompts))
    model_manifest = loaded.manifest()
    key = _capture_key(model_manifest, corpus, config)
    contrasts = corpus.pole_contrasts()
    labels = corpus.labels
    reused = _reusable(run_dir, key) if replacing else None
    checkpoint = None
    if reused is None:  # what an interrupted capture counted (local) or collected from NDIF is kept for `resume`
        remote_key = {"request_batches": config.request_batches, "batch_tokens": config.batch_tokens} if loaded.remote is not None else {}
        checkpoint = Checkpoint.open(run_dir, {**key, **remote_key}, resume=resume)
    generations: list[dict] = []
    timings = {"load_s": round(time.time() - started, 2)}
    if reused is not None:
        stats = reused
        say(f"Reusing statistics from {run_dir}", 1, 1)
    else:
        t0 = time.time()
        stage = "Capturing activations" if loaded.remote is None else f"NDIF requests ({loaded.remote.host})"
        if checkpoint is not None:
            checkpoint.begin(started)
        try:
            stats = capture(loaded, prompts, config.capture_config(), labels=labels,
                            progress=lambda d, t: say(stage, d, t),
                            generations=generations if config.mode == "generate" else None, checkpoint=checkpoint, detach=detach)
        except BaseException as exc:
            if checkpoint is not None:
                checkpoint.finish(_outcome(exc))
            raise
        timings["capture_s"] = round(time.time() - t0, 2)
    stats.groups = corpus.groups()  # whole-value poles: sums over their conflicts' labels
    if stats.residual is not None:
        stats.residual.groups = stats.groups
    manifest = {
        **base_manifest("locate"),
        "model": model_manifest,
        "dataset": {"name": corpus.name, "spec": _dataset_spec(config.dataset), "columns": config.columns, "sha256": key["dataset_hash"],
                    "items": len(corpus.items), "texts": len(corpus.texts),
                    "counts": corpus.counts(), "language": config.language, "split": config.split, "limit": config.limit,
                    "test_fraction": config.test_fraction, "split_source": corpus.split_source,
                    "dropped_contrasts": corpus.dropped, "aggregates": stats.groups, "strict": config.strict,
                    "notes": corpus.notes},
        "template": choice_template(config.template).describe() if config.mode == "prompt" else None,
        "capture": {**asdict(config.capture_config()), **stats.meta, "tokens": {l: float(stats.n[i].sum()) for i,
                                                                                l in enumerate(stats.labels)}},
        "capture_key": key,
        "contrasts": contrasts,
        "selection": config.selection(),
        "residual": stats.residual.describe() if stats.residual is not None else None,
        "timings": timings,
        "threads": _threads_used(),
    }
    if checkpoint is not None:
        checkpoint.finish("complete")
    if checkpoint is not None and loaded.remote is not None:  # every invocation that worked on the run, not only this one
        totals = checkpoint.totals()
        manifest["remote"] = {**loaded.remote.describe(), **{k: totals[k] for k in ("requests", "sent_tensor_bytes",
                                                                                    "received_tensor_bytes")},
                              "totals": totals, "invocations": checkpoint.invocations, "log": checkpoint.log}
        timings["invocations"] = totals["invocations"]
        timings["all_invocations_s"] = totals["seconds"]
    if replacing:
        manifest["replaced"] = replacing
    result = _score(stats, contrasts, config, manifest)
    t0 = time.time()
    manifest["probes"] = probe_record(stats.residual, contrasts, **config.probe_settings())
    timings["probes_s"] = round(time.time() - t0, 2)
    if config.null_shuffles:
        t0 = time.time()
        manifest["null"] = label_shuffle_null(loaded, corpus, config, result, progress=say)
        timings["null_s"] = round(time.time() - t0, 2)
    timings["total_s"] = round(time.time() - started, 2)

    def write(directory: Path) -> None:
        stats.save(directory / STATS, residual=False)
        stats.residual.save(directory / RESIDUAL)
        if stats.examples is not None:
            stats.examples.save(directory / EXAMPLES)
        if generations:
            write_jsonl(directory / "generations.jsonl", generations)
        _write_sets(directory, result)
        write_json(directory / MANIFEST, manifest)

    write_run(run_dir, write, replace=replacing is not None, what="statistics and neuron sets")
    if checkpoint is not None:
        checkpoint.clear()  # the run is complete; partial statistics are no longer needed
    result.run_dir = run_dir
    return result


def _outcome(exc: BaseException) -> str:
    """How an invocation of a remote run ended, for the run's history."""
    from vneuron.runtime.remote import Detached

    if isinstance(exc, Detached):
        return "detached"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"failed: {str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}"


def reselect_fix(run_dir: Path) -> str:
    """What to do when ``out`` is a finished run (its dry run says the same)."""
    return (f"choose another `out`; to re-select from its statistics without the model: `from_run` {run_dir} "
            f"with a new `out`; to replace it: add `force`")


def expected_bytes(labels: int, folds: int, n_layers: int, width: int, top_k: int, poles: int, examples: int = 0,
                   hidden: int = 0, prompts: int = 0, probe_width: int = 1) -> int:
    """The size of a locate run directory: float64 sums dominate, neuron sets and tables are small;
    the top examples hold a float32 value and an int32 prompt index per label, neuron, side and text;
    the residual file its float64 sums and float32 probe rows (``residual.residual_bytes``)."""
    stats = 8 * (3 * labels * folds * n_layers * width + labels * folds)
    kept = min(top_k, n_layers * width) * poles
    residual = residual_bytes(labels, folds, n_layers, hidden, prompts, probe_width) if hidden else 0
    return stats + kept * (12 + 160) + 64_000 + 16 * labels * examples * n_layers * width + residual


def _check_size(run_dir: Path, corpus: Corpus, config: LocateConfig, n_layers: int, width: int, hidden: int = 0,
                prompts: int = 0) -> None:
    """Fail before any work: a `top_k` the model cannot supply, or a disk that cannot hold the run."""
    if config.method != "lape":
        select(torch.zeros(n_layers, width), config.rule, config.top_k)
    poles = len(config.dimensions or corpus.labels)
    check_space(run_dir, expected_bytes(len(corpus.labels), config.folds, n_layers, width, config.top_k, poles, config.top_examples,
                                        hidden, prompts, config.probe_width))


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
    stage, shuffles = f"Label-shuffle null ({config.null_shuffles} shuffles)", config.null_shuffles  # one stage, whatever their number
    for r in range(config.null_shuffles):
        null_corpus = shuffled(corpus, seed=10_000 + r)
        prompts = null_corpus.action_prompts(config.span,
                                             template=config.template) if config.mode == "prompt" else null_corpus.conditioned_prompts()
        stats = capture(model, prompts, replace(config.capture_config(), top_examples=0, residual=False), labels=result.stats.labels,
                        progress=lambda d, t, r=r: say(stage, r * t + d, shuffles * t))
        stats.groups = result.stats.groups
        for pole, neuron_set in result.sets.items():
            opposite = neuron_set.meta.get("opposite")
            scores = contrast_scores(stats, pole, opposite, config.method)
            signed = {"pole": scores, "opposite": -scores, "both": scores.abs()}[config.direction]
            cut = float({"pole": neuron_set.scores, "opposite": -neuron_set.scores,
                         "both": neuron_set.scores.abs()}[config.direction].min())
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
    if not (run_dir / MANIFEST).is_file():
        return None
    manifest = read_manifest(run_dir)
    if manifest.get("capture_key") != key:
        return None
    if not (stats_file(run_dir, manifest).parent / RESIDUAL).is_file():  # located before residual means were recorded
        return None
    stats = ActivationStats.load(stats_file(run_dir, manifest))
    stats.residual = ResidualStats.load(stats_file(run_dir, manifest).parent / RESIDUAL)
    if (stats_file(run_dir, manifest).parent / EXAMPLES).is_file():  # the neuron cards' texts come along
        stats.examples = TopExamples.load(stats_file(run_dir, manifest).parent / EXAMPLES)
    return stats


# Re-selection changes only these; every other setting either must match the parent's capture or needs the model.
SELECTION_SETTINGS = ("method", "rule", "top_k", "direction", "dimensions")
CAPTURE_SETTINGS = ("language", "split", "limit", "site", "mode", "span", "folds", "max_new_tokens", "probe_width")
PROBE_SETTINGS = ("probe_l2", "probe_bootstrap")  # re-selection refits the probes from the parent's residual file
MODEL_SETTINGS = ("model", "dataset", "columns", "contrasts", "null_shuffles", "remote", "host", "resume", "detach",
                  "dtype", "request_batches", "batch_tokens", "timeout", "template", "test_fraction", "whole_values")


def _given_from_api(config: LocateConfig, model, remote, resume, detach, dtype) -> set[str]:
    """For Python callers: the settings whose values differ from the defaults."""
    default = LocateConfig()
    given = {name for name in CAPTURE_SETTINGS + PROBE_SETTINGS if getattr(config, name) != getattr(default, name)}
    for name, value, unset in (("model", model, None), ("dataset", config.dataset, None), ("columns", config.columns, None),
                               ("contrasts", config.contrasts, None), ("null_shuffles", config.null_shuffles, 0),
                               ("remote", remote, None), ("resume", resume, False), ("detach", detach, False),
                               ("dtype", dtype, None)):
        if value not in (unset, False, None):
            given.add(name)
    return given


def _check_reselect_options(parent: Path, manifest: dict, config: LocateConfig, given: set[str]) -> None:
    """Refuse settings that `from_run` cannot honour, instead of silently ignoring them."""
    recorded = manifest.get("capture_key") or {}
    for name in [n for n in CAPTURE_SETTINGS if n in given]:
        wanted, had = getattr(config, name), recorded.get(name)
        if name == "span":
            had = {True: "option", False: "all"}.get((manifest.get("capture") or {}).get("counted_span"), had)
        if name == "probe_width" and name not in recorded:
            residual_file(parent, manifest)  # a run from before residual means: the error says what can add them
        if name == "max_new_tokens" and recorded.get("mode") != "generate":
            raise VneuronError(f"`max_new_tokens` has no effect with `from_run` {parent}: its statistics come from prompt mode",
                               "drop `max_new_tokens`")
        if name in recorded or name == "span":
            if str(wanted) != str(had):
                shown = ", ".join(f"`{n}`" for n in SELECTION_SETTINGS)
                raise VneuronError(
                    f"`{name}` {wanted} contradicts `from_run` {parent}, whose statistics were captured with `{name}` {had}",
                    f"drop `{name}` (re-selection changes only {shown}), or capture anew without `from_run`, with"
                    f"{_recapture(manifest)} `{name}` {wanted} and a new `out`")
    for name in MODEL_SETTINGS:
        if name in given:
            raise VneuronError(f"`{name}` has no effect with `from_run`: re-selection reads the saved statistics and never runs "
                               "the model", f"drop `{name}`, or locate without `from_run`")


def _recapture(manifest: dict) -> str:
    """The model and dataset that reproduce a run's capture, for messages."""
    spec = (manifest.get("model") or {}).get("spec")
    dataset = (manifest.get("dataset") or {}).get("spec")
    return (f" `model` {spec}" if spec and spec != "default" else "") + (f" `dataset` {dataset}" if dataset else "")


@one_writer
def reselect(parent: str | Path, config: LocateConfig, *, out: str | Path | None = None, force: bool = False,
             given: set[str] | None = None, progress: Progress | None = None) -> LocateResult:
    """A new run with another selection from a finished run's statistics; the parent is never changed.

    The new run refers to the parent's statistics (relative and absolute path, SHA-256) instead of
    copying them, and records its own command and its parent.
    """
    say = progress or (lambda stage, done, total: None)
    config = config.check()
    started = time.time()
    parent = Path(parent)
    manifest = read_manifest(parent)
    if manifest.get("kind") != "locate":
        raise VneuronError(f"{parent} is not a locate run (it is a {manifest.get('kind', 'unknown')} run)",
                           "pass a directory written by vneuron locate")
    require(manifest, parent, "model", "capture_key", "contrasts")
    _check_reselect_options(parent, manifest, config, set(given or ()))
    tag = settings_tag({**config.selection(), "dimensions": config.dimensions})
    run_dir = Path(out) if out else parent.parent / f"{parent.name}-{config.method}-k{config.top_k}-{tag}"
    here, there = Path(os.path.abspath(run_dir)), Path(os.path.abspath(parent))
    if here == there or there in here.parents or here in there.parents:
        raise VneuronError(f"`out` {run_dir} would write over or inside the run it re-selects from ({parent})",
                           "`from_run` never changes its run: pass another `out`")
    claim(run_dir)
    replacing = check_fresh(run_dir, force=force, fix="choose another `out`, or add `force` to replace it")
    contrasts = [tuple(c) for c in manifest["contrasts"]]
    if config.dimensions:
        poles = {c[0] for c in contrasts}
        config.dimensions = [d if d in poles or aggregate_label(d) not in poles else aggregate_label(d) for d in config.dimensions]
        unknown = set(config.dimensions) - poles
        if unknown:
            raise VneuronError(f"Run {parent} has no dimension {', '.join(sorted(unknown))}", f"use: {', '.join(c[0] for c in contrasts)}")
        contrasts = [c for c in contrasts if c[0] in config.dimensions]
    source = stats_file(parent, manifest)
    stats = ActivationStats.load(source)
    stats.groups = manifest.get("dataset", {}).get("aggregates") or {}
    if config.method != "lape":
        select(torch.zeros(stats.n_layers, stats.width), config.rule, config.top_k)
    check_space(run_dir, expected_bytes(0, 0, 0, 0, config.top_k, len(contrasts)))
    say(f"Re-selecting from {parent}", 1, 1)
    new = {key: manifest[key] for key in ("model", "dataset", "capture", "capture_key", "contrasts", "remote") if key in manifest}
    new.update(_parent_probes(parent, manifest, contrasts, config, set(given or ())))
    new = {**base_manifest("locate"), **new,
           "parent_run": {"path": str(parent), "absolute": str(there), "command": manifest.get("command"),
                          "selection": manifest.get("selection")},
           "statistics": {"run": str(source.parent.resolve()), "file": os.path.relpath(source.resolve(), here),
                          "absolute": str(source.resolve()), "sha256": file_sha256(source), "bytes": source.stat().st_size},
           "selection": config.selection()}
    if replacing:
        new["replaced"] = replacing
    result = _score(stats, contrasts, config, new)
    new["timings"] = {"total_s": round(time.time() - started, 2)}

    def write(directory: Path) -> None:
        _write_sets(directory, result)
        write_json(directory / MANIFEST, new)

    write_run(run_dir, write, replace=replacing is not None, what="neuron sets")
    result.run_dir = run_dir
    return result


def _parent_probes(parent: Path, manifest: dict, contrasts, config: LocateConfig, given: set[str]) -> dict[str, Any]:
    """A re-selected run's residual reference (with its hash) and probes: the parent's, for the poles kept, or
    refitted from the parent's residual file when a probe setting is given."""
    if not manifest.get("residual") and not given & set(PROBE_SETTINGS):
        return {}  # a parent from before residual means: nothing to keep
    path = residual_file(parent, manifest)
    out: dict[str, Any] = {"residual": {**(manifest.get("residual") or {}), "run": str(path.parent.resolve()),
                                        "sha256": file_sha256(path)}}
    poles = {pole for pole, _ in contrasts}
    if given & set(PROBE_SETTINGS):
        residual = ResidualStats.load(path)
        residual.groups = manifest.get("dataset", {}).get("aggregates") or {}
        out["probes"] = probe_record(residual, contrasts, **config.probe_settings())
    elif manifest.get("probes"):
        out["probes"] = {**manifest["probes"], "poles": {p: v for p, v in manifest["probes"]["poles"].items() if p in poles}}
    return out


def _score(stats: ActivationStats, contrasts, config: LocateConfig, manifest: dict) -> LocateResult:
    """Scores, selections and split-half stability, in memory (nothing is written here)."""
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
    manifest["set_files"] = {label: f"{NEURONS_DIR}/{name}" for label, name in set_filenames(list(sets)).items()}
    manifest["stability"] = stab
    manifest["selected"] = {label: {"count": len(s), "per_layer": s.per_layer()} for label, s in sets.items()}
    return LocateResult(Path(), manifest, stats, sets, stab, rows)


def _write_sets(directory: Path, result: LocateResult) -> None:
    (directory / NEURONS_DIR).mkdir(exist_ok=True)
    for label, neuron_set in result.sets.items():
        neuron_set.save(directory / result.manifest["set_files"][label])
    write_csv(directory / NEURONS_CSV, result.rows)


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
