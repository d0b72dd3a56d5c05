"""Recipe: the ValueLocate pipeline (Su et al., Findings of EMNLP 2025) at small scale.

1. Generation mode: each scenario is asked under a value description and the model answers;
   statistics count the generated tokens only.
2. Selection: Δp = p_pole − p_opposite with ValueLocate's rule, max(2000, #{Δp ≥ 0.1}).
3. Validation: the add-boost a ← a + γ·v·σ(10(Δp − 0.15)) over a γ sweep, beside matched
   random controls.

    python recipes/valuelocate.py --limit 16 --controls 5          # a quick look (minutes)
    python recipes/valuelocate.py --model smollm2-135m --gamma 0,1,2,4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vneuron
from vneuron.runtime.progress import line_progress
from vneuron.results.tables import markdown_summary
from vneuron import ValidateConfig, steer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--language", default="en")
    parser.add_argument("--limit", type=int, default=16, help="locating items per dimension")
    parser.add_argument("--eval-limit", type=int, default=8, help="evaluation items per pole side")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--gamma", default="0,1,2,4")
    parser.add_argument("--min-count", type=int, default=2000, help="ValueLocate keeps max(min-count, #{Δp ≥ threshold})")
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--dimension", default="self_transcendence")
    parser.add_argument("--out", default="runs/recipe-valuelocate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    say = line_progress()  # a line per stage on stderr, so a long run is never silent

    model = vneuron.load_model(args.model)
    config = vneuron.LocateConfig(language=args.language, limit=args.limit, mode="generate", max_new_tokens=args.max_new_tokens,
                                  method="delta_p", rule="valuelocate", threshold=args.threshold,
                                  min_count=args.min_count)
    located = vneuron.locate(model, config, out=out / "locate", progress=say)
    print({pole: len(s) for pole, s in located.sets.items()}, f"neurons selected by the {args.min_count} / {args.threshold} rule")
    steer_config = ValidateConfig(mode="add", controls=args.controls, limit=args.eval_limit, dimensions=[args.dimension])
    steered = steer(located.run_dir, [float(g) for g in args.gamma.split(",")], steer_config, model=model, progress=say)
    summary = markdown_summary(located, None, steered)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
