"""``--dry-run`` of ``locate``: what the capture would cost, before anything runs.

The batches and requests are built exactly as ``capture`` builds them (tokenised, packed), so forward
passes, tokens, requests and bytes are counts, not guesses; the time comes from a short calibration
(one batch) on a local model. Server memory per batch is an estimate. Nothing is written.
(``ablate``/``steer``: ``vneuron.validate.plan``.)
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vneuron.runtime.budget import MB, Work, dtype_bytes
from vneuron.runtime.tokens import encode


# Capture's peak per token and neuron of the largest batch: the MLP's activations and the float32
# temporaries of the reduction (a[keep], a·a, a > 0 and its float copy, beside the gate's input and
# output). Measured at the 8B shape in float32 (docs/remote.md): 43 bytes in the loopback NDIF server's
# model actor (its peak beyond the weights, the result's three copies taken out), 32 bytes in nnsight's
# in-process simulation. The server's figure is used; for a 2-byte dtype it is an upper bound.
CAPTURE_BYTES_PER_TOKEN_NEURON = 43


def _capture_server_mb(model, tokens: int, dtype: str) -> float:
    hidden = model.arch.hidden(model.lm.config)
    return tokens * (4 * hidden * dtype_bytes(dtype) + CAPTURE_BYTES_PER_TOKEN_NEURON * model.width) / MB


def locate_plan(model_spec, config, *, remote=None, dtype: str | None = None, progress=None, out=None,
                force: bool = False) -> dict[str, Any]:
    """The plan of ``locate`` without running it: capture batches, requests, bytes, a time estimate.

    The real command's checks come first: `out` (refused when it exists, unless `force`), the corpus,
    the remote key, and once the model's size is known `top_k` and the disk space the run needs.
    """
    from pathlib import Path

    from vneuron.locate.capture import CPU_BATCH_TOKENS, capture, capture_batches, fold_of, prompt_bytes, request_ranges, slot_bytes
    from vneuron.locate.locating import expected_bytes, prepare_corpus, reselect_fix
    from vneuron.models.loading import load_model
    from vneuron.runtime.claims import claim
    from vneuron.runtime.store import check_fresh, check_space, default_run_dir
    from vneuron.locate.scoring import select

    say = progress or (lambda *a: None)
    if out is not None:
        claim(out)  # outside a run: only whether another command is writing there
        check_fresh(Path(out), force=force, fix=reselect_fix(Path(out)))
    corpus = prepare_corpus(config)
    if remote:
        from vneuron.runtime.remote import check_key, resolve_target

        remote = resolve_target(remote)
        check_key(remote)
    loaded = load_model(model_spec, dtype=dtype, progress=lambda m: say(m, 0, 0), remote=remote)
    if config.method != "lape":
        select(torch.zeros(loaded.n_layers, loaded.width), config.rule, config.top_k)
    run_dir = Path(out) if out is not None else default_run_dir("locate", loaded.source.alias or loaded.source.model_id)
    cap = config.capture_config()
    prompts = corpus.action_prompts(config.span) if cap.mode == "prompt" else corpus.conditioned_prompts()
    check_space(run_dir, expected_bytes(len(corpus.labels), config.folds, loaded.n_layers, loaded.width, config.top_k,
                                        len(config.dimensions or corpus.labels), 0, loaded.arch.hidden(loaded.config), len(prompts),
                                        config.probe_width))
    dtype = loaded.extra.get("dtype", "float32")  # what it computes in (auto: as measured)
    labels = corpus.labels
    slots = [labels.index(p.label) * cap.folds + fold_of(p.group, cap.folds) for p in prompts]
    encoded = encode(loaded.tokenizer, prompts, slots, counted_span=cap.counted_span and cap.mode == "prompt")
    # the batches and requests capture() builds, and what each request carries each way
    plan = capture_batches(encoded, loaded.batch_tokens(cap.batch_tokens, CPU_BATCH_TOKENS), loaded.remote is not None)
    tokens = sum(len(b) * max(len(e.ids) for e in b) for b in plan)
    per_slot, per_prompt = slot_bytes(loaded, cap.residual), prompt_bytes(loaded, cap)
    ranges = request_ranges(plan, cap.request_batches if loaded.remote is not None else 1, per_slot, per_prompt)
    # what each result holds: its slots' sums and its prompts' probe rows
    per_request = [len({e.slot for bt in plan[lo:hi] for e in bt}) * per_slot + sum(len(bt) for bt in plan[lo:hi]) * per_prompt
                   for lo, hi in ranges]
    down = sum(per_request)
    up = sum(_capture_upload(bt, cap.mode == "prompt") for bt in plan)
    out: dict[str, Any] = {
        "kind": "locate", "model": loaded.source.model_id, "remote": loaded.remote.describe() if loaded.remote else None,
        "out": str(run_dir), "prompts": len(prompts), "least": Work(forwards=len(plan), requests=len(ranges), tokens=tokens,
                                               layer_tokens=tokens * loaded.n_layers, bytes_up=up, bytes_down=down).report(),
        # the result is held three times at its peak: the sums, their torch.save bytes, the compressed copy
        "server_mb_per_batch": round(max(_capture_server_mb(loaded, len(bt) * max(len(e.ids) for e in bt), dtype)
                                         for bt in plan) + 3 * max(per_request, default=0) / MB, 1),
        "largest_result_mb": round(max(per_request, default=0) / MB, 1),
    }
    out["most"] = out["least"]
    if loaded.remote is None and plan:
        say("Calibrating on one batch", 0, 0)
        sample = [e.prompt for e in plan[len(plan) // 2]]
        capture(loaded, sample[:2], cap, labels=labels)  # warm-up
        start = time.perf_counter()
        capture(loaded, sample, cap, labels=labels)
        per_token = (time.perf_counter() - start) / (len(sample) * max(len(e.ids) for e in plan[len(plan) // 2]))
        out["estimate_s"] = [round(per_token * tokens)] * 2
    return out


def _capture_upload(batch, prompt_mode: bool) -> int:
    """Tensor bytes a capture request sends for one batch (``capture.sent_tensors``): ids and mask
    (int64), the per-slot token weights (float32), the counted rows (int64) and the slots."""
    rows, width, slots = len(batch), max(len(e.ids) for e in batch), len({e.slot for e in batch})
    counted = sum(sum(e.counted) for e in batch) if prompt_mode else 0
    return rows * width * 8 * 2 + slots * (rows * width if prompt_mode else rows) * 4 + counted * 8 + slots * 8
