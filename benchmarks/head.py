"""The LM head of forced-choice scoring on this CPU: vneuron's scorer (``prefix.head_logprobs``, the vocabulary read a
block at a time with a running maximum) against whole-vocabulary logits followed by ``log_softmax`` (the scorer before
it, written out here), on a real model's head, from one run.

Both run on the same rows, interleaved ``--repeats`` times (best kept), so a load spike on a shared machine hits both
alike. Printed per number of scored positions: CPU and wall seconds of each, their ratio, the largest difference of
the log-probabilities, and the load average.

    python benchmarks/head.py                          # the default model (Gemma-3-270M: a 262,144-token vocabulary)
    python benchmarks/head.py --model smollm2-135m --threads 2 --positions 64 166 512
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def whole_vocabulary(hidden, weight, bias, post, chunks, node_of, targets) -> torch.Tensor:
    """The scorer before blocks: [positions, vocab] logits per chunk, then log_softmax and a gather."""
    parts = []
    for lo, hi, s_lo, s_hi in chunks:
        logits = torch.nn.functional.linear(hidden[lo:hi], weight, bias)
        if post is not None and post[0] == "softcap":
            logits = torch.tanh(logits / post[1]) * post[1]
        elif post is not None:
            logits = logits / post[1]
        parts.append(logits.float().log_softmax(-1)[node_of[s_lo:s_hi] - lo, targets[s_lo:s_hi]])
    return torch.cat(parts)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--positions", type=int, nargs="+", default=[64, 166, 512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vneuron.models.loading import load_model
    from vneuron.models.sites import resolve_path
    from vneuron.models.architectures import text_config
    from vneuron.validate.prefix import head_chunks, head_logprobs

    model = load_model(args.model)
    head = resolve_path(model.hf_model, model.arch.head)
    weight, bias, post = head.weight.detach(), getattr(head, "bias", None), model.arch.post(model.lm.config)
    vocab, size = int(text_config(model.lm.config).vocab_size), weight.shape[1]
    print(f"{args.model}: head {tuple(weight.shape)} {weight.dtype}, post {post}, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'positions':>9} {'whole CPU s':>12} {'blocks CPU s':>13} {'ratio':>6} {'whole wall s':>13} {'blocks wall s':>14} "
          f"{'ratio':>6} {'max |Δ log p|':>14}")
    gen = torch.Generator().manual_seed(0)
    for n in args.positions:
        hidden = torch.randn(n, size, generator=gen).to(weight.dtype) * weight.norm(dim=1).mean().reciprocal() * 8
        node_of, targets = torch.arange(n), torch.randint(0, vocab, (n,), generator=gen)
        chunks = [(lo, hi, lo, hi) for lo, hi in head_chunks(n, vocab)]
        with torch.inference_mode():
            runs = {"whole": lambda: whole_vocabulary(hidden, weight, bias, post, chunks, node_of, targets),
                    "blocks": lambda: head_logprobs(hidden, weight, bias, post, chunks, node_of, targets)}
            best = {k: (float("inf"), float("inf")) for k in runs}
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    cpu, wall = timed(fn)
                    best[k] = (min(best[k][0], cpu), min(best[k][1], wall))
            diff = float((runs["whole"]() - runs["blocks"]()).abs().max())
        (wc, ww), (bc, bw) = best["whole"], best["blocks"]
        print(f"{n:>9} {wc:>12.3f} {bc:>13.3f} {bc / wc:>6.2f} {ww:>13.3f} {bw:>14.3f} {bw / ww:>6.2f} {diff:>14.2e}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
