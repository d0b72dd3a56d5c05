"""Which items a study evaluates on: the locate run's own held-out split, or an outside corpus with its labels
mapped to the run's poles; the items of one pole's axis; the poles that have items."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vneuron.config import ValidateConfig
from vneuron.data import load_corpus
from vneuron.data.schema import ANY, OPPOSITE, PAIR, Item, aggregate_label, expresses, pair_label
from vneuron.errors import VneuronError, renamed, settings_named
from vneuron.locate.runs import LocateRun
from vneuron.runtime.store import file_sha256

# the corpus loader's settings, as a study names them for its outside evaluation data
EVAL_SETTINGS = {"dataset": "eval_dataset", "columns": "eval_columns", "strict": "eval_strict", "split": "eval_split",
                 "test_fraction": "eval_test_fraction"}


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
    with settings_named(EVAL_SETTINGS):
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
        "map": config.eval_map, "items": len(items), "strict": config.eval_strict,
        "notes": [renamed(note, EVAL_SETTINGS) for note in corpus.notes]}, _labels(corpus.items))


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
