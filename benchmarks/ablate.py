"""Ablation speed, measured side by side in one run on the same items and the same edit sets.

Three ways to score forced choice under the located set and its matched controls (zeroed):
  hooks    the obvious hand-written PyTorch: every (prefix, option) pair its own left-padded row,
           forward hooks on the MLP activation doing the edit, logits_to_keep for the option tokens
  old      vneuron before issue 8 (``shared_prefix=False``): the same through nnsight
  new      vneuron now: token tries (each shared prefix once), the LM head only where a scored token
           is predicted, and the layers below the lowest edited layer run once for all edit sets
All three score baseline + located + ``--controls`` controls (every control drawn) and must agree.
Then a whole ablation of one pole with up to 20 sequential controls (``validate.ablate``, stop
after 3) is compared with what drawing all 20 costs on the old path (per-set cost measured above
× the 22 sets the old code ran). FLOPs are counted by torch's FlopCounterMode (matmuls, attention).

    python benchmarks/ablate.py --run runs/locate-default               # 8 + 8 test items, 3 controls
    python benchmarks/ablate.py --run RUN --limit 32 --controls 5 --pole conservation
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    b, h, q, d = query
    return 4 * b * h * q * key[-2] * d  # QKᵀ and the weighted sum of V


def counted(fn):
    """(result, seconds, FLOPs, CPU seconds) of ``fn()``. On a shared machine wall time follows the
    other processes' load; this process's CPU time (1 thread) much less so."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.scaled_dot_product_attention.default: _sdpa_flops})
    start, cpu = time.perf_counter(), time.process_time()
    with mode:
        result = fn()
    return result, time.perf_counter() - start, mode.get_total_flops(), time.process_time() - cpu


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def hooks_logprobs(loaded, pairs, edit, batch_tokens: int) -> torch.Tensor:
    """The baseline a careful user would write by hand (no nnsight)."""
    from vneuron.runtime.tokens import batches, pack, pad_id
    from vneuron.validate.evaluate import LOGIT_BUDGET, encode_pairs
    from vneuron.models.sites import layer_modules, site_module

    encoded = encode_pairs(loaded, pairs)
    blocks = list(layer_modules(loaded.hf_model, loaded.arch))
    handles = []
    for layer in (edit.layers if edit is not None else []):
        def hook(module, args, output, e=layer):
            output[..., e.units] = output[..., e.units] * e.alpha.to(output.dtype) + e.beta.to(output.dtype)
            return output
        handles.append(site_module(blocks[layer.layer], loaded.arch, "gate").register_forward_hook(hook))
    vocab = loaded.config.vocab_size
    longest = max(sum(e.counted) for e in encoded)
    out = torch.zeros(len(pairs), dtype=torch.float64)
    try:
        with torch.inference_mode():
            for batch in batches(encoded, batch_tokens, max_batch=max(1, LOGIT_BUDGET // ((longest + 1) * vocab))):
                ids, mask, counted_tokens = pack(batch, pad_id(loaded.tokenizer), left=True)
                k = int(counted_tokens.sum(1).max())
                logits = loaded.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                         logits_to_keep=k + 1).logits[:, :-1].float()
                logp = logits.log_softmax(-1).gather(-1, ids[:, -k:, None]).squeeze(-1)
                tmask = counted_tokens[:, -k:].float()
                out[torch.tensor([e.slot for e in batch])] = ((logp * tmask).sum(1) / tmask.sum(1)).double()
    finally:
        for h in handles:
            h.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a locate run directory (vneuron locate -o DIR)")
    parser.add_argument("--pole", default=None, help="default: the run's first pole")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--limit", type=int, default=8, help="test items per side of the pole's axis")
    parser.add_argument("--controls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="as ablate's default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--skip-ablate", action="store_true", help="only the per-set comparison")
    args = parser.parse_args()

    from vneuron.validate.edits import Edit
    from vneuron.validate.evaluate import LowerLayers, forced_choice, forced_choice_pairs
    from vneuron.locate.runs import LocateRun
    from vneuron.config import ValidateConfig
    from vneuron.validate.items import items_for
    from vneuron.validate.study import model_for, ablate

    torch.set_num_threads(args.threads)
    run = LocateRun.open(args.run)
    pole = args.pole or next(iter(run.sets))
    items = items_for(run.items(args.split), pole, args.limit)
    loaded = model_for(run, None, lambda *a: None)
    neurons = run.sets[pole].top(args.top_k)
    sets = [None, Edit(neurons, "zero")] + [Edit(neurons.random_matched(s), "zero") for s in range(args.controls)]
    pairs = forced_choice_pairs(items)
    print(f"model {loaded.source.model_id}, pole {pole}, {len(items)} items ({len(pairs)} pairs), top-{args.top_k} "
          f"(lowest edited layer {int(neurons.layers.min())} of {loaded.n_layers}), {len(sets)} edit sets "
          f"(baseline, located, {args.controls} controls), {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    forced_choice(loaded, items[:2], sets[1])  # warm-up of both paths
    forced_choice(loaded, items[:2], sets[1], shared_prefix=False)
    paths = {
        "hooks (hand-written)": lambda: [hooks_logprobs(loaded, pairs, e, args.batch_tokens) for e in sets],
        "old vneuron (one row per pair)": lambda: [forced_choice(loaded, items, e, shared_prefix=False,
                                                                 batch_tokens=args.batch_tokens).logprob.flatten() for e in sets],
    }

    def new():
        reuse = LowerLayers()
        return [forced_choice(loaded, items, e, reuse=reuse, batch_tokens=args.batch_tokens).logprob.flatten() for e in sets]

    paths["new vneuron (tries, shared lower layers)"] = new
    results, seconds, flops, cpu = {}, {}, {}, {}
    for name, fn in paths.items():
        results[name], seconds[name], flops[name], cpu[name] = counted(fn)
    ref = torch.stack(results["hooks (hand-written)"])
    agree = {name: float((torch.stack(r) - ref).abs().max()) for name, r in results.items()}
    new_name = "new vneuron (tries, shared lower layers)"
    for name in paths:
        print(f"  {name:42s} {seconds[name]:8.1f} s wall {cpu[name]:8.1f} s CPU {flops[name] / 1e12:9.2f} TFLOP   "
              f"max |Δ log p| vs hooks {agree[name]:.1e}")
    hooks = "hooks (hand-written)"
    print(f"  new / hooks  wall {seconds[new_name] / seconds[hooks]:.3f}   CPU {cpu[new_name] / cpu[hooks]:.3f}   "
          f"FLOPs {flops[new_name] / flops[hooks]:.3f}   (target ≤ 1.0)")
    old = "old vneuron (one row per pair)"
    print(f"  old / new    wall {seconds[old] / seconds[new_name]:.2f}×   CPU {cpu[old] / cpu[new_name]:.2f}×   "
          f"FLOPs {flops[old] / flops[new_name]:.2f}×   (same {len(sets)} edit sets)")
    if args.skip_ablate:
        return

    # a whole pole: baseline, located and up to 20 sequential controls, against the old code's 22 sets
    config = ValidateConfig(dimensions=[pole], top_k=args.top_k, controls=20, stop_after=3, limit=args.limit, split=args.split,
                            bootstrap=2000, batch_tokens=args.batch_tokens)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result, wall, total, wall_cpu = counted(lambda: ablate(run, config, model=loaded, out=f"{tmp}/ablate"))
    summary = result.summaries[0]
    drawn = summary["controls_drawn"]
    per_set = {k: v[old] / len(sets) for k, v in (("s", seconds), ("f", flops), ("c", cpu))}
    print(f"  ablate one pole, up to 20 sequential controls: {wall:.1f} s wall, {wall_cpu:.1f} s CPU, {total / 1e12:.2f} TFLOP, "
          f"{drawn} controls drawn ({summary['stop_reason']}; p = {summary['p_sequential']:.3f})")
    print(f"  old code, 20 controls (22 sets × the old per-set cost measured above): {22 * per_set['s']:.1f} s wall, "
          f"{22 * per_set['c']:.1f} s CPU, {22 * per_set['f'] / 1e12:.2f} TFLOP")
    print(f"  old / new    wall {22 * per_set['s'] / wall:.1f}×   CPU {22 * per_set['c'] / wall_cpu:.1f}×   "
          f"FLOPs {22 * per_set['f'] / total:.1f}×   (target ≥ 5× wall or ≥ 10× FLOPs)")


if __name__ == "__main__":
    main()
