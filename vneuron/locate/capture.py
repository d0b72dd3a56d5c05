"""Streaming per-neuron statistics, reduced inside the nnsight trace.

For every (label, fold) slot and every neuron we keep four sums: tokens counted n, Σa, Σa² and
count(a > 0). Only [layers × slots × width] tensors leave a trace, so memory and the bytes a
remote run downloads do not grow with the corpus. Which tokens count is decided by a per-token
weight matrix built from the attention mask and the prompt's marked span, never by batch shape.

Folds: each prompt's group (scenario) is hashed into one of ``folds`` folds, so every run also
yields independent halves of the data for a split-half stability estimate at no extra cost.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from vneuron.config import CaptureConfig
from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError
from vneuron.locate.examples import TopExamples, row_means
from vneuron.locate.residual import ResidualStats, reduce_residual, sketch_width, step_residual
from vneuron.models.loading import LoadedModel
from vneuron.models.sites import resolve_path, site_path, site_tensor
from vneuron.runtime import devices
from vneuron.runtime.tokens import Encoded, batches, encode, pack, pad_id, position_ids

CPU_BATCH_TOKENS = 4096  # `batch_tokens` auto on the CPU and for NDIF (an accelerator sizes it from its free memory)
SAVE_EVERY_S = 120.0  # a local capture keeps what it counted at least this often (and whenever it stops)


@dataclass
class ActivationStats:
    """Sufficient statistics per (label, fold, layer, neuron) at one site."""

    site: str
    labels: list[str]
    folds: int
    n: torch.Tensor  # [K, F] tokens counted
    sum: torch.Tensor  # [K, F, L, W]
    sumsq: torch.Tensor  # [K, F, L, W]
    active: torch.Tensor  # [K, F, L, W] tokens with a > 0
    meta: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)  # derived label → captured labels it sums (whole-value poles "X|*")
    examples: TopExamples | None = None  # the most and least activating texts per neuron (local captures, `top_examples`)
    residual: ResidualStats | None = None  # the block outputs' sums and probe rows (`residual`; vneuron.locate.residual)

    @classmethod
    def zeros(cls, site: str, labels: Sequence[str], folds: int, n_layers: int, width: int) -> "ActivationStats":
        k = len(labels)
        z = lambda: torch.zeros(k, folds, n_layers, width, dtype=torch.float64)  # noqa: E731
        return cls(site, list(labels), folds, torch.zeros(k, folds, dtype=torch.float64), z(), z(), z())

    @property
    def n_layers(self) -> int:
        return self.sum.shape[2]

    @property
    def width(self) -> int:
        return self.sum.shape[3]

    def slot(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise VneuronError(f"No statistics for label {label!r}", f"the run has: {', '.join(self.labels)}") from None

    def add_(self, slots: torch.Tensor, n: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, act: torch.Tensor) -> None:
        """Add sums for flat slot indices (label * folds + fold); s* are [S, L, W]."""
        for name, value in (("sum", s1), ("sumsq", s2), ("active", act)):
            flat = getattr(self, name).view(-1, self.n_layers, self.width)
            flat.index_add_(0, slots, value.to(torch.float64))
        self.n.view(-1).index_add_(0, slots, n.to(torch.float64))

    def __add__(self, other: "ActivationStats") -> "ActivationStats":
        if (self.site, self.labels, self.folds, self.sum.shape) != (other.site, other.labels, other.folds, other.sum.shape):
            raise VneuronError("Cannot add statistics of different sites, labels or shapes")
        return ActivationStats(self.site, self.labels, self.folds, self.n + other.n, self.sum + other.sum,
                               self.sumsq + other.sumsq, self.active + other.active, dict(self.meta), dict(self.groups))

    def moments(self, label: str, fold: int | None = None) -> "Moments":
        """Token count, mean, variance and activation probability of one label (all folds or one).

        A derived label (``groups``) pools the sums of its labels: the statistics of their union.
        """
        k = [self.slot(m) for m in self.groups[label]] if label in self.groups else [self.slot(label)]
        pick = (lambda t: t[k].sum((0, 1))) if fold is None else (lambda t: t[k, fold].sum(0))
        n = float(pick(self.n))
        if n == 0:
            raise VneuronError(f"Label {label!r} has no counted tokens" + ("" if fold is None else f" in fold {fold}"),
                               "add texts for it, or check the span the dataset marks")
        mean = pick(self.sum) / n
        var = (pick(self.sumsq) / n - mean**2).clamp_min(0) * (n / max(n - 1, 1))
        return Moments(n=n, mean=mean, var=var, p=pick(self.active) / n)

    # -- disk ---------------------------------------------------------------------------
    def save(self, path: Path, residual: bool = True) -> None:
        """``residual``: also the residual statistics, prefixed ``residual.`` (a checkpoint keeps everything in one
        file; a finished run writes them to their own file, ``residual.RESIDUAL``)."""
        from safetensors.torch import save_file

        meta = {"site": self.site, "labels": json.dumps(self.labels), "folds": str(self.folds), "meta": json.dumps(self.meta)}
        tensors = {"n": self.n, "sum": self.sum, "sumsq": self.sumsq, "active": self.active}
        if residual and self.residual is not None:
            tensors.update(self.residual.tensors("residual."))
            meta.update(self.residual.metadata("residual."))
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> "ActivationStats":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata()
                t = {key: fh.get_tensor(key) for key in fh.keys()}
            stats = cls(meta["site"], json.loads(meta["labels"]), int(meta["folds"]), t["n"], t["sum"], t["sumsq"],
                        t["active"], json.loads(meta.get("meta", "{}")))
            if "residual.sum" in t:  # a checkpoint's
                stats.residual = ResidualStats.from_tensors(meta, t, "residual.")
            return stats
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError on truncated files
            raise VneuronError(f"{path} is not readable vneuron statistics ({exc.__class__.__name__}: {str(exc)[:80]})",
                               "it is truncated or corrupt: restore it, or rerun vneuron locate") from None


@dataclass
class Moments:
    n: float
    mean: torch.Tensor  # [L, W]
    var: torch.Tensor
    p: torch.Tensor


def fold_of(group: str, folds: int) -> int:
    """A stable fold for a scenario: both sides of one item always land in the same fold."""
    if folds <= 1:
        return 0
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % folds


# -- capture ---------------------------------------------------------------------------------
def capture(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    config: CaptureConfig | None = None,
    *,
    labels: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    generations: list | None = None,
    checkpoint=None,
    detach: bool = False,
) -> ActivationStats:
    """Per-label, per-fold neuron statistics over ``prompts``.

    ``progress(done, total)`` is called after each batch (each request when remote). In generate
    mode, ``generations`` (if a list) receives one record per prompt with the generated text.
    Remote models (``model.remote``) run ``config.request_batches`` batches per NDIF request,
    checkpointed in ``checkpoint`` (a ``vneuron.runtime.checkpoint.Checkpoint``) when given.
    """
    config = (config or CaptureConfig()).check()
    if not prompts:
        raise VneuronError("Nothing to capture: no prompts", "check the corpus selection (split, language, dimension)")
    labels = list(labels or sorted({p.label for p in prompts}))
    stats = ActivationStats.zeros(config.site, labels, config.folds, model.n_layers, model.width)
    slots = [labels.index(p.label) * config.folds + fold_of(p.group, config.folds) for p in prompts]
    encoded = encode(model.tokenizer, prompts, slots, counted_span=config.counted_span and config.mode == "prompt")
    remote = model.remote is not None
    tokens = model.batch_tokens(config.batch_tokens, CPU_BATCH_TOKENS)
    if config.top_examples and not remote:  # remotely they are not collected (vneuron.locate.examples says why)
        stats.examples = TopExamples.empty(config.site, labels, config.top_examples, model.n_layers, model.width, prompts)
    if config.residual:
        stats.residual = ResidualStats.zeros(labels, config.folds, model.n_layers, model.arch.hidden(model.config),
                                             [s // config.folds for s in slots], [s % config.folds for s in slots], config.probe_width)
    index = {id(p): i for i, p in enumerate(prompts)}
    with torch.inference_mode():
        if not remote:
            tokens, batches_run = _capture_local(model, encoded, stats, config, tokens, index, generations, progress, checkpoint)
        else:
            plan = [_prepare(model, batch, config) for batch in capture_batches(encoded, tokens, remote)]
            if stats.residual is not None:
                for prepared in plan:
                    prepared.row_prompts = torch.tensor([index[id(e.prompt)] for e in prepared.batch])
            ranges = request_ranges([p.batch for p in plan], config.request_batches, slot_bytes(model, config.residual),
                                    prompt_bytes(model, config))
            requests = [plan[lo:hi] for lo, hi in ranges]
            if progress:  # the bar shows its total before the first request finishes
                progress(0, len(requests))
            _capture_remote(model, requests, stats, config, generations, checkpoint, progress, detach)
            batches_run = len(plan)
    stats.meta = {"mode": config.mode, "prompts": len(prompts), "batches": batches_run, "batch_tokens_used": tokens,
                  "top_examples": stats.examples.n if stats.examples is not None else 0, "residual": config.residual}
    return stats


def _capture_local(model: LoadedModel, encoded: list[Encoded], stats: ActivationStats, config: CaptureConfig, tokens: int,
                   index: dict[int, int], generations, progress, checkpoint=None) -> tuple[int, int]:
    """Every batch on this machine, one at a time. An out-of-memory error on an accelerator halves the batch and
    goes on with the prompts not yet counted (a batch counts only once its whole session returned, so nothing is
    counted twice); one that survives the halving is one line. With a ``checkpoint`` the prompts counted so far are
    kept every ``SAVE_EVERY_S`` and when anything stops the capture, and a resumed capture skips them.
    Returns the batch size used and the batches run."""
    counted = _restore(checkpoint, stats, generations)
    pending = [e for e in encoded if index[id(e.prompt)] not in counted]
    done, run, saved = len(encoded) - len(pending), 0, time.time()
    if progress:  # the bar shows its total before the first batch finishes
        progress(done, len(encoded))
    try:
        while True:
            plan = [_prepare(model, batch, config) for batch in capture_batches(pending, tokens, False)]
            try:
                for prepared in plan:
                    if stats.examples is not None:
                        _example_rows(prepared, index, config)
                    elif stats.residual is not None:  # the probe rows go to their prompts
                        prepared.row_prompts = torch.tensor([index[id(e.prompt)] for e in prepared.batch])
                    values = _session(model, [prepared], config, stats, examples=stats.examples is not None)
                    _collect(model, stats, [prepared], values, generations)
                    counted |= {index[id(e.prompt)] for e in prepared.batch}
                    run += 1
                    done += len(prepared.batch)
                    if progress:
                        progress(done, len(encoded))
                    if checkpoint is not None and time.time() - saved > SAVE_EVERY_S:
                        _keep(checkpoint, stats, counted, generations)
                        saved = time.time()
                return tokens, run
            except Exception as exc:  # only the device's out-of-memory error is retried
                if not devices.is_oom(exc):
                    raise
                devices.release()
                if tokens // 2 < 1:
                    raise VneuronError(f"Out of device memory capturing on {model.device} even at `batch_tokens` {tokens}",
                                       "use `dtype` bfloat16, or `device_map` auto to spread the model over every GPU") from None
                tokens //= 2
                pending = [e for e in pending if index[id(e.prompt)] not in counted]
    except BaseException:
        if checkpoint is not None and counted:  # whatever stopped it (an error, Ctrl-C, SIGTERM), what was counted stays
            _keep(checkpoint, stats, counted, generations)
        raise


def _keep(checkpoint, stats: ActivationStats, counted: set[int], generations) -> None:
    """The statistics (and top examples, generations) of the prompts counted so far, into the checkpoint."""
    checkpoint.path.mkdir(parents=True, exist_ok=True)
    if stats.examples is not None:
        stats.examples.save(checkpoint.file("examples.tmp.safetensors"))
        checkpoint.file("examples.tmp.safetensors").replace(checkpoint.file("examples.safetensors"))
    checkpoint.pieces["counted"] = sorted(counted)
    if generations is not None:
        checkpoint.pieces["generations"] = list(generations)
    checkpoint.save(stats)


def _restore(checkpoint, stats: ActivationStats, generations) -> set[int]:
    """The prompts an interrupted capture counted, their sums (and examples, generations) back into ``stats``."""
    if checkpoint is None or not checkpoint.pieces.get("counted"):
        return set()
    examples = stats.examples
    stats.__dict__.update(ActivationStats.load(checkpoint.stats_path).__dict__)
    stats.examples = TopExamples.load(checkpoint.file("examples.safetensors")) if examples is not None else None
    if generations is not None:
        generations.extend(checkpoint.pieces.get("generations", []))
    return set(checkpoint.pieces["counted"])


@dataclass
class Prepared:
    """One batch as plain tensors, built on the client (a remote server sees only tensors)."""

    batch: list[Encoded]
    ids: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor  # [S, B*T] prompt mode; [S, B] generate mode
    keep: torch.Tensor  # token rows that count (prompt mode)
    slots: torch.Tensor
    rows: torch.Tensor | None = None  # top examples: [B, B*T] per-row mean weights (prompt mode), ones [B] (generate mode)
    row_labels: torch.Tensor | None = None  # top examples: label index and prompt index of each row
    row_prompts: torch.Tensor | None = None


def _prepare(model: LoadedModel, batch: list[Encoded], config: CaptureConfig) -> Prepared:
    pad = pad_id(model.tokenizer)
    slots, onehot = slot_matrix(batch)
    if config.mode == "prompt":
        ids, mask, counted = pack(batch, pad, left=config.padding == "left")
        weights = (onehot[:, :, None] * (counted & mask.bool()).float()[None]).reshape(len(slots), -1)
        keep = weights.sum(0).nonzero().squeeze(1)
    else:
        ids, mask, _ = pack(batch, pad, left=True)
        weights, keep = onehot, torch.zeros(0, dtype=torch.long)
    return Prepared(batch, ids, mask, weights, keep, slots)


def _example_rows(prepared: Prepared, index: dict[int, int], config: CaptureConfig) -> None:
    """What a batch needs for the top examples: each row's label and prompt, and how its counted tokens average."""
    batch = prepared.batch
    prepared.row_labels = torch.tensor([e.slot // config.folds for e in batch])
    prepared.row_prompts = torch.tensor([index[id(e.prompt)] for e in batch])
    if config.mode != "prompt":
        prepared.rows = torch.ones(len(batch))
        return
    counted = prepared.weights.sum(0).reshape(len(batch), -1)  # [B, T]: each counted token belongs to one slot
    rows = torch.zeros(len(batch), len(batch), counted.shape[1])
    rows[torch.arange(len(batch)), torch.arange(len(batch))] = counted / counted.sum(1, keepdim=True).clamp_min(1)
    prepared.rows = rows.reshape(len(batch), -1)


# -- request sizing ---------------------------------------------------------------------------
def capture_batches(encoded: list[Encoded], batch_tokens: int, remote: bool) -> list[list[Encoded]]:
    """The forward batches of a capture. Remote: the prompts of one slot (label × fold) at a time, so
    that a request touches few slots and brings back the sums of those only (``request_ranges``)."""
    if not remote:
        return batches(encoded, batch_tokens)
    out: list[list[Encoded]] = []
    for slot in sorted({e.slot for e in encoded}):
        out += batches([e for e in encoded if e.slot == slot], batch_tokens)
    return out


def slot_bytes(model: LoadedModel, residual: bool = False) -> int:
    """What one slot's sums (Σa, Σa², count(a > 0) per layer and neuron, and its token count; with ``residual``
    Σh per layer of the block output too) weigh in a result."""
    size = 8 if model.extra.get("dtype") == "float64" else 4
    hidden = model.arch.hidden(model.config) if residual else 0
    return (3 * model.n_layers * model.width + model.n_layers * hidden + 1) * size


def prompt_bytes(model: LoadedModel, config: CaptureConfig) -> int:
    """What one prompt's probe row (float32, per layer; vneuron.locate.residual) weighs in a result."""
    return 4 * model.n_layers * sketch_width(model.arch.hidden(model.config), config.probe_width) if config.residual else 0


def request_ranges(batched: list[list[Encoded]], request_batches: int, per_slot: int, per_prompt: int = 0,
                   limit: int | None = None) -> list[tuple[int, int]]:
    """Consecutive batches per request: at most ``request_batches``, and no more slots (each ``per_slot`` bytes)
    and prompts (each ``per_prompt``) than keep the result under ``limit`` bytes (``remote.MAX_RESULT_BYTES``; one
    slot at least, and one batch)."""
    from vneuron.runtime.remote import MAX_RESULT_BYTES

    most = MAX_RESULT_BYTES if limit is None else limit
    out, start, slots, prompts = [], 0, set(), 0
    for i, batch in enumerate(batched):
        grown, more = slots | {e.slot for e in batch}, prompts + len(batch)
        over = len(grown) * per_slot + more * per_prompt > most and (len(grown) > 1 or per_prompt > 0)
        if i > start and (i - start >= max(1, request_batches) or over):
            out.append((start, i))
            start, grown, more = i, {e.slot for e in batch}, len(batch)
        slots, prompts = grown, more
    if batched:
        out.append((start, len(batched)))
    return out


def result_bytes(model: LoadedModel, chunk: list["Prepared"], config: CaptureConfig) -> int:
    """What a request brings back: the sums of the slots it touches and its prompts' probe rows."""
    return (len(request_slots(chunk)) * slot_bytes(model, config.residual)
            + sum(len(p.batch) for p in chunk) * prompt_bytes(model, config))


def request_slots(chunk: list["Prepared"]) -> torch.Tensor:
    """The slots a request's batches touch, in order: its result holds their sums only."""
    return torch.tensor(sorted({int(s) for p in chunk for s in p.slots}), dtype=torch.long)


def _collect(model: LoadedModel, stats: ActivationStats, chunk: list["Prepared"], values: dict, generations) -> None:
    """Add one request's totals (every slot it touched at once) and attach its generated tokens."""
    _add_sums(model, stats, request_slots(chunk), values["counts"], values["totals"])
    if stats.residual is not None:
        stats.residual.add_(request_slots(chunk), values["counts"], values["resid"])
        for prepared, means in zip(chunk, values["probe"]):
            stats.residual.put_rows(prepared.row_prompts, means)
    if stats.examples is not None and values.get("rows"):
        for prepared, means in zip(chunk, values["rows"]):
            stats.examples.merge(prepared.row_labels, prepared.row_prompts, means)
    for b, prepared in enumerate(chunk):
        _attach_generations(model, prepared, values["tokens"][b] if values.get("tokens") else None, generations)


def _add_sums(model: LoadedModel, stats: ActivationStats, slots: torch.Tensor, counts: torch.Tensor, reduced: torch.Tensor) -> None:
    if not bool(torch.isfinite(reduced).all()):
        raise VneuronError(f"{model.source.model_id} produced non-finite activations on counted tokens "
                           "(seen with Gemma-2's eager attention on left-padded batches)",
                           "use right padding, or `batch_tokens` 1 to run one prompt at a time without padding")
    reduced = reduced.permute(1, 2, 0, 3)  # [3, S, L, W]
    stats.add_(slots, counts, reduced[0], reduced[1], reduced[2])


def _attach_generations(model: LoadedModel, prepared: Prepared, tokens, generations: list | None) -> None:
    if generations is None or tokens is None:
        return
    for row, e in enumerate(prepared.batch):
        kept = [int(t) for t in tokens[row] if t >= 0]
        generations.append({"id": e.prompt.id, "label": e.prompt.label, "prompt": e.prompt.text,
                            "generated": model.tokenizer.decode(kept), "tokens_counted": len(kept)})


def _capture_remote(model: LoadedModel, requests: list[list[Prepared]], stats: ActivationStats, config: CaptureConfig,
                    generations: list | None, checkpoint, progress, detach: bool = False) -> None:
    """Requests of ``config.request_batches`` batches, each one NDIF session, reduced on the server."""
    from vneuron.runtime import remote as ndif

    if detach:
        if checkpoint is None or model.remote.blocking:
            raise VneuronError("Detaching needs a real NDIF host and a run directory", "drop `detach`")
        for index in range(checkpoint.done, len(requests)):
            if str(index) not in checkpoint.jobs:
                checkpoint.submitted(index, _session(model, requests[index], config, stats))
        raise ndif.Detached(len(checkpoint.jobs), checkpoint.path)
    if checkpoint is not None and checkpoint.done:
        stats.__dict__.update(ActivationStats.load(checkpoint.stats_path).__dict__)
        if generations is not None and (checkpoint.path / "generations.jsonl").is_file():
            generations.extend(json.loads(line) for line in (checkpoint.path / "generations.jsonl").read_text().splitlines())
    target = model.remote
    collect = None if target.blocking else ndif.collector(model.model_key(), target.host)
    first = checkpoint.done if checkpoint is not None else 0
    for index in range(first, len(requests)):
        chunk = requests[index]
        started = time.time()
        submissions = []

        def on_job(job_id: str, index=index) -> None:
            submissions.append(job_id)
            if checkpoint is not None:
                checkpoint.submitted(index, job_id)

        # a job submitted before an interruption is collected, not recomputed (or resubmitted if lost)
        pending = checkpoint.jobs.get(str(index)) if checkpoint is not None and collect is not None else None
        try:
            values = ndif.run(target, model.source.model_id, lambda chunk=chunk: _session(model, chunk, config, stats),
                              collect, on_job, pending=pending, result_bytes=result_bytes(model, chunk, config))
        except ndif.JobFailed:
            if checkpoint is not None:  # its id is worth nothing now; a rerun submits the request afresh
                checkpoint.jobs.pop(str(index), None)
            raise
        totals, counts, tokens = values["totals"], values["counts"], values.get("tokens")
        residual = [values["resid"], *values["probe"]] if "resid" in values else []
        before = len(generations) if generations is not None else 0
        reducing = time.perf_counter()
        _collect(model, stats, chunk, values, generations)
        job = submissions[-1] if submissions else pending
        log = {"request": index, "job": job, "reduce_s": round(time.perf_counter() - reducing, 4),
               "batches": len(chunk), "prompts": sum(len(p.batch) for p in chunk),
               "slots": len(request_slots(chunk)), "sent_tensor_bytes": ndif.nbytes(*[t for p in chunk for t in sent_tensors(p)]),
               "received_tensor_bytes": ndif.nbytes(totals, counts, *residual) + (sum(ndif.nbytes(t) for t in tokens) if tokens else 0),
               "seconds": round(time.time() - started, 3), "submissions": len(submissions),
               "wire": ndif.wire(job)}
        if checkpoint is not None:
            if generations is not None:
                checkpoint.path.mkdir(parents=True, exist_ok=True)
                with open(checkpoint.path / "generations.jsonl", "a", encoding="utf-8") as fh:
                    for record in generations[before:]:
                        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            checkpoint.collected(index, log, stats)
        if progress:
            progress(index + 1, len(requests))


def _session(model: LoadedModel, chunk: list[Prepared], config: CaptureConfig, stats: ActivationStats, examples: bool = False):
    """One request (local, simulated or on NDIF): every batch of ``chunk`` reduced into one
    [L, 3, slots, W] total inside a session. The body names only the envoy, tensors, plain data
    and small functions, because on NDIF it runs where vneuron is not installed. ``examples`` (local
    only): also each row's mean activation per neuron, [L, B, W] per batch, for the top examples.
    ``config.residual``: also the block outputs' [L, slots, H] sums and each row's mean (the probe
    rows, [L, B, k] per batch), reduced by ``vneuron.locate.residual``.
    """
    from vneuron.runtime.remote import outcome, trace_kwargs

    lm = model.lm
    path = site_path(model.arch, config.site)
    present = request_slots(chunk).tolist()  # the result holds the sums of these slots only
    local = {slot: i for i, slot in enumerate(present)}
    width, n_layers, n_slots = model.width, model.n_layers, len(present)
    work = [(*sent_tensors(p, local), p.rows if examples else None) for p in chunk]
    device = model.local_device  # a local model's inputs go where its embeddings are (a server places its own)
    if device:
        work = [(ids.to(device), mask.to(device), *rest) for ids, mask, *rest in work]
    prompt_mode = config.mode == "prompt"
    steps, pad = config.max_new_tokens, pad_id(model.tokenizer)
    eos = torch.tensor(_eos_ids(model) or [-1])
    # float32 sums on the server halve the download; float64 models (tests) stay exact
    dtype = torch.float64 if model.extra.get("dtype") == "float64" else torch.float32
    residual, probe_width, hidden = config.residual, config.probe_width, model.arch.hidden(model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight warns when every row stops before the last step
        with lm.session(**trace_kwargs(model)) as session:
            totals = torch.zeros(n_layers, 3, n_slots, width, dtype=dtype)
            counts = torch.zeros(n_slots, dtype=dtype)
            tokens = []
            means = []  # per batch, [L, B, W] row means (only with `examples`)
            resid = torch.zeros(n_layers, n_slots, hidden if residual else 0, dtype=dtype)
            probe = []  # per batch, [L, B, k] probe rows (only with `residual`)
            for ids, mask, weights, keep, slots, per_row in work:
                positions = position_ids(mask)  # made where the batch runs, not sent
                if prompt_mode:  # count the marked tokens of each prompt
                    with lm.trace({"input_ids": ids, "attention_mask": mask, "position_ids": positions}) as tracer:
                        sums, layer_means, layer_resid = [], [], []
                        for block in resolve_path(lm, path[0]):
                            v = site_tensor(block, path)
                            sums.append(reduce_sums(weights, v, width, keep))
                            if per_row is not None:
                                layer_means.append(row_means(per_row, v, width, keep))
                            if residual:
                                layer_resid.append(reduce_residual(weights, block.output, keep, probe_width))
                        reduced = torch.stack(sums)
                        tracer.stop()  # nothing after the last block's output is needed (no LM head)
                    if per_row is not None:
                        means.append(torch.stack(layer_means))
                    if residual:
                        resid[:, slots] += torch.stack([r[0] for r in layer_resid]).to(resid.device, dtype)
                        probe.append(torch.stack([r[1] for r in layer_resid]).cpu())
                    totals[:, :, slots] += reduced.to(totals.device, dtype)  # to the host, once per batch
                    counts[slots] += weights.sum(1).to(dtype)
                else:  # greedy generation; step k reads the token sampled at step k-1; stop rows at EOS
                    rows = ids.shape[0]
                    with lm.generate({"input_ids": ids, "attention_mask": mask}, max_new_tokens=steps + 1, do_sample=False,
                                     pad_token_id=pad) as tracer:
                        finished = torch.zeros(rows, dtype=torch.bool)
                        generated = torch.full((rows, steps), -1, dtype=torch.long)
                        batch_totals = torch.zeros(n_layers, 3, len(slots), width, dtype=dtype)
                        row_sums = torch.zeros(n_layers, rows, width) if per_row is not None else None
                        row_counts = torch.zeros(rows)
                        row_resid = torch.zeros(n_layers, rows, sketch_width(hidden, probe_width)) if residual else None
                        for step in tracer.iter[1: steps + 1]:
                            step_ids = lm.inputs[1]["input_ids"][:, -1].cpu()  # a few ids: the bookkeeping stays on the host
                            is_eos = torch.isin(step_ids, eos)
                            alive = ~finished & ~is_eos
                            finished = finished | is_eos
                            generated[:, step - 1] = torch.where(alive, step_ids, -1)
                            w = weights * alive.float()[None]
                            counts[slots] += w.sum(1).to(dtype)
                            row_counts = row_counts + alive.float()
                            for layer, block in enumerate(resolve_path(lm, path[0])):
                                v = site_tensor(block, path)
                                batch_totals[layer] += reduce_sums(w, v[:, -1, :], width).to(batch_totals.device, dtype)
                                if row_sums is not None:
                                    row_sums[layer] += v[:, -1, :].float().cpu() * alive.float()[:, None]
                                if residual:
                                    slot_sums, rows_now = step_residual(w, block.output, alive, probe_width)
                                    resid[layer, slots] += slot_sums.to(resid.device, dtype)
                                    row_resid[layer] += rows_now.to(row_resid.device)
                        totals[:, :, slots] += batch_totals
                    tokens.append(generated)
                    if row_sums is not None:
                        means.append(row_sums / row_counts[None, :, None])  # NaN: a row that generated nothing
                    if residual:
                        probe.append(row_resid / row_counts[None, :, None])
            totals.save()
            counts.save()
            tokens.save()
            means.save()
            resid.save()
            probe.save()
    return outcome(model, session, lambda: {"totals": totals, "counts": counts, "tokens": tokens if not prompt_mode else None,
                                            **({"rows": means} if examples else {}),
                                            **({"resid": resid, "probe": probe} if residual else {})})


def sent_tensors(p: Prepared, local: dict[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """What a request carries of a batch: ids, mask, token weights, counted rows and its slots (as
    positions in the request's result when ``local`` maps them)."""
    slots = p.slots if local is None else torch.tensor([local[int(s)] for s in p.slots], dtype=torch.long)
    return p.ids, p.mask, p.weights, p.keep, slots


def slot_matrix(batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct slots of a batch and the [S, B] one-hot that routes each row to its slot."""
    slots = sorted({e.slot for e in batch})
    onehot = torch.zeros(len(slots), len(batch))
    for row, e in enumerate(batch):
        onehot[slots.index(e.slot), row] = 1.0
    return torch.tensor(slots, dtype=torch.long), onehot


def reduce_sums(weights: torch.Tensor, value: torch.Tensor, width: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[3, S, W]: Σa, Σa², count(a>0) per slot (float64 models keep float64).

    ``keep`` lists the token rows that count: padding rows are dropped before any arithmetic
    (some models produce NaN at fully masked positions, and NaN·0 is NaN). The result stays on the
    activations' device; the caller moves it to the host once per batch.
    """
    a = value.reshape(-1, width)
    if keep is not None:
        a, weights = a[keep.to(a.device)], weights[:, keep]
    a = a if a.dtype == torch.float64 else a.float()
    w = weights.to(a.device, a.dtype)  # reduced where the activations are (a GPU, a layer's device under a device map)
    return torch.stack([w @ a, w @ (a * a), w @ (a > 0).to(a.dtype)])


def _eos_ids(model: LoadedModel) -> list[int]:
    eos = getattr(model.lm.generation_config, "eos_token_id", None) if hasattr(model.lm, "generation_config") else None
    eos = eos if eos is not None else model.tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
