"""The run directory: what users keep. JSON manifest, safetensors tensors, CSV tables; no pickle.

A run is written into a temporary sibling directory and renamed into place at the end, so a
failure never leaves a half-written run behind. Secrets (API keys) never enter a manifest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import VneuronError

MANIFEST = "manifest.json"
STATS = "stats.safetensors"
NEURONS_DIR = "neurons"
NEURONS_CSV = "neurons.csv"
_SECRET = re.compile(r"^(.*api[_-]?key|.*secret|.*password|authorization|token|access_token|hf_token|ndif_api_key)$", re.I)


_UNSAFE = re.compile(r"[^\w.-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def set_filename(label: str) -> str:
    """A file name for a pole's neuron set that is safe everywhere and distinct for distinct labels.

    Letters of any script stay ("友善"); anything else ("|", "/", ":", spaces) becomes "_", "|" reads
    "_vs_", "*" "all", and then a short hash of the label keeps "a|b" and "a_vs_b" apart.
    """
    stem = _UNSAFE.sub("_", label.replace("|", "_vs_").replace("*", "all")).strip("._") or "set"
    if stem != label or stem.lower() in _RESERVED:
        stem = f"{stem[:80]}-{hashlib.sha256(label.encode('utf-8')).hexdigest()[:8]}"
    return stem + ".safetensors"


def set_filenames(labels: list[str]) -> dict[str, str]:
    """label → file name for a run's neuron sets; names equal up to case (one file on macOS/Windows) are refused."""
    names = {label: set_filename(label) for label in labels}
    seen: dict[str, str] = {}
    for label, name in names.items():
        other = seen.setdefault(name.casefold(), label)
        if other != label:
            raise VneuronError(f"Poles {other!r} and {label!r} would share the file {NEURONS_DIR}/{name}",
                               "rename one of the labels (e.g. with --columns or in the data) so they differ by more than case")
    return names


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a directory, over its files' relative paths and bytes (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vneuron", "nnsight", "transformers", "torch", "safetensors"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def default_run_dir(kind: str, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.split("/")[-1]).strip("-")
    return Path("runs") / f"{kind}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def scrub(value: Any) -> Any:
    """Drop anything that looks like a credential before it is written."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(scrub(data), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise VneuronError(f"{run_dir} is not a vneuron run (no {MANIFEST})", "pass a directory written by vneuron locate")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VneuronError(f"{path} is not valid JSON ({exc.msg})", "restore it or rerun") from None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def check_fresh(run_dir: Path) -> None:
    """Fail before any work if ``run_dir`` would have to overwrite something."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise VneuronError(f"{run_dir} already exists and is not empty", "choose another --out, or pass --from to re-select from that run")


@contextmanager
def staged(run_dir: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``run_dir`` only if the block succeeds.

    With ``replace``, an existing run is swapped out atomically at the end (used when a run is
    re-selected from its own statistics); otherwise an existing non-empty directory is an error.
    """
    run_dir = Path(run_dir)
    if not replace:
        check_fresh(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.with_name(f".{run_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if replace and run_dir.exists():
        shutil.copytree(run_dir, tmp)
    else:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = run_dir.with_name(f".{run_dir.name}.old{os.getpid()}")
    if run_dir.exists():
        os.replace(run_dir, old)
    os.replace(tmp, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def base_manifest(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "versions": versions(),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(scrub(row), ensure_ascii=False) + "\n")
