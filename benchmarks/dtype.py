"""float32 against bf16-mixed (or bfloat16, ``--candidate``) on this CPU, from one run: capture, forced choice, a whole
small ablation.

Both dtypes of the model are loaded once and every step runs in each dtype in turn (interleaved,
``--repeats`` times, best kept), so a load spike on a shared machine hits both alike. Printed per
step: this process's CPU seconds and wall seconds in each dtype, their float32/candidate ratios,
and what the candidate changed (capture: Spearman of Δp over all neurons and top-200 overlap; forced
choice: the largest per-item difference in P; ablation: the located and control effects).

    python benchmarks/dtype.py --run RUN_DIR                   # a locate run of the default model
    python benchmarks/dtype.py --run RUN_DIR --prompts 256 --limit 8 --controls 3 --threads 1
    python benchmarks/dtype.py --run RUN_DIR --candidate bfloat16          # the whole model in bfloat16 (issue 19)

``--compare A B`` compares two finished runs of the same study in two dtypes instead (no model):
two locate runs (Spearman of Δp per pole over all neurons, top-200 overlap per pole, Spearman of
count(a > 0)) or two ablate runs (per-item P, each pole's rank, sequential p, CI signs and verdict, the cross-value
matrix's z per cell and the side effects' KL).

    python benchmarks/dtype.py --compare runs/locate-f32 runs/locate-bf16
    python benchmarks/dtype.py --compare runs/locate-f32/ablate-... runs/locate-bf16/ablate-...
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    rank = lambda t: t.reshape(-1).double().argsort().argsort().double()  # noqa: E731
    return float(torch.corrcoef(torch.stack([rank(a), rank(b)]))[0, 1])


def compare_locate(a: Path, b: Path, k: int = 200) -> None:
    from vneuron.locate.runs import LocateRun
    from vneuron.locate.scoring import contrast_scores

    ra, rb = LocateRun.open(a), LocateRun.open(b)
    print(f"locate runs: {a} ({ra.manifest['model'].get('dtype')}) vs {b} ({rb.manifest['model'].get('dtype')})")
    print(f"{'pole':20} {'Spearman Δp':>12} {'top-200 shared':>15} {'Spearman count(a>0)':>20} {'split-half r A / B':>20}")
    for pole, opposite in ra.manifest["contrasts"]:
        sa, sb = contrast_scores(ra.stats, pole, opposite, "delta_p"), contrast_scores(rb.stats, pole, opposite, "delta_p")
        top = lambda s: set(s.reshape(-1).topk(k).indices.tolist())  # noqa: E731
        count = spearman(ra.stats.active[ra.stats.slot(pole)].sum(0), rb.stats.active[rb.stats.slot(pole)].sum(0))
        stab = [r.manifest.get("stability", {}).get(pole, {}).get("pearson_r") for r in (ra, rb)]
        shown = " / ".join(f"{r:.3f}" if r is not None else "—" for r in stab)
        print(f"{pole:20} {spearman(sa, sb):12.4f} {len(top(sa) & top(sb)):>11} /{k} {count:20.4f} {shown:>20}")


def compare_ablate(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    print(f"ablate runs: {a} ({ma['model'].get('dtype')}) vs {b} ({mb['model'].get('dtype')})")
    rows = {d: {(r["dimension"], r["item"]): r for r in csv.DictReader(open(d / "items.csv"))} for d in (a, b)}
    for column in ("baseline", "after"):
        diffs = [abs(float(rows[a][key][column]) - float(rows[b][key][column])) for key in rows[a] if key in rows[b]]
        print(f"per-item P {column:8}: largest |difference| {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f} over {len(diffs)} items")
    sign = lambda ci: "+" if ci[0] > 0 else "−" if ci[1] < 0 else "0"  # noqa: E731
    print(f"{'pole':20} {'effect A / B':>18} {'rank A / B':>12} {'p A / B':>12} {'CI sign A / B':>14} {'Δ−ctrl CI sign':>15}")
    for ra, rb in zip(ma["results"], mb["results"]):
        print(f"{ra['dimension']:20} {ra['effect']:+.4f} / {rb['effect']:+.4f} {ra['rank']:>5}/{ra['controls'] + 1} "
              f"{rb['rank']}/{rb['controls'] + 1}"
              f" {ra.get('p_sequential', ra.get('p_lower')):>6.3f} / {rb.get('p_sequential', rb.get('p_lower')):.3f}"
              f" {sign(ra['effect_ci']):>8} / {sign(rb['effect_ci'])} {sign(ra['effect_minus_control_ci']):>10} / "
              f"{sign(rb['effect_minus_control_ci'])}")
    for ra, rb in zip(ma["results"], mb["results"]):
        va, vb = ((r.get("verdict") or {}).get("label") or (r.get("verdict") or {}).get("verdict") for r in (ra, rb))
        ka, kb = ((r.get("side_effects") or {}).get("located", {}).get("kl") for r in (ra, rb))
        ca, cb = ((r.get("cross_values") or {}).get("cells", {}) for r in (ra, rb))
        cells = " ".join(f"{c.split('/')[0][:12]} z {ca[c].get('z') or 0:+.2f}/{cb[c].get('z') or 0:+.2f}" for c in ca if c in cb)
        print(f"{ra['dimension']:20} verdict {va} / {vb}; KL {ka} / {kb}; matrix {cells}")


def best(fn, repeats: int):
    """(result, CPU seconds, wall seconds): the fastest of ``repeats`` calls."""
    out, cpu, wall = None, float("inf"), float("inf")
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return out, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a locate run of the model (its corpus, held-out items and located sets)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two finished runs in two dtypes")
    parser.add_argument("--prompts", type=int, default=256, help="capture: prompts of the run's corpus")
    parser.add_argument("--limit", type=int, default=8, help="forced choice and ablation: held-out items per side")
    parser.add_argument("--controls", type=int, default=3, help="ablation: controls at most (sequential)")
    parser.add_argument("--pole", default=None, help="ablation: one pole (default: the run's first)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidate", default="bf16-mixed", choices=("bf16-mixed", "bfloat16", "float16"),
                        help="the dtype set beside float32")
    args = parser.parse_args()
    if args.compare:
        a, b = args.compare
        (compare_locate if (a / "stats.safetensors").is_file() or "statistics" in json.loads((a / "manifest.json").read_text())
         else compare_ablate)(a, b)
        return
    if args.run is None:
        parser.error("--run RUN_DIR (a locate run), or --compare A B")
    torch.set_num_threads(args.threads)
    from vneuron.locate.capture import capture
    from vneuron.results.cards import run_prompts
    from vneuron.config import CaptureConfig, ValidateConfig
    from vneuron.validate.evaluate import forced_choice
    from vneuron.models.loading import load_model
    from vneuron.locate.runs import LocateRun
    from vneuron.locate.scoring import contrast_scores
    from vneuron.validate.study import ablate
    from vneuron.validate.items import items_for

    run = LocateRun.open(args.run)
    spec = run.manifest["model"]["spec"]
    cand = args.candidate
    models = {d: load_model(spec, dtype=d) for d in ("float32", cand)}
    prompts, _ = run_prompts(run)
    labels = run.stats.labels  # the same share of every label's prompts
    prompts = [p for label in labels for p in [q for q in prompts if q.label == label][: max(1, args.prompts // len(labels))]]
    cc = CaptureConfig(site=run.manifest["capture"]["site"])
    pole = args.pole or next(iter(run.sets))
    opposite = dict(map(tuple, run.manifest["contrasts"]))[pole]
    items = items_for(run.items("test"), pole, args.limit)
    rows, results = [], {d: {} for d in models}
    scratch = Path(tempfile.mkdtemp(prefix="vneuron-dtype-bench-"))
    for name, fn in (("capture", lambda m: capture(m, prompts, cc, labels=run.stats.labels)),
                     ("forced choice", lambda m: forced_choice(m, items, batch_tokens=1024).toward(pole)),
                     ("ablate", None)):
        timings = {}
        for d, m in models.items():
            if name == "ablate":  # forced choice only: no side effects, no cross-value matrix
                config = ValidateConfig(dimensions=[pole], limit=args.limit, controls=args.controls, side_effects=False,
                                        cross_values=False)
                counter = iter(range(args.repeats))

                def fn(m, config=config, d=d, counter=counter):
                    return ablate(run, config, model=m, out=scratch / f"{d}-{next(counter)}").summaries[0]
            results[d][name], cpu, wall = best(lambda: fn(m), args.repeats)
            timings[d] = (cpu, wall)
        rows.append((name, timings))
    print(f"model {spec}, {torch.get_num_threads()} thread(s), load average {open('/proc/loadavg').read().split()[:3]}")
    print(f"candidate: {cand}")
    print(f"{'step':14} {'CPU s f32':>10} {'CPU s cand':>11} {'CPU ratio':>10} {'wall f32':>9} {'wall cand':>10} {'wall ratio':>11}")
    for name, t in rows:
        (c32, w32), (c16, w16) = t["float32"], t[cand]
        print(f"{name:14} {c32:10.1f} {c16:11.1f} {c32 / c16:10.2f} {w32:9.1f} {w16:10.1f} {w32 / w16:11.2f}")
    s32, s16 = (contrast_scores(results[d]["capture"], pole, opposite, "delta_p") for d in ("float32", cand))
    top = lambda s: set(s.reshape(-1).topk(200).indices.tolist())  # noqa: E731
    print(f"capture ({len(prompts)} prompts): Spearman of Δp({pole}) over all neurons {spearman(s32, s16):.4f}, "
          f"top-200 shared {len(top(s32) & top(s16))}")
    diff = (results["float32"]["forced choice"] - results[cand]["forced choice"]).abs()
    print(f"forced choice ({len(items)} items): largest per-item |ΔP| {float(diff.max()):.4f}, mean {float(diff.mean()):.4f}")
    a32, a16 = results["float32"]["ablate"], results[cand]["ablate"]
    print(f"ablate ({pole}, {len(items)} items): effect {a32['effect']:+.4f} / {a16['effect']:+.4f}, rank "
          f"{a32.get('rank')}/{a32.get('controls', 0) + 1} / {a16.get('rank')}/{a16.get('controls', 0) + 1}, sequential p "
          f"{a32.get('p_sequential')} / {a16.get('p_sequential')}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
