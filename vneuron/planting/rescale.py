"""Rescale a planted model directory's write to another strength (``vneuron.planting.strength``), as a new directory."""

from __future__ import annotations

import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

from vneuron.config import PlantConfig
from vneuron.errors import VneuronError
from vneuron.models.loading import dir_revision, load_model
from vneuron.planting.check import neutral_check
from vneuron.planting.strength import fit_strength
from vneuron.planting.surgery import PLANT_DIR, WriteScale, original_weights, slices_fingerprint, write_slices
from vneuron.planting.train import axis_items, per_side, preferences, split_validation
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.store import check_fresh, read_manifest, write_json, write_run
from vneuron.validate.side_effects import load_neutral

Progress = Callable[[str, int, int], None]


@one_writer
def rescale(plant_dir: str | Path, target: float, out: str | Path, *, progress: Progress | None = None) -> Path:
    """A copy of the planted model ``plant_dir`` whose write is scaled to a validation preference of ``target``."""
    say = progress or (lambda stage, done, total: None)
    src, out = Path(plant_dir), Path(out)
    claim(out)
    check_fresh(out)
    manifest = read_manifest(src / PLANT_DIR)
    known = {f.name for f in fields(PlantConfig)}
    config = PlantConfig(**{k: (tuple(v) if k in ("choices", "train_choices") and v is not None else v)
                            for k, v in manifest["config"].items() if k in known})
    if not 0.5 < target < 1:
        raise VneuronError(f"`target` must lie strictly between 0.5 and 1, got {target}", "e.g. 0.7")
    started = time.time()
    _, train_all, test, _, _ = axis_items(config)
    val, train = split_validation(train_all, config)
    model = load_model(str(src), progress=lambda m: say(m, 0, 0))
    say(f"Scaling the write to a validation preference of {target}", 0, 0)
    strength = fit_strength(model, WriteScale(write_slices(model, src)), val, config.dimension, config.choices, target,
                            config.batch_tokens)
    report_train = per_side(train, config.report_limit)
    after = {"train": preferences(model, report_train, config.dimension, config.choices, config.batch_tokens),
             "test": preferences(model, test, config.dimension, config.choices, config.batch_tokens)}
    prose = load_neutral(config.language, config.neutral)
    check = neutral_check(model, lambda: original_weights(model, src), prose)
    fingerprint = slices_fingerprint(model, src)

    def write(directory: Path) -> None:
        config_obj = model.hf_model.config
        config_obj.vneuron_plant = {**(getattr(config_obj, "vneuron_plant", None) or {}), "weights_fingerprint": fingerprint,
                                    "strength": target}
        model.hf_model.save_pretrained(directory)
        model.tokenizer.save_pretrained(directory)
        shutil.copytree(src / PLANT_DIR, directory / PLANT_DIR)
        new = {**manifest, "weights_fingerprint": fingerprint, "preference": {"before": manifest["preference"]["before"], "after": after},
               "side_effects": {**check, "neutral": prose.source},
               "strength": {**strength, "rescaled_from": str(src.resolve()), "rescale_s": round(time.time() - started, 1)}}
        new["revision"] = f"dir:{dir_revision(directory)}"
        write_json(directory / PLANT_DIR / "manifest.json", new)

    write_run(out, write, what="rescaled planted model")
    return out
