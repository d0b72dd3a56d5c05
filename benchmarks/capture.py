"""Capture speed and memory, measured side by side in one run.

Compares vneuron's capture (nnsight trace, reduction inside, stop after the last MLP) with bare
PyTorch forward hooks doing the same reduction on the same batches, (a) over a full forward with
``logits_to_keep=1`` (the fair baseline: nobody computes a 262k-token LM head at every position
to read MLP activations) and (b) stopping after the last MLP as a careful hand-written loop
would. Prints time ratios, and the peak RSS of each configuration in a fresh process: VmHWM of
that process (ru_maxrss would include the parent's peak, inherited through fork/exec), and the
peak minus the RSS right after loading the model.

    python benchmarks/capture.py                       # embedded default model, built-in corpus
    python benchmarks/capture.py --model smollm2-135m --prompts 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


class _Stop(Exception):
    pass


def hook_capture(loaded, prompts, config, stop_early: bool):
    """The baseline: the same batches and weights, reduced in forward hooks, no nnsight."""
    from vneuron.locate.capture import ActivationStats, fold_of, reduce_sums, slot_matrix
    from vneuron.runtime.tokens import batches, encode, pack, pad_id, position_ids
    from vneuron.models.sites import layer_modules, site_module

    labels = sorted({p.label for p in prompts})
    stats = ActivationStats.zeros(config.site, labels, config.folds, loaded.n_layers, loaded.width)
    slots = [labels.index(p.label) * config.folds + fold_of(p.group, config.folds) for p in prompts]
    blocks = list(layer_modules(loaded.hf_model, loaded.arch))
    for batch in batches(encode(loaded.tokenizer, prompts, slots), config.batch_tokens):
        ids, mask, counted = pack(batch, pad_id(loaded.tokenizer), left=False)
        slot_ids, onehot = slot_matrix(batch)
        weights = (onehot[:, :, None] * (counted & mask.bool()).float()[None]).reshape(len(slot_ids), -1)
        keep = weights.sum(0).nonzero().squeeze(1)
        sums = []

        def hook(module, args, output, last=False):
            sums.append(reduce_sums(weights, output, loaded.width, keep))
            if last and stop_early:
                raise _Stop

        handles = [site_module(b, loaded.arch, "gate").register_forward_hook(
            lambda m, a, o, last=(i == len(blocks) - 1): hook(m, a, o, last)) for i, b in enumerate(blocks)]
        try:
            with torch.inference_mode():
                loaded.hf_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=1)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        reduced = torch.stack(sums).permute(1, 2, 0, 3)
        stats.add_(slot_ids, weights.sum(1), reduced[0], reduced[1], reduced[2])
    return stats


def _prompts(n: int):
    from vneuron.data import load_corpus

    corpus = load_corpus().select(split="train", language="en")
    prompts = corpus.action_prompts()
    return [prompts[i % len(prompts)] for i in range(n)]


def _proc_status_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS of this process, in MB; both start afresh at exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def child(args) -> None:
    """One measured capture (vneuron or hooks) in a fresh process; prints JSON."""
    from vneuron.locate.capture import CaptureConfig, capture
    from vneuron.models.loading import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    prompts = _prompts(args.prompts)
    config = CaptureConfig(batch_tokens=args.batch_tokens)
    run = (lambda p: capture(loaded, p, config)) if args.child == "vneuron" else \
        (lambda p: hook_capture(loaded, p, config, stop_early=True))
    after_load = _proc_status_mb("VmRSS")
    run(prompts[: min(8, len(prompts))])  # warm-up
    start = time.perf_counter()
    run(prompts)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": _proc_status_mb("VmHWM"), "rss_after_load_mb": after_load}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--child", choices=("vneuron", "hooks"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from vneuron.locate.capture import CaptureConfig, capture
    from vneuron.models.loading import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    prompts = _prompts(args.prompts)
    config = CaptureConfig(batch_tokens=args.batch_tokens)
    runs = {"vneuron (nnsight, stops after last MLP)": lambda: capture(loaded, prompts, config),
            "hooks, full forward (logits_to_keep=1)": lambda: hook_capture(loaded, prompts, config, stop_early=False),
            "hooks, stop after last MLP": lambda: hook_capture(loaded, prompts, config, stop_early=True)}
    for fn in runs.values():  # warm-up, and check all three agree
        fn()
    a, b = runs["vneuron (nnsight, stops after last MLP)"](), runs["hooks, stop after last MLP"]()
    agree = torch.allclose(a.sum, b.sum, rtol=1e-4, atol=1e-3) and torch.equal(a.n, b.n)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved so drift hits all alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    ours = best["vneuron (nnsight, stops after last MLP)"]
    print(f"model {loaded.source.model_id}, {len(prompts)} prompts, {args.threads} threads, best of {args.repeats}; "
          f"results agree: {agree}")
    for name, t in best.items():
        print(f"  {name:42s} {t:8.3f} s   vneuron / this = {ours / t:.3f}")
    peaks = {}
    for who, scale in (("vneuron", 1), ("vneuron", 8), ("hooks", 8)):
        cmd = [sys.executable, __file__, "--child", who, "--model", args.model, "--prompts", str(args.prompts * scale),
               "--threads", str(args.threads), "--batch-tokens", str(args.batch_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks[who, scale] = p = json.loads(out)
        print(f"  {who:8s} capture of {args.prompts * scale:5d} prompts (fresh process): peak RSS {p['peak_rss_mb']:.0f} MB, "
              f"{p['peak_rss_mb'] - p['rss_after_load_mb']:.0f} MB above the RSS after loading, {p['seconds']:.1f} s")
    grow = lambda p: p["peak_rss_mb"] - p["rss_after_load_mb"]  # noqa: E731
    print(f"  peak RSS 8x / 1x prompts = {peaks['vneuron', 8]['peak_rss_mb'] / peaks['vneuron', 1]['peak_rss_mb']:.3f}; "
          f"vneuron − hooks at 8x: {peaks['vneuron', 8]['peak_rss_mb'] - peaks['hooks', 8]['peak_rss_mb']:+.0f} MB peak, "
          f"{grow(peaks['vneuron', 8]) - grow(peaks['hooks', 8]):+.0f} MB above load")

if __name__ == "__main__":
    main()
