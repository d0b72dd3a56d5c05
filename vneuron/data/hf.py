"""Hugging Face ``datasets``: a ``save_to_disk`` directory, or ``hf:NAME[:SPLIT]`` from the hub.

The rows are read like a user's file (paired scenarios, C-voice rows or labelled texts, with the
same ``--columns`` mapping). ``ClassLabel`` columns are turned into their label names. Splits: a
row's own ``split`` column wins; otherwise the dataset split decides — train / training /
validation / valid / dev → "train", test → "test" (another split name is an error; pick a split
with ``hf:NAME:SPLIT``). ``datasets`` is imported only here and only when needed: it is an
optional extra (``pip install 'vneuron[datasets]'``). The hub is asked only when online:
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, or no connection to the hub within a few seconds,
is a one-line error.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vneuron.errors import VneuronError

SPLIT_NAMES = {"train": "train", "training": "train", "validation": "train", "valid": "train", "dev": "train", "test": "test"}
INSTALL = "install the optional extra: pip install 'vneuron[datasets]'"


def datasets_module():
    try:
        import datasets
    except ImportError:
        raise VneuronError("Reading Hugging Face datasets needs the datasets package", INSTALL) from None
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _split(where: str, name: str | None) -> str | None:
    if name is None:
        return None
    split = SPLIT_NAMES.get(str(name).split("[")[0].lower())
    if split is None:
        raise VneuronError(
            f"{where}: split {name!r} is neither train nor test",
            "add a 'split' column (train/test), rename the split, or pick one with hf:NAME:SPLIT",
        )
    return split


def _rows(dataset) -> list[dict[str, Any]]:
    datasets = datasets_module()
    rows = dataset.to_list()
    labels = {k: f for k, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)}
    for row in rows:
        for column, feature in labels.items():
            if isinstance(row.get(column), int) and row[column] >= 0:
                row[column] = feature.int2str(row[column])
    return rows


Part = tuple[str, str | None, str | None, list[dict[str, Any]]]  # where, split's own name, vneuron split, rows


def _parts(name: str, loaded) -> list[Part]:
    datasets = datasets_module()
    if isinstance(loaded, datasets.DatasetDict):
        return [(f"{name} [{split}]", str(split), _split(f"{name} [{split}]", split), _rows(part)) for split, part in loaded.items()]
    split = getattr(loaded, "split", None)
    return [(name, None, _split(name, str(split)) if split is not None else None, _rows(loaded))]


def load_saved(path: Path) -> list[Part]:
    """(where, split name, vneuron split or None, rows) per split of a save_to_disk directory."""
    datasets = datasets_module()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # a broken or foreign directory: many exception types
        raise VneuronError(f"{path} is not a readable save_to_disk directory ({exc.__class__.__name__})",
                           "re-create it with Dataset.save_to_disk") from None
    return _parts(str(path), loaded)


def _offline() -> str | None:
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return f"{host} cannot be reached"
    return None


def load_hub(spec: str) -> list[Part]:
    """``hf:NAME[:SPLIT]`` → (where, split name, vneuron split, rows) per split, only when the hub is reachable."""
    name, _, split = spec[len("hf:"):].partition(":")
    if not name:
        raise VneuronError(f"{spec}: no dataset name", "write hf:OWNER/NAME or hf:OWNER/NAME:SPLIT")
    datasets = datasets_module()
    reason = _offline()
    if reason:
        raise VneuronError(
            f"Cannot load {spec} from the Hugging Face hub: offline ({reason})",
            "go online, or save it with Dataset.save_to_disk where you are online and pass that directory",
        )
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as exc:  # hub errors come in many types
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise VneuronError(f"Cannot load {spec} from the Hugging Face hub ({exc.__class__.__name__}: {message})",
                           "check the dataset name and split") from None
    return _parts(spec, loaded)
