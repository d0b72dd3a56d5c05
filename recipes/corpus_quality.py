"""Recipe: measured quality of a corpus (by default the built-in one), for its data card.

Per language, with one loaded model:

1. Split-half stability of neuron selection. ``vneuron.locate`` on the train split with
   ``folds=2``: every scenario is hashed (by item id) into one of two disjoint halves, neurons
   are scored on each half separately, and the run reports, per pole, the Pearson correlation of
   the two halves' scores over all neurons and the overlap of their top-k sets (count, Jaccard,
   and the overlap expected by chance, k²/N).
2. Forced choice on the test split. ``vneuron.evaluate.forced_choice``: both actions are listed
   in the prompt, in both orders, and the model "chooses" by the likelihood of each action's
   text as the continuation. Per dimension (items grouped by the dimension their pole option
   expresses): accuracy = share of items with p_pole > 0.5 (p_pole averaged over both orders),
   its 95% Wilson interval, the same accuracy in each order, mean p_pole, and the order effect,
   mean(p_pole | pole listed first − p_pole | pole listed second).

Prints a Markdown table and writes OUT/quality.md and OUT/quality.json (plus one locate run per
language under OUT/locate-LANG).

    python recipes/corpus_quality.py                                   # default model, en + zh
    python recipes/corpus_quality.py --languages zh --top-k 500 --out runs/cq-zh
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import vneuron
from vneuron.data.schema import DIMENSIONS
from vneuron.evaluate import forced_choice


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def choice_summary(p_order: torch.Tensor) -> dict:
    """Accuracy, per-order accuracy, mean p_pole and order effect of [n, 2] choice probabilities."""
    n = int(p_order.shape[0])
    p_pole = p_order.mean(1)
    correct = int((p_pole > 0.5).sum())
    lo, hi = wilson(correct, n)
    return {
        "n": n,
        "accuracy": correct / n,
        "accuracy_ci95": [lo, hi],
        "accuracy_pole_first": float((p_order[:, 0] > 0.5).double().mean()),
        "accuracy_pole_second": float((p_order[:, 1] > 0.5).double().mean()),
        "mean_p_pole": float(p_pole.mean()),
        "order_effect": float((p_order[:, 0] - p_order[:, 1]).mean()),
    }


def order_dimensions(labels) -> list[str]:
    rank = {d: i for i, d in enumerate(DIMENSIONS)}
    return sorted(labels, key=lambda d: (rank.get(d, len(rank)), d))


def markdown(results: dict, meta: dict) -> str:
    k = meta["top_k"]
    lines = [
        f"Model `{meta['model']['model_id']}` (revision `{meta['model']['revision']}`), corpus `{meta['corpus']}` "
        f"(SHA-256 `{meta['corpus_sha256'][:16]}…`), site `gate`, method Δp, top-k = {k}.",
        "",
        f"| lang | dimension | train scenarios on the axis (half A / B) | split-half r | top-{k} overlap | Jaccard | chance Jaccard "
        "| test items | accuracy [95% CI] | acc. pole first / second | mean p_pole | order effect |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for language, res in results.items():
        for dim in res["dimensions"]:
            s = res["stability"].get(dim, {})
            c = res["forced_choice"].get(dim)
            halves = res["train_halves"].get(dim)
            stab = (
                [f"{s['pearson_r']:.3f}", f"{s['overlap']} / {s['k']} (chance {s['chance_overlap']:.1f})",
                 f"{s['jaccard']:.3f}", f"{s['chance_jaccard']:.4f}"] if s else ["–"] * 4
            )
            choice = (
                [str(c["n"]), f"{c['accuracy']:.3f} [{c['accuracy_ci95'][0]:.2f}, {c['accuracy_ci95'][1]:.2f}]",
                 f"{c['accuracy_pole_first']:.3f} / {c['accuracy_pole_second']:.3f}", f"{c['mean_p_pole']:.3f}",
                 f"{c['order_effect']:+.3f}"] if c else ["0"] + ["–"] * 4
            )
            train = f"{sum(halves)} ({halves[0]} / {halves[1]})" if halves else "–"
            lines.append("| " + " | ".join([language, dim, train, *stab, *choice]) + " |")
        c = res["forced_choice"].get("all")
        if c:
            lines.append(
                f"| {language} | **all** | {sum(sum(h) for h in res['train_halves'].values()) // 2} | | | | | {c['n']} "
                f"| {c['accuracy']:.3f} [{c['accuracy_ci95'][0]:.2f}, {c['accuracy_ci95'][1]:.2f}] "
                f"| {c['accuracy_pole_first']:.3f} / {c['accuracy_pole_second']:.3f} | {c['mean_p_pole']:.3f} | {c['order_effect']:+.3f} |"
            )
    lines += [
        "",
        "Split-half columns: train split, scenarios hashed by item id into two disjoint halves; Pearson r of the two "
        "halves' Δp over all neurons; overlap of the two top-k sets (chance c = k²/N); chance Jaccard = c/(2k − c). "
        "A pole is contrasted with its opposite on all scenarios of their axis (each gives one text to each pole).",
        "Forced-choice columns: test split, items grouped by the dimension their pole option expresses; accuracy = share of "
        "items with p_pole > 0.5 (p_pole = mean over both option orders); order effect = mean(p_pole | pole option listed "
        "first − p_pole | listed second).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default=None, help="corpus (default: the built-in one)")
    parser.add_argument("--languages", default="en,zh")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--limit", type=int, default=None, help="train items per dimension (quick looks, tests)")
    parser.add_argument("--eval-limit", type=int, default=None, help="test items per dimension (quick looks, tests)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/corpus-quality")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.time()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    model = vneuron.load_model(args.model)
    corpus = vneuron.load_corpus(args.dataset)
    results: dict[str, dict] = {}
    timings: dict[str, dict] = {"load_s": round(time.time() - started, 1)}
    for language in [x.strip() for x in args.languages.split(",") if x.strip()]:
        t0 = time.time()
        config = vneuron.LocateConfig(dataset=args.dataset, language=language, split="train", top_k=args.top_k,
                                      folds=2, limit=args.limit, batch_tokens=args.batch_tokens)
        located = vneuron.locate(model, config, out=out / f"locate-{language}")
        t1 = time.time()
        # tokens / scenarios per half and pole, from the saved statistics (n is [label, fold])
        stats = located.stats
        train = corpus.select(split="train", language=language, limit=args.limit)
        from vneuron.capture import fold_of

        halves = {}
        for dim in stats.labels:
            groups = {i.id for i in train.items if dim in (i.dimension, i.opposite)}
            per_fold = [0, 0]
            for g in groups:
                per_fold[fold_of(g, 2)] += 1
            halves[dim] = per_fold
        stability = {}
        for dim, s in located.stability.items():
            if s:
                c = s["chance_overlap"]
                stability[dim] = {**s, "chance_jaccard": c / (2 * s["k"] - c)}

        test = corpus.select(split="test", language=language)
        items = test.items
        if args.eval_limit:
            kept, seen = [], {}
            for item in items:
                if seen.get(item.dimension, 0) < args.eval_limit:
                    seen[item.dimension] = seen.get(item.dimension, 0) + 1
                    kept.append(item)
            items = kept
        choice = forced_choice(model, items, batch_tokens=args.batch_tokens)
        t2 = time.time()
        by_dim: dict[str, dict] = {}
        dims = order_dimensions({i.dimension for i in items} | set(stability))
        for dim in dims:
            rows = [n for n, i in enumerate(items) if i.dimension == dim]
            if rows:
                by_dim[dim] = choice_summary(choice.p_order[rows])
        by_dim["all"] = choice_summary(choice.p_order)
        results[language] = {
            "dimensions": dims,
            "locate_run": str(located.run_dir),
            "stability": stability,
            "train_halves": halves,
            "forced_choice": by_dim,
            "per_item": [{"id": i.id, "dimension": i.dimension, "p_pole_first": round(float(p[0]), 6),
                          "p_pole_second": round(float(p[1]), 6)} for i, p in zip(items, choice.p_order)],
        }
        timings[language] = {"locate_s": round(t1 - t0, 1), "forced_choice_s": round(t2 - t1, 1)}
        print(f"[{language}] locate {t1 - t0:.0f} s, forced choice {t2 - t1:.0f} s", file=sys.stderr, flush=True)

    timings["total_s"] = round(time.time() - started, 1)
    manifest = model.manifest()
    meta = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": {"model_id": manifest.get("model_id"), "revision": manifest.get("revision"), "dtype": manifest.get("dtype")},
        "corpus": corpus.name,
        "corpus_sha256": corpus.content_hash(),
        "top_k": args.top_k,
        "limit": args.limit,
        "eval_limit": args.eval_limit,
        "timings": timings,
        "versions": {"vneuron": vneuron.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "threads": args.threads,
    }
    table = markdown(results, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(table + f"\nCommand: `{command}` ({meta['date']}, {timings['total_s']:.0f} s).\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps({**meta, "results": results}, indent=2, ensure_ascii=False), encoding="utf-8")
    print(table)
    print(f"Written to {out / 'quality.md'} and {out / 'quality.json'} ({timings['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
