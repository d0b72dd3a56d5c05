"""Recipe: locate → ablate → steer on one model, then a short Markdown summary.

    python recipes/locate_ablate_steer.py                          # default model, full settings (about an hour on 2 cores)
    python recipes/locate_ablate_steer.py --limit 8 --controls 5   # a quick pass (a few minutes)

Writes OUT/locate (the locate run, with ablate-*/ and steer-*/ inside) and OUT/summary.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vneuron
from vneuron.runtime.progress import line_progress
from vneuron.results.tables import markdown_summary
from vneuron import ValidateConfig, ablate, steer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--language", default="en")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="evaluation items per pole side")
    parser.add_argument("--locate-limit", type=int, default=None, help="locating items per dimension (default: all)")
    parser.add_argument("--gamma", default="0,0.5,2,4", help="steering factors (scale)")
    parser.add_argument("--steer-dimension", default="self_transcendence")
    parser.add_argument("--out", default="runs/recipe-locate-ablate-steer")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    say = line_progress()  # a line per stage on stderr, so a long run is never silent

    model = vneuron.load_model(args.model)
    located = vneuron.locate(model, vneuron.LocateConfig(language=args.language, top_k=args.top_k, limit=args.locate_limit),
                             out=out / "locate",
                             progress=say)
    config = ValidateConfig(controls=args.controls, limit=args.limit, generations=2)
    ablated = ablate(located.run_dir, config, model=model, progress=say)
    steer_config = ValidateConfig(mode="scale", controls=args.controls, limit=args.limit, generations=0,
                                  dimensions=[args.steer_dimension])
    steered = steer(located.run_dir, [float(g) for g in args.gamma.split(",")], steer_config, model=model, progress=say)
    summary = markdown_summary(located, ablated, steered)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
