"""Recipe: measured quality of a corpus (by default the built-in one), for its data card.

Per language, with one loaded model:

1. Split-half stability of neuron selection. ``vneuron.locate`` on the train split with
   ``folds=2``: every scenario is hashed (by item id) into one of two disjoint halves, neurons
   are scored on each half separately, and the run reports, per pole, the Pearson correlation of
   the two halves' scores over all neurons and the overlap of their top-k sets (count, Jaccard,
   and the overlap expected by chance, k²/N).
2. Forced choice on the test split. ``vneuron.validate.evaluate.forced_choice``: both actions are listed
   in the prompt, in both orders, and the model "chooses" by the likelihood of each action's
   text as the continuation. Per dimension (items grouped by the dimension their pole option
   expresses): accuracy = share of items with p_pole > 0.5 (p_pole averaged over both orders),
   its 95% Wilson interval, the same accuracy in each order, mean p_pole, and the order effect,
   mean(p_pole | pole listed first − p_pole | pole listed second).

Prints a Markdown table and writes OUT/quality.md and OUT/quality.json (plus one locate run per
language under OUT/locate-LANG).

``--describe`` loads no model: it prints the corpus's counts (per language, dimension, split,
setting, value) and its lexical checks (option lengths, loaded words, pole-skewed words) as
Markdown, the numbers in docs/DATA_CARD.md.

    python recipes/corpus_quality.py                                   # default model, en + zh
    python recipes/corpus_quality.py --languages zh --top-k 500 --out runs/cq-zh
    python recipes/corpus_quality.py --describe                        # counts and lexical checks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

import vneuron
from vneuron.locate.capture import fold_of
from vneuron.data.schema import DIMENSIONS, OPPOSITE
from vneuron.validate.evaluate import forced_choice
from vneuron.runtime.progress import line_progress


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


# -- counts and lexical checks (no model) --------------------------------------------------------
SETTINGS = ("everyday", "work", "family", "friends", "school", "public_life", "community", "money", "health", "travel", "online")
VALUE19 = ("self_direction_thought", "self_direction_action", "stimulation", "hedonism", "achievement", "power_dominance",
           "power_resources", "face", "security_personal", "security_societal", "tradition", "conformity_rules",
           "conformity_interpersonal", "humility", "benevolence_caring", "benevolence_dependability",
           "universalism_concern", "universalism_nature", "universalism_tolerance")
STOP = set("the a an to of and or your you it its in on at for with from by as that this their them they his her him she he "
           "be is are up out into about over so what do not no than then one own".split())
LOADED = {
    "en": r"\b(selfish\w*|selfless\w*|wise\w*|kind(ly)?|generous\w*|greed\w*|foolish\w*|reckless\w*|responsibl\w*|fair(ly)?|"
          r"unfair\w*|right(ly)?|wrong\w*|good|bad|lazy|lazily|brave\w*|properly|honest\w*|dishonest\w*)\b",
    "zh": r"(自私|无私|明智|善良|贪心|愚蠢|鲁莽|负责|公平|正确|错误|懒|勇敢|诚实|老实|盲目|草率)",
}


def _units(text: str, language: str) -> set[str]:
    """Content words (EN) or character bigrams (ZH) of an option."""
    if language == "zh":
        text = re.sub(r"[，、；：“”（）！？,.\s]", "", text)
        return {text[i:i + 2] for i in range(len(text) - 1)}
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOP}


def describe(corpus) -> str:
    from collections import Counter

    items, out = corpus.items, []
    languages = corpus.languages
    n = lambda **kw: sum(all(getattr(i, k) == v for k, v in kw.items()) for i in items)  # noqa: E731
    desc = {(lang, d): len(corpus.descriptions.get(lang, {}).get(d, [])) for lang in languages for d in DIMENSIONS}
    out += ["| language | dimension (of option_pole) | train | test | total | descriptions |", "|---|---|---|---|---|---|"]
    for lang in languages:
        for d in DIMENSIONS:
            out.append(f"| {lang} | {d} | {n(language=lang, dimension=d, split='train')} | {n(language=lang, dimension=d, split='test')} "
                       f"| {n(language=lang, dimension=d)} | {desc[lang, d]} |")
        out.append(f"| {lang} | **all** | {n(language=lang, split='train')} | {n(language=lang, split='test')} | {n(language=lang)} "
                   f"| {sum(desc[lang, d] for d in DIMENSIONS)} |")
    out.append(f"| **all** | **all** | {n(split='train')} | {n(split='test')} | {len(items)} | {sum(desc.values())} |")
    head = " | ".join(languages)
    out += ["", f"| setting | {head} |", "|---|" + "---|" * len(languages)]
    out += [f"| {s} | " + " | ".join(str(n(setting=s, language=lang)) for lang in languages) + " |" for s in SETTINGS]
    pair = " / ".join(languages)
    out += ["", f"| dimension | value (of the option expressing it) | as option_pole ({pair}) | as option_opposite ({pair}) |",
            "|---|---|---|---|"]
    for d in DIMENSIONS:
        pole = Counter((i.language, i.value) for i in items if i.dimension == d)
        opp = Counter((i.language, i.opposite_value) for i in items if i.opposite == d)
        for v in sorted({v for _, v in pole} | {v for _, v in opp}, key=lambda v: -(sum(c for (_, x), c in pole.items() if x == v))):
            out.append(f"| {d} | {v} | " + " / ".join(str(pole[lang, v]) for lang in languages) + " | "
                       + " / ".join(str(opp[lang, v]) for lang in languages) + " |")
    out += ["", f"| value19 (of option_pole) | value | {head} |", "|---|---|" + "---|" * len(languages)]
    for v in VALUE19 + tuple(sorted({i.value19 or "null" for i in items} - set(VALUE19))):
        basic = ", ".join(sorted({i.value or "" for i in items if (i.value19 or "null") == v}))
        out.append(f"| {v} | {basic} | " + " | ".join(str(sum((i.value19 or "null") == v and i.language == lang for i in items))
                                                       for lang in languages) + " |")
    out += ["", "| check | " + head + " |", "|---|" + "---|" * len(languages)]
    rows: dict[str, list[str]] = {}
    for lang in languages:
        sub = [i for i in items if i.language == lang]
        ratio = [max(len(i.option_pole), len(i.option_opposite)) / min(len(i.option_pole), len(i.option_opposite)) for i in sub]
        rows.setdefault("options: mean length in characters, pole / opposite", []).append(
            f"{sum(len(i.option_pole) for i in sub) / len(sub):.1f} / {sum(len(i.option_opposite) for i in sub) / len(sub):.1f}")
        rows.setdefault("items whose longer option is > 1.4× the shorter (characters); largest ratio", []).append(
            f"{sum(r > 1.4 for r in ratio)} of {len(sub)}; {max(ratio):.2f}")
        rows.setdefault("items whose pole option is the longer one (characters)", []).append(
            f"{sum(len(i.option_pole) > len(i.option_opposite) for i in sub)} of {len(sub)}")
        loaded = Counter()
        for i in sub:
            for text, d in ((i.option_pole, i.dimension), (i.option_opposite, i.opposite)):
                for _ in re.finditer(LOADED.get(lang, LOADED["en"]), text, re.IGNORECASE):
                    loaded[d] += 1
        rows.setdefault("evaluative words in options (list in the recipe), per dimension expressed", []).append(
            ", ".join(f"{d} {loaded[d]}" for d in DIMENSIONS) or "none")
        units: dict[str, list[set[str]]] = {d: [] for d in DIMENSIONS}
        for i in sub:
            units[i.dimension].append(_units(i.option_pole, lang))
            units[i.opposite].append(_units(i.option_opposite, lang))
        best = (0.0, "", "", 0.0, 0.0)
        for d in DIMENSIONS:
            if not units[d] or not units[OPPOSITE[d]]:
                continue
            mine = Counter(w for u in units[d] for w in u)
            theirs = Counter(w for u in units[OPPOSITE[d]] for w in u)
            for w, c in mine.items():
                a, b = c / len(units[d]), theirs[w] / len(units[OPPOSITE[d]])
                if a - b > best[0]:
                    best = (a - b, w, d, a, b)
        rows.setdefault("most pole-skewed word (EN) / character bigram (ZH): share of that pole's options vs its opposite's", []).append(
            f"“{best[1]}”: {best[2]} {best[3]:.1%} vs {best[4]:.1%}")
        rows.setdefault("scenarios ending in a question mark", []).append(
            f"{sum(i.scenario.rstrip().endswith(('?', '？')) for i in sub)} of {len(sub)}")
    out += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]
    return "\n".join(out) + "\n"


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
    parser.add_argument("--describe", action="store_true", help="print counts and lexical checks of the corpus (no model)")
    args = parser.parse_args()
    if args.describe:
        print(describe(vneuron.load_corpus(args.dataset)), end="")
        return
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
        located = vneuron.locate(model, config, out=out / f"locate-{language}", progress=line_progress())
        t1 = time.time()
        # tokens / scenarios per half and pole, from the saved statistics (n is [label, fold])
        stats = located.stats
        train = corpus.select(split="train", language=language, limit=args.limit)
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
