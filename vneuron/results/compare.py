"""`vneuron compare`: do two located sets pick the same neurons, or the same depths?

Across languages (EN vs ZH), sites (gate vs down_in) and methods (Δp vs LAPE) the neuron space
is the same model's, so sets are compared neuron by neuron: overlap, Jaccard, the overlap two
random sets of those sizes would share (|A|·|B|/N) with a hypergeometric p, and the Spearman
correlation of the scores over every neuron (recomputed from each run's statistics with its own
method). Across models neurons have no common identity; there the sets are compared by where they
sit, per layer when the layer counts agree and always per relative-depth bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from vneuron.errors import VneuronError
from vneuron.locate.runs import stats_file
from vneuron.runtime.store import read_manifest, write_beside, write_csv

BINS = 10


@dataclass
class RunInfo:
    path: Path
    name: str
    manifest: dict
    sets: dict  # pole → NeuronSet

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def space(self) -> tuple:
        m = self.model
        return (m.get("model_id"), m.get("revision"), m.get("n_layers"), m.get("width"))

    @property
    def n_layers(self) -> int:
        return next(iter(self.sets.values())).n_layers

    def describe(self) -> dict[str, Any]:
        m, sel = self.manifest, self.manifest.get("selection", {})
        return {"run": str(self.path), "model": m["model"].get("model_id"), "layers": self.n_layers,
                "width": next(iter(self.sets.values())).width, "site": m.get("capture", {}).get("site"),
                "language": m.get("dataset", {}).get("language"), "method": sel.get("method"), "rule": sel.get("rule"),
                "top_k": sel.get("top_k"), "poles": list(self.sets)}

    def scores(self, pole: str) -> torch.Tensor | None:
        """Every neuron's score for ``pole`` by the run's own method (LAPE runs: Δp); None when the run's statistics
        cannot be read (``missing`` then says why)."""
        from vneuron.locate.capture import ActivationStats
        from vneuron.locate.scoring import contrast_scores

        opposite = self.sets[pole].meta.get("opposite") or dict(map(tuple, self.manifest.get("contrasts", []))).get(pole)
        if not opposite:
            return None
        if not hasattr(self, "_stats"):
            self._stats = None
            try:  # a re-selected run refers to its parent's statistics
                self._stats = ActivationStats.load(stats_file(self.path, self.manifest))
            except VneuronError as exc:
                self.missing = exc.problem
        if self._stats is None:
            return None
        method = self.manifest["selection"]["method"]
        return contrast_scores(self._stats, pole, opposite, method if method != "lape" else "delta_p").reshape(-1)


def open_run(path: str | Path) -> RunInfo:
    from vneuron.locate.scoring import NeuronSet

    path = Path(path)
    if not path.is_dir():
        raise VneuronError(f"{path} {'is not a directory' if path.exists() else 'does not exist'}", "pass locate run directories")
    manifest = read_manifest(path)
    if manifest.get("kind") != "locate":
        raise VneuronError(f"{path} is a {manifest.get('kind')!r} run; compare takes locate runs",
                           "pass the locate run directories (an ablate/steer run lives inside one)")
    sets = {p.stem: NeuronSet.load(p) for p in sorted((path / "neurons").glob("*.safetensors"))}
    if not sets:
        raise VneuronError(f"{path} holds no neuron sets", "rerun vneuron locate")
    return RunInfo(path, path.name, manifest, sets)


def hypergeom_sf(k: int, population: int, a: int, b: int) -> float:
    """P(X ≥ k) for the overlap X of a random a-set and b-set drawn from ``population``."""
    if k <= max(0, a + b - population):
        return 1.0
    top = min(a, b)
    if k > top:
        return 0.0

    def log_comb(n: int, r: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)

    denom = log_comb(population, b)
    logs = [log_comb(a, x) + log_comb(population - a, b - x) - denom for x in range(k, top + 1)]
    peak = max(logs)
    return min(1.0, math.exp(peak) * sum(math.exp(v - peak) for v in logs))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties sharing their average rank (Spearman's definition)."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / denom if denom else float("nan")


def depth_shares(neuron_set, bins: int = BINS) -> list[float]:
    depth = neuron_set.layers.double() / max(neuron_set.n_layers - 1, 1)
    idx = (depth * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    return (counts / max(len(neuron_set), 1)).tolist()


def mean_depth(neuron_set) -> float:
    return float((neuron_set.layers.double() / max(neuron_set.n_layers - 1, 1)).mean()) if len(neuron_set) else float("nan")


@dataclass
class Comparison:
    runs: list[RunInfo]
    poles: list[str]
    pairs: list[dict] = field(default_factory=list)  # one per (run a, run b, pole)
    layers: list[dict] = field(default_factory=list)  # per layer (same layer count) or per depth bin
    skipped: list[str] = field(default_factory=list)
    bins: int = BINS
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    @property
    def paths(self) -> list[str]:
        return [str(r.path) for r in self.runs]

    def matrices(self) -> dict[str, dict]:
        """Per pole: runs × runs Jaccard (same neuron space) or 1 − depth TV distance, and the Jaccard two random
        sets of the same sizes would have (``chance``; None where the runs share no neuron space)."""
        n = len(self.runs)
        out = {}
        for pole in self.poles:
            values: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
            chance: list[list[float | None]] = [[None] * n for _ in range(n)]
            measures = set()
            for p in self.pairs:
                if p["pole"] != pole:
                    continue
                v = p["jaccard"] if p["same_neurons"] else 1 - p["depth_tv"]
                measures.add("Jaccard" if p["same_neurons"] else "1 − depth TV")
                values[p["a"]][p["b"]] = values[p["b"]][p["a"]] = v
                if p["same_neurons"]:
                    expected = p["chance_overlap"]
                    chance[p["a"]][p["b"]] = chance[p["b"]][p["a"]] = expected / (p["size_a"] + p["size_b"] - expected)
            out[pole] = {"values": values, "chance": chance, "measure": " / ".join(sorted(measures))}
        return out

    def depth_profiles(self) -> dict[str, dict[str, list[float]]]:
        return {pole: {f"{k + 1}: {r.name}": depth_shares(r.sets[pole], self.bins) for k, r in enumerate(self.runs)}
                for pole in self.poles}

    def table_columns(self) -> list[str]:
        return ["pole", "runs", "|A|", "|B|", "overlap", "chance", "p", "Jaccard", "Spearman ρ", "depth A", "depth B", "depth TV"]

    def table_rows(self) -> list[list[str]]:
        rows = []
        for p in self.pairs:
            same = p["same_neurons"]
            rows.append([p["pole"], f"{p['a'] + 1}–{p['b'] + 1}", str(p["size_a"]), str(p["size_b"]),
                         str(p["overlap"]) if same else "—", f"{p['chance_overlap']:.1f}" if same else "—",
                         _p(p["p_overlap"]) if same else "—", f"{p['jaccard']:.3f}" if same else "—",
                         f"{p['spearman']:.3f}" if p["spearman"] is not None else "—",
                         f"{p['mean_depth_a']:.2f}", f"{p['mean_depth_b']:.2f}", f"{p['depth_tv']:.3f}"])
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.describe() for r in self.runs], "poles": self.poles, "skipped_poles": self.skipped, "notes": self.notes,
                "pairs": self.pairs, "layers": self.layers, "depth_bins": self.bins,
                "matrices": self.matrices()}

    def write_csv(self, out: Path) -> tuple[Path, Path]:
        """OUT (one row per pair of runs and pole) and OUT-layers.csv (per layer or depth bin); both or, if the disk
        refuses, a rescue directory the message names."""
        out = Path(out)
        rows = [{"run_a": self.paths[p["a"]], "run_b": self.paths[p["b"]], **{k: v for k, v in p.items() if k not in ("a", "b")}}
                for p in self.pairs]
        layers = [{"run_a": self.paths[r["a"]], "run_b": self.paths[r["b"]], **{k: v for k, v in r.items() if k not in ("a", "b")}}
                  for r in self.layers]
        layers_path = out.with_name(out.stem + "-layers.csv")

        def write(directory: Path) -> None:
            write_csv(directory / out.name, rows)
            write_csv(directory / layers_path.name, layers)

        write_beside(out.parent, [out.name, layers_path.name], write, what="comparison tables")
        return out, layers_path


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _poles(runs: list[RunInfo], dimensions: Sequence[str] | None, strict: bool) -> tuple[list[str], list[str]]:
    if dimensions:
        for pole in dimensions:
            for r in runs:
                if pole not in r.sets:
                    raise VneuronError(f"Pole {pole!r} is not in run {r.path} (it has: {', '.join(r.sets)})",
                                       "pass `dimensions` with poles every run has")
        return list(dimensions), []
    order = list(runs[0].sets) + [p for r in runs[1:] for p in r.sets if p not in runs[0].sets]
    shared = [p for p in order if all(p in r.sets for r in runs)]
    partial = [p for p in order if p not in shared]
    if not shared:
        raise VneuronError("The runs have no pole in common (" + "; ".join(f"{r.path}: {', '.join(r.sets)}" for r in runs) + ")",
                           "compare runs that located the same poles")
    if partial and strict:
        pole = partial[0]
        have = [str(r.path) for r in runs if pole in r.sets]
        raise VneuronError(f"Pole {pole!r} is only in {', '.join(have)}",
                           f"pass `dimensions` with poles every run has: {','.join(shared)}")
    return shared, partial


def compare_runs(paths: Sequence[str | Path], dimensions: Sequence[str] | None = None, *, strict: bool = True,
                 bins: int = BINS) -> Comparison:
    """Every pair of runs, every shared pole; all inputs checked before anything is computed."""
    if len(paths) < 2:
        raise VneuronError("compare needs at least two runs", "pass two or more locate run directories")
    runs = [open_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:  # same directory names (e.g. two runs/en): show a parent too
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    poles, skipped = _poles(runs, dimensions, strict)
    bins = max(1, min(bins, *(r.n_layers for r in runs)))  # no bin without a layer in it
    result = Comparison(runs, poles, skipped=skipped, bins=bins)
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            for pole in poles:
                _pair(result, i, j, pole)
    return result


def _pair(result: Comparison, i: int, j: int, pole: str) -> None:
    a, b = result.runs[i], result.runs[j]
    sa, sb = a.sets[pole], b.sets[pole]
    same = a.space == b.space and (sa.n_layers, sa.width) == (sb.n_layers, sb.width)
    total = sa.n_layers * sa.width
    shares_a, shares_b = depth_shares(sa, result.bins), depth_shares(sb, result.bins)
    row: dict[str, Any] = {"a": i, "b": j, "pole": pole, "same_neurons": same, "size_a": len(sa), "size_b": len(sb),
                           "overlap": None, "jaccard": None, "chance_overlap": None, "p_overlap": None, "spearman": None,
                           "mean_depth_a": mean_depth(sa), "mean_depth_b": mean_depth(sb),
                           "depth_tv": 0.5 * sum(abs(x - y) for x, y in zip(shares_a, shares_b))}
    if same:
        inter = int(torch.isin(sa.flat, sb.flat).sum())
        union = len(sa) + len(sb) - inter
        row.update({"overlap": inter, "jaccard": inter / union if union else 1.0,
                    "chance_overlap": len(sa) * len(sb) / total, "p_overlap": hypergeom_sf(inter, total, len(sa), len(sb))})
        scores_a, scores_b = a.scores(pole), b.scores(pole)
        if scores_a is not None and scores_b is not None:
            row["spearman"] = spearman(scores_a, scores_b)
        for run in (a, b):
            note = f"Spearman ρ not computed with {run.name}: {getattr(run, 'missing', '')}"
            if getattr(run, "missing", None) and note not in result.notes:
                result.notes.append(note)
    result.pairs.append(row)
    if sa.n_layers == sb.n_layers:
        counts_a, counts_b = sa.per_layer(), sb.per_layer()
        for layer in range(sa.n_layers):
            entry = {"a": i, "b": j, "pole": pole, "layer": layer, "depth_bin": None,
                     "relative_depth": layer / max(sa.n_layers - 1, 1), "count_a": counts_a[layer], "count_b": counts_b[layer],
                     "overlap": None}
            if same:
                entry["overlap"] = int(torch.isin(sa.flat[sa.layers == layer], sb.flat[sb.layers == layer]).sum())
            result.layers.append(entry)
    else:
        for k in range(result.bins):
            result.layers.append({"a": i, "b": j, "pole": pole, "layer": None, "depth_bin": k,
                                  "relative_depth": (k + 0.5) / result.bins, "count_a": round(shares_a[k] * len(sa)),
                                  "count_b": round(shares_b[k] * len(sb)), "overlap": None})


def compare_table(result: Comparison):
    """A rich table that fits 80 columns (runs are numbered; the legend is the caption)."""
    from rich.table import Table

    from vneuron.data.schema import SHORT

    from rich import box

    table = Table(title="Overlap of located sets", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, caption_justify="left",
                  caption="; ".join(f"{k + 1} = {r.name} ({r.describe()['site']}, {r.describe()['language']}, "
                                    f"{r.describe()['method']})" for k, r in enumerate(result.runs)) +
                  ". chance = |A|·|B|/N; p = hypergeometric P(≥ overlap); depth = mean relative depth.")
    for column in ("pole", "runs", "|A|,|B|", "∩ (chance)", "p", "Jacc.", "ρ", "depth", "TV"):
        table.add_column(column, justify="right", no_wrap=True)
    for p in result.pairs:
        same = p["same_neurons"]
        table.add_row(SHORT.get(p["pole"], p["pole"][:10]), f"{p['a'] + 1}–{p['b'] + 1}", f"{p['size_a']},{p['size_b']}",
                      f"{p['overlap']} ({p['chance_overlap']:.1f})" if same else "—", _p(p["p_overlap"]) if same else "—",
                      f"{p['jaccard']:.2f}" if same else "—", f"{p['spearman']:.2f}" if p["spearman"] is not None else "—",
                      f"{p['mean_depth_a']:.2f}/{p['mean_depth_b']:.2f}", f"{p['depth_tv']:.2f}")
    return table
