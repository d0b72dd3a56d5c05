"""Where the time of an ablation goes: by stage and by operation, with the FLOP floor of each stage beside it.

Runs ``vneuron ablate RUN --top-k 200`` at the README's defaults (side effects and the cross-value matrix on;
``--limit`` and ``--dimension`` cut it down, and say so) and reads the time of each stage from the run's own
ledger (the manifest's ``timings.stages``, ``vneuron.runtime.budget.stage``):

  value shift     the baseline of each pole's items, the located set and its sequential controls
  side effects    KL and perplexity on neutral prose and the non-value forced choice, sequential controls
  cross-value     each located set and its controls on the other values' items
  setup, writing  loading the run and the model, the manifest and the files

Each stage's work comes from the same ledger (forward passes, tokens, token × block, LM-head positions), and its
time is split by operation with per-unit costs measured here on the same model and threads: the decoder blocks (per
token × block), the LM head (per position), the full-vocabulary log-softmax and KL (per position of the neutral
prose), nnsight's tracing (per forward pass, a traced forward minus the same plain one); what remains is Python and
everything else. The FLOP floor of a stage is what its tokens need at the least (2 × the blocks' parameters per
token × block, 2 × hidden × vocab per head position), and the floor time is that at the model's measured rate of
plain forward passes.

    python benchmarks/ablate_profile.py --run runs/locate-default                 # the default ablation, every pole
    python benchmarks/ablate_profile.py --run RUN --limit 8 --dimension self_transcendence --json profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

STAGES = ("value shift", "side effects", "cross-value matrix", "direction baselines", "setup and writing")


def unit_costs(loaded, repeats: int = 3) -> dict[str, float]:
    """Seconds per token × block, per LM-head position, per full-vocabulary log-softmax + KL position, and per traced
    forward pass (nnsight's overhead), measured on this model with these threads (best of ``repeats``)."""
    from vneuron.models.sites import resolve_path

    hf, arch = loaded.hf_model, loaded.arch
    base, head = resolve_path(hf, arch.base), resolve_path(hf, arch.head)
    top = min(1000, int(loaded.config.get_text_config().vocab_size))
    ids = torch.randint(5, top, (4, 128))
    best = lambda fn: min(_seconds(fn) for _ in range(repeats))  # noqa: E731
    with torch.inference_mode():
        block = best(lambda: base(input_ids=ids, use_cache=False)) / (ids.numel() * loaded.n_layers)
        hidden = torch.randn(256, head.weight.shape[1], dtype=head.weight.dtype)
        head_s = best(lambda: torch.nn.functional.linear(hidden, head.weight)) / 256
        logits = torch.nn.functional.linear(hidden, head.weight).float()

        def kl():
            ref = logits.log_softmax(-1)
            new = (logits * 1.001).log_softmax(-1)
            return (ref.exp() * (ref - new)).sum(-1)

        kl_s = best(kl) / 256
        small = torch.randint(5, top, (1, 8))
        plain = best(lambda: hf(input_ids=small, use_cache=False, logits_to_keep=1))

        def traced():
            with loaded.lm.trace({"input_ids": small, "attention_mask": torch.ones_like(small)}):
                loaded.lm.output.logits.save()

        trace = max(best(traced) - plain, 0.0)
    return {"block_token_s": block, "head_position_s": head_s, "kl_position_s": kl_s, "trace_s": trace}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a locate run directory")
    parser.add_argument("--limit", type=int, default=None, help="evaluation items per pole side (default: every held-out item)")
    parser.add_argument("--dimension", default=None, help="comma-separated poles (default: every pole of the run)")
    parser.add_argument("--top-k", type=int, default=200, help="neurons edited per pole (the README: 200)")
    parser.add_argument("--threads", type=int, default=None, help="default: as vneuron picks them")
    parser.add_argument("--json", default=None, help="also write the profile here")
    args = parser.parse_args()

    from vneuron.config import ValidateConfig
    from vneuron.runtime.threads import pick
    from vneuron.validate import study

    pick(args.threads)
    config = ValidateConfig(top_k=args.top_k, limit=args.limit, dimensions=args.dimension.split(",") if args.dimension else None)
    cut = " ".join(f for f in (f"--limit {args.limit}" if args.limit else "", f"--top-k {args.top_k}" if args.top_k != 200 else "",
                               f"--dimension {args.dimension}" if args.dimension else "") if f)
    load0 = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        result = study.ablate(args.run, config, out=f"{tmp}/ablate")
    total, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    load1 = os.getloadavg()[0]
    loaded = study.model_for(study.LocateRun.open(args.run), None, lambda *a: None)
    costs = unit_costs(loaded)
    # the run's own ledger: wall and CPU seconds and work per stage (vneuron.runtime.budget.stage)
    measured = result.manifest["timings"]["stages"]
    seconds = {name: measured.get(name, {}).get("wall_s", 0.0) for name in STAGES[:4]}
    cpu = {name: measured.get(name, {}).get("cpu_s", 0.0) for name in STAGES[:4]}
    work = {name: measured.get(name, {}).get("work", {}) for name in STAGES[:4]}
    seconds["setup and writing"], cpu["setup and writing"], work["setup and writing"] = \
        total - sum(seconds.values()), total_cpu - sum(cpu.values()), {}
    hidden, vocab = loaded.arch.hidden(loaded.config), int(loaded.config.get_text_config().vocab_size)
    block_params = sum(p.numel() for n, p in loaded.hf_model.named_parameters() if ".layers." in n or ".h." in n) / loaded.n_layers
    rate = 2 * block_params / costs["block_token_s"]  # FLOP/s of plain forward passes through the blocks
    rows = []
    for name in STAGES:
        w = work[name]
        layer_tokens, heads = w.get("layer_tokens", 0), w.get("head_positions", 0)
        kl_positions = heads if name == "side effects" else 0
        ops = {"blocks": layer_tokens * costs["block_token_s"], "LM head": heads * costs["head_position_s"],
               "log-softmax/KL": kl_positions * costs["kl_position_s"], "tracing": w.get("forwards", 0) * costs["trace_s"]}
        ops["Python and other"] = max(seconds[name] - sum(ops.values()), 0.0)
        floor = 2 * block_params * layer_tokens + 2 * hidden * vocab * heads
        rows.append({"stage": name, "wall_s": round(seconds[name], 1), "cpu_s": round(cpu[name], 1),
                     "share": round(seconds[name] / total, 3), "forwards": w.get("forwards", 0), "tokens": w.get("tokens", 0),
                     "layer_tokens": layer_tokens, "head_positions": heads, "flop_floor_g": round(floor / 1e9, 1),
                     "floor_s": round(floor / rate, 1), "ops_s": {k: round(v, 1) for k, v in ops.items()}})
    drawn = {s["dimension"]: s.get("controls_drawn") for s in result.summaries}
    report = {"run": args.run, "cut_down": cut or None, "threads": torch.get_num_threads(), "load_average": [load0, load1],
              "cores": os.cpu_count(), "total_wall_s": round(total, 1), "total_cpu_s": round(total_cpu, 1), "unit_costs": costs,
              "block_flops_per_s": rate, "controls_drawn": drawn, "stages": rows,
              "verdicts": {s["dimension"]: (s.get("verdict") or {}).get("verdict") for s in result.summaries}}
    settings = f" {cut} (cut down)" if cut else " --top-k 200 (README defaults)"
    print(f"ablate {args.run}{settings}: {total:.1f} s wall, {total_cpu:.1f} s CPU, {torch.get_num_threads()} thread(s), "
          f"load average {load0:.1f} → {load1:.1f} on {os.cpu_count()} cores")
    print(f"unit costs: {costs['block_token_s'] * 1e6:.1f} µs per token × block, {costs['head_position_s'] * 1e6:.0f} µs per head "
          f"position, {costs['kl_position_s'] * 1e6:.0f} µs per KL position, {costs['trace_s'] * 1e3:.1f} ms per trace; "
          f"blocks at {rate / 1e9:.1f} GFLOP/s")
    print(f"{'stage':20s} {'wall s':>7s} {'CPU s':>7s} {'share':>6s} {'fwd':>5s} {'tokens':>8s} {'head pos':>9s} {'floor s':>8s}  "
          "blocks / head / log-softmax+KL / tracing / Python+other (s)")
    for r in rows:
        ops = r["ops_s"]
        print(f"{r['stage']:20s} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {r['share']:6.1%} {r['forwards']:5d} {r['tokens']:8d} "
              f"{r['head_positions']:9d} {r['floor_s']:8.1f}  " + " / ".join(f"{v:.1f}" for v in ops.values()))
    print(f"controls drawn per pole: {drawn}; verdicts: {report['verdicts']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
