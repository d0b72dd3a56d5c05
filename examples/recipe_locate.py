"""A recipe: locate value neurons at both neuron sites and compare them, through the Python API.

It does what `vneuron locate` does, twice, on one loaded model, then asks the questions a
careful study asks: how stable is each ranking across halves of the data, and do the two sites
pick the same units?

    python examples/recipe_locate.py --limit 40          # a quick pass (about a minute)
    python examples/recipe_locate.py --language zh       # the Chinese corpus
"""

from __future__ import annotations

import argparse

import torch

import vneuron


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--language", default="en")
    parser.add_argument("--limit", type=int, default=None, help="items per dimension")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--out", default="runs/recipe")
    args = parser.parse_args()
    torch.set_num_threads(2)

    model = vneuron.load_model(args.model)
    results = {}
    for site in ("gate", "down_in"):
        config = vneuron.LocateConfig(language=args.language, limit=args.limit, site=site, top_k=args.top_k)
        results[site] = vneuron.locate(model, config, out=f"{args.out}-{site}")
        print(f"[{site}] written to {results[site].run_dir}")

    print(f"\n{'dimension':22s} {'site':8s} {'split-half r':>12s} {'top-k overlap':>14s}")
    for site, result in results.items():
        for label, stab in result.stability.items():
            print(f"{label:22s} {site:8s} {stab['pearson_r']:12.2f} {stab['overlap']:8d} / {stab['k']}")
    print("\nSame units at both sites (Jaccard of the top-k):")
    for label in results["gate"].sets:
        gate, down = results["gate"].sets[label], results["down_in"].sets[label]
        # the sites index the same units (gate activation vs act·up of the same neuron)
        same = vneuron.NeuronSet(gate.site, gate.n_layers, gate.width, down.flat, down.scores)
        print(f"  {label:22s} {gate.jaccard(same):.3f}   gate layers: {gate.per_layer()}")


if __name__ == "__main__":
    main()
