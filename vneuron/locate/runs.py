"""A finished locate run on disk: its file names, its statistics (own or a parent's, checked by hash), and
``LocateRun``, what ablate, steer, power, report and cards open."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vneuron.data import load_corpus
from vneuron.data.schema import Corpus, Item
from vneuron.data.templates import DEFAULT as DEFAULT_TEMPLATE
from vneuron.errors import VneuronError
from vneuron.locate.capture import ActivationStats
from vneuron.locate.residual import RESIDUAL, ResidualStats
from vneuron.locate.scoring import NeuronSet
from vneuron.runtime.store import MANIFEST, file_sha256, read_manifest, require, set_filename

STATS = "stats.safetensors"
NEURONS_DIR = "neurons"
NEURONS_CSV = "neurons.csv"


def set_filenames(labels: list[str]) -> dict[str, str]:
    """label → file name for a run's neuron sets; names equal up to case (one file on macOS/Windows) are refused."""
    names = {label: set_filename(label) for label in labels}
    seen: dict[str, str] = {}
    for label, name in names.items():
        other = seen.setdefault(name.casefold(), label)
        if other != label:
            raise VneuronError(f"Poles {other!r} and {label!r} would share the file {NEURONS_DIR}/{name}",
                               "rename one of the labels (e.g. with `columns` or in the data) so they differ by more than case")
    return names


def stats_file(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The statistics of a run: its own file, or the file a re-selected run refers to (checked by hash)."""
    run_dir = Path(run_dir)
    own = run_dir / STATS
    if own.is_file():
        return own
    ref = manifest.get("statistics")
    if not isinstance(ref, dict) or not ref.get("file"):
        raise VneuronError(f"{run_dir} has no {STATS}", "restore it, or rerun vneuron locate")
    candidates = [run_dir / ref["file"], Path(ref.get("absolute") or ref["file"])]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise VneuronError(f"{run_dir} re-selects from statistics in {ref.get('run', ref['file'])}, which are missing",
                           "restore that parent run next to this one, or rerun vneuron locate")
    if ref.get("sha256") and file_sha256(found) != ref["sha256"]:
        raise VneuronError(f"The statistics {found} that {run_dir} was selected from have changed since",
                           "restore the parent run, or re-select again from it (`from_run`)")
    return found


def residual_file(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The residual statistics beside a run's statistics (its own, or the parent's of a re-selected run, checked by
    hash); a run located before they were recorded is a one-line error saying what can add them."""
    path = stats_file(run_dir, manifest).parent / RESIDUAL
    if not path.is_file():
        if manifest.get("residual"):
            raise VneuronError(f"{run_dir} records residual statistics in {path}, which is missing",
                               "restore it from the run, or rerun vneuron locate")
        raise VneuronError(f"{run_dir} was located before residual means were recorded (it has no {RESIDUAL})",
                           "rerun `vneuron locate` with its model and corpus (`--force` replaces the run in place); `--from` "
                           "cannot add them: it only re-selects from saved statistics")
    recorded = (manifest.get("residual") or {}).get("sha256")
    if recorded and file_sha256(path) != recorded:
        raise VneuronError(f"The residual statistics {path} that {run_dir} refers to have changed since",
                           "restore the parent run, or re-select again from it (`from_run`)")
    return path


@dataclass
class LocateRun:
    """What validation needs from a locate run."""

    path: Path
    manifest: dict
    stats: ActivationStats
    sets: dict[str, NeuronSet]
    evaluation: dict | None = None  # set by ablate / steer: the data their numbers come from
    _residual: ResidualStats | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "LocateRun":
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("kind") != "locate":
            raise VneuronError(f"{path} is not a locate run", "pass a directory written by vneuron locate")
        require(manifest, path, "model", "dataset")
        if not isinstance(manifest["model"].get("revision"), str):
            raise VneuronError(f"{path / MANIFEST} records no model revision",
                               "restore the manifest vneuron wrote, or rerun vneuron locate")
        sets: dict[str, NeuronSet] = {}
        for file in sorted((path / NEURONS_DIR).glob("*.safetensors")):
            neuron_set = NeuronSet.load(file)
            label = neuron_set.meta.get("label") or file.stem  # file names are made safe; the label is inside
            if label in sets:
                raise VneuronError(f"{path}: two neuron sets for the pole {label!r}", f"remove the stale one from {path / NEURONS_DIR}")
            sets[label] = neuron_set
        if not sets:
            raise VneuronError(f"{path} holds no neuron sets", "rerun vneuron locate")
        stats = ActivationStats.load(stats_file(path, manifest))
        stats.groups = manifest["dataset"].get("aggregates") or {}
        return cls(path, manifest, stats, sets)

    def residual(self) -> ResidualStats:
        """The run's residual sums and probe rows (``vneuron.locate.residual``), read once."""
        if self._residual is None:
            self._residual = ResidualStats.load(residual_file(self.path, self.manifest))
            self._residual.groups = self.stats.groups
        return self._residual

    def items(self, split: str) -> list[Item]:
        return self.corpus(split).items

    def corpus(self, split: str) -> Corpus:
        """The run's own corpus, ``split`` of it, in the language it was located in."""
        data = self.manifest["dataset"]
        # runs made before hash splits held every unsplit row in train: fraction 0 keeps that
        corpus = load_corpus(data.get("spec"), columns=data.get("columns"), test_fraction=data.get("test_fraction", 0.0),
                             strict=bool(data.get("strict")))
        corpus = corpus.select(split=split, language=data.get("language"))
        if not corpus.items:
            raise VneuronError(f"The locate run's corpus has no paired scenarios in split {split!r}",
                               "forced choice needs scenario items with two actions; use `split` all, a paired corpus, "
                               "or an `eval_dataset` FILE")
        return corpus

    def model_spec(self) -> str:
        """Where to load the run's model from: its recorded absolute path (so the run works from any folder), else what
        was typed (an alias or hub id, or a path of a run made before absolute paths were recorded)."""
        model = self.manifest["model"]
        path, spec = model.get("path"), model.get("spec") or model.get("model_id")
        if path and Path(path).exists():
            return path
        if model.get("kind") in ("directory", "gguf"):
            if Path(spec).expanduser().exists():
                return spec
            raise VneuronError(f"The model this run located with ({path or spec}) is no longer there",
                               "pass `model` pointing at it (the same weights; its revision is checked)")
        return spec

    def template(self) -> str:
        """The template spec the run located with (third_person for runs made before templates)."""
        return (self.manifest.get("template") or {}).get("spec") or DEFAULT_TEMPLATE
