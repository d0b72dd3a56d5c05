"""`--json`: one JSON object on stdout per command, with the numbers the tables show.

Tables are not printed then and progress stays on stderr, so ``vneuron locate --json | jq`` and
``json.loads(subprocess.run(...).stdout)`` just work. NaN and infinities become null (strict JSON).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(obj: dict) -> None:
    """Write exactly one JSON object (and a newline) to stdout."""
    sys.stdout.write(json.dumps(clean(obj), ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def locate_json(result) -> dict:
    """What `vneuron locate` shows: per pole the selected count, per-layer counts, stability (with its guard-rail),
    null, every selected neuron (the table shows the top `--show`; JSON readers get the whole set) and the held-out
    probes' AUROC per layer with CIs; beside them the residual file and how the probes were fitted."""
    from vneuron.results.guardrails import stability_guard

    m = result.manifest
    poles: dict[str, dict] = {}
    for row in result.rows:
        pole = poles.setdefault(row["dimension"], {"opposite": row["opposite"] or None, "rows": []})
        pole["rows"].append(row)
    out = {}
    for label, neuron_set in result.sets.items():
        rows = poles.get(label, {"opposite": None, "rows": []})
        out[label] = {"opposite": rows["opposite"], "count": len(neuron_set), "per_layer": neuron_set.per_layer(),
                      "stability": result.stability.get(label) or None, "stability_guard": stability_guard(result.stability.get(label)),
                      "null": (m.get("null") or {}).get(label), "neurons": rows["rows"],
                      "probes": ((m.get("probes") or {}).get("poles") or {}).get(label)}
    probes = {k: v for k, v in (m.get("probes") or {}).items() if k != "poles"} or None  # how they were fitted
    return {"kind": "locate", "run_dir": str(result.run_dir), "model": m.get("model"), "dataset": m.get("dataset"),
            "capture": {k: m.get("capture", {}).get(k) for k in ("site", "mode", "prompts", "batches", "tokens")},
            "selection": m.get("selection"), "timings": m.get("timings"), "residual": m.get("residual"), "probes": probes,
            "poles": out}


def validation_json(result) -> dict:
    """What `vneuron ablate` / `steer` show: the manifest's per-pole results (each with its direction baselines,
    ``results[].directions``; steer: ``results[].curve[].directions``) and where they were written."""
    from vneuron.results.guardrails import validation_guards, warnings_of

    m = result.manifest
    guards = validation_guards(m, result.summaries)
    return {"kind": m.get("kind"), "run_dir": str(result.run_dir), "locate_run": m.get("locate_run"),
            "guards": guards, "warnings": warnings_of(guards),
            "model": {k: m.get("model", {}).get(k) for k in ("model_id", "revision", "n_layers", "width")},
            "config": m.get("config"), **({"gammas": m["gammas"]} if "gammas" in m else {}), "directions": m.get("directions"),
            **{k: m[k] for k in ("neutral", "judge") if k in m}, "results": result.summaries}
