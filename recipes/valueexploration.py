"""Recipe: the ValueExploration pipeline (LAPE-style value neurons) at small scale.

1. Statistics per Schwartz dimension (prompt mode), LAPE entropy selection over the four
   dimensions: low-entropy neurons whose activation probability passes the q-quantile bar
   (q = 0.95 "decision" neurons; q = 0.5 "semantic" neurons).
2. For a dimension D: amplify ×5 the neurons of D (supporting) and zero those of its
   opposite (conflicting), and measure the orientation toward D by forced choice — beside
   random neuron sets with the same per-layer counts for both edits.

    python recipes/valueexploration.py --limit 32 --controls 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vneuron
from vneuron.data.schema import OPPOSITE
from vneuron.validate.edits import Edit
from vneuron.runtime.progress import line_progress
from vneuron.validate.evaluate import bootstrap_ci, forced_choice
from vneuron import LocateRun
from vneuron.validate.items import items_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--language", default="en")
    parser.add_argument("--limit", type=int, default=32, help="locating items per dimension")
    parser.add_argument("--eval-limit", type=int, default=8, help="evaluation items per pole side")
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--top-rate", type=float, default=0.01)
    parser.add_argument("--amplify", type=float, default=5.0)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--dimension", default="self_transcendence")
    parser.add_argument("--out", default="runs/recipe-valueexploration")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    say = line_progress()  # a line per stage on stderr, so a long run is never silent

    model = vneuron.load_model(args.model)
    config = vneuron.LocateConfig(language=args.language, limit=args.limit, method="lape", lape_quantile=args.quantile,
                                  lape_top_rate=args.top_rate)
    located = vneuron.locate(model, config, out=out / "locate", progress=say)
    print({pole: len(s) for pole, s in located.sets.items()}, f"LAPE neurons (q={args.quantile})")

    pole, opposite = args.dimension, OPPOSITE[args.dimension]
    support, conflict = located.sets[pole], located.sets[opposite]
    items = items_for(LocateRun.open(located.run_dir).items("test"), pole, args.eval_limit)

    def orientation(sup, con):
        edits = [Edit(sup, "scale", gamma=args.amplify), Edit(conflict if con is None else con, "zero")]
        return forced_choice(model, items, edits).toward(pole)

    base = forced_choice(model, items).toward(pole)
    edited = orientation(support, conflict)
    controls = []
    for s in range(args.controls):
        controls.append(orientation(support.random_matched(s), conflict.random_matched(10_000 + s)))
        say("random controls", s + 1, args.controls)
    control_effects = torch.stack([c - base for c in controls]).mean(1)
    diff = (edited - base) - torch.stack([c - base for c in controls]).mean(0)
    result = {"dimension": pole, "support_neurons": len(support), "conflict_neurons": len(conflict), "items": len(items),
              "baseline": float(base.mean()), "after": float(edited.mean()), "effect": float((edited - base).mean()),
              "control_effects": control_effects.tolist(), "effect_minus_control": float(diff.mean()),
              "effect_minus_control_ci": bootstrap_ci(diff),
              "p_higher": (1 + int((control_effects >= (edited - base).mean()).sum())) / (1 + len(controls))}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
