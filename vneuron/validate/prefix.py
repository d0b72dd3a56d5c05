"""Scoring many continuations of shared prefixes at once: token tries packed into rows.

The (prefix, continuation) pairs of forced choice share most of their tokens: both options of
an item and order share one prefix, both orders share the scenario, and PVQ answers share the
portrait. A row of a batch holds the token trie of consecutive pairs (each shared token once); a
4-D attention mask lets every token attend only to its ancestors and the position ids are the
depths, so every path computes what its own unpadded sequence would. The LM head runs only at the
nodes whose next token is scored, and nothing after the final norm is computed.

A batch carries the trie's parents ([B, T] node indices), not its mask: ``attention_mask`` builds the
[B, 1, T, T] mask from them with a few tensor operations, on the client for a local model and inside
the request on an NDIF server, so a remote request uploads B × T integers instead of B × T² floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch

from vneuron.runtime.tokens import Encoded, token_batches

ROW_TOKENS = 256  # trie nodes per row: attention over a row is dense, so rows stay short
LOGIT_BUDGET = 48_000_000  # floats of [scored positions, vocab] logits held at once


@dataclass
class Row:
    """One trie: nodes in creation order (a parent always precedes its children)."""

    ids: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    children: dict[tuple[int, int], int] = field(default_factory=dict)  # (parent node, token) → node
    scored: list[tuple[int, int, int]] = field(default_factory=list)  # (predicting node, target token, pair)
    counted: list[int] = field(default_factory=list)  # the node of each counted token of each pair (a shared node: once a pair)

    def new_nodes(self, ids: Sequence[int]) -> int:
        node = -1
        for n, token in enumerate(ids):
            child = self.children.get((node, token))
            if child is None:
                return len(ids) - n
            node = child
        return 0

    def insert(self, e: Encoded, pair: int) -> None:
        node, path = -1, []
        for token in e.ids:
            child = self.children.get((node, token))
            if child is None:
                child = len(self.ids)
                self.children[(node, token)] = child
                self.ids.append(token)
                self.parent.append(node)
                self.depth.append(self.depth[node] + 1 if node >= 0 else 0)
            path.append(child)
            node = child
        for j in range(1, len(e.ids)):  # the token at j is predicted by the node at j - 1
            if e.counted[j]:
                self.scored.append((path[j - 1], e.ids[j], pair))
        self.counted.extend(node for node, counted in zip(path, e.counted) if counted)


def pack(encoded: Sequence[Encoded], row_tokens: int = ROW_TOKENS) -> list[Row]:
    """Consecutive sequences share a row (and their common prefix) while it stays under ``row_tokens``."""
    rows: list[Row] = []
    for e in encoded:
        if not rows or len(rows[-1].ids) + rows[-1].new_nodes(e.ids) > max(row_tokens, len(e.ids)):
            rows.append(Row())
        rows[-1].insert(e, e.slot)
    return rows


def row_batches(rows: list[Row], batch_tokens: int, max_batch: int = 64) -> list[list[Row]]:
    """Length-sorted batches of rows whose padded size stays under ``batch_tokens``."""
    return token_batches(rows, lambda r: len(r.ids), batch_tokens, max_batch)


@dataclass
class Batch:
    """Model inputs of a batch of tries and where its scored tokens are."""

    ids: torch.Tensor  # [B, T]
    positions: torch.Tensor  # [B, T]
    parents: torch.Tensor  # [B, T] each node's parent in its row (-1: a root, or padding)
    dtype: torch.dtype  # of the attention mask
    rows: torch.Tensor  # [N] row of each distinct predicting node
    cols: torch.Tensor  # [N] its column
    targets: torch.Tensor  # [S] scored tokens
    node_of: torch.Tensor  # [S] which of the N nodes predicts each
    pairs: torch.Tensor  # [S] the pair each scored token belongs to
    counted: torch.Tensor | None = None  # [B, T] float64: how many pairs count each node's token (0: none, padding)

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())

    @cached_property
    def mask(self) -> torch.Tensor:
        """[B, 1, T, T] additive (0: attend, dtype min: not), built from ``parents``."""
        return attention_mask(self.parents, self.dtype)

    def head_chunks(self, vocab: int, budget: int = LOGIT_BUDGET) -> list[tuple[int, int, int, int]]:
        """(first node, end node, first scored token, end scored token) per LM-head chunk."""
        out = []
        for lo, hi in head_chunks(len(self.rows), vocab, budget):
            sel = ((self.node_of >= lo) & (self.node_of < hi)).nonzero().squeeze(1)
            out.append((lo, hi, int(sel[0]), int(sel[-1]) + 1))
        return out


def tensors(batch: list[Row], pad: int, dtype: torch.dtype) -> Batch:
    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    parents = torch.full((len(batch), width), -1, dtype=torch.long)  # padding: a root that sees only itself
    nodes: dict[tuple[int, int], int] = {}
    counted = torch.zeros((len(batch), width), dtype=torch.float64)
    targets, node_of, pairs = [], [], []
    for b, row in enumerate(batch):
        n = len(row.ids)
        ids[b, :n] = torch.tensor(row.ids)
        positions[b, :n] = torch.tensor(row.depth)
        parents[b, :n] = torch.tensor(row.parent)
        if row.counted:
            counted[b].index_add_(0, torch.tensor(row.counted, dtype=torch.long), torch.ones(len(row.counted), dtype=torch.float64))
        for node, target, pair in row.scored:
            targets.append(target)
            node_of.append(nodes.setdefault((b, node), len(nodes)))
            pairs.append(pair)
    where = torch.tensor(list(nodes), dtype=torch.long).reshape(-1, 2)
    order = torch.argsort(torch.tensor(node_of, dtype=torch.long), stable=True)  # head chunks take contiguous runs
    return Batch(ids, positions, parents, dtype, where[:, 0], where[:, 1], torch.tensor(targets, dtype=torch.long)[order],
                 torch.tensor(node_of, dtype=torch.long)[order], torch.tensor(pairs, dtype=torch.long)[order], counted)


def attention_mask(parents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask in which every node attends to itself and its ancestors only.

    ``parents`` [B, T]: each node's parent (-1 for a root; a parent precedes its children). Pointer
    doubling: after round k every node holds its ancestors up to 2^k steps up, so ⌈log2 T⌉ rounds of
    one gather each reach the root. Only tensors and plain data: it also runs inside a request on an
    NDIF server, where vneuron is not installed.
    """
    rows, width = parents.shape
    own = torch.arange(width, device=parents.device).expand(rows, width)
    up = torch.where(parents >= 0, parents, own)  # a root's pointer stays on itself
    allowed = torch.eye(width, dtype=torch.bool, device=parents.device).expand(rows, width, width).clone()
    allowed.scatter_(2, up[..., None], True)
    for _ in range(max(1, math.ceil(math.log2(max(width, 2))))):
        allowed = allowed | torch.gather(allowed, 1, up[..., None].expand(rows, width, width))
        up = torch.gather(up, 1, up)
    return torch.zeros(allowed.shape, dtype=dtype, device=parents.device).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def head_chunks(n: int, vocab: int, budget: int = LOGIT_BUDGET) -> list[tuple[int, int]]:
    """Slices of the scored nodes whose logits fit the budget together."""
    step = max(1, budget // max(vocab, 1))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def head_logsumexp(hidden: torch.Tensor, weight, bias, post: tuple[str, float] | None, rows: torch.Tensor,
                   tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp over the vocabulary of each row of ``hidden``'s logits, and the logit of each (``rows``, ``tokens``)
    pick, in ``dtype``: the head read a block of the vocabulary at a time (a few thousand rows of ``weight`` on a CPU,
    so a [rows, block] logit tile stays in cache), with a running maximum, so [rows, vocab] logits are never held.
    On 2 CPU cores this is ≈ 20 % faster than logits followed by log_softmax (benchmarks/head.py), and the same to
    float rounding. ``post``: the family's logit post-processing. Differentiable; only tensors and plain data: it also
    runs inside a (remote) trace body."""
    vocab = weight.shape[0]
    block = 4096 if weight.device.type == "cpu" else 65536
    picked = torch.zeros(tokens.shape, dtype=dtype, device=weight.device)
    maxes, sums = [], []
    for lo in range(0, vocab, block):
        hi = min(lo + block, vocab)
        z = torch.nn.functional.linear(hidden, weight[lo:hi], None if bias is None else bias[lo:hi])
        if post is not None and post[0] == "softcap":
            z = torch.tanh(z / post[1]) * post[1]
        elif post is not None:
            z = z / post[1]
        z = z.to(dtype)
        top = z.detach().amax(-1)
        tiles = z - top[:, None]
        sums.append((tiles.exp() if tiles.requires_grad else tiles.exp_()).sum(-1))
        maxes.append(top)
        inside = (tokens >= lo) & (tokens < hi)
        picked = torch.where(inside, z[rows, (tokens - lo).clamp(0, hi - lo - 1)], picked)
    tops = torch.stack(maxes)
    top = tops.amax(0)
    return top + (torch.stack(sums) * (tops - top).exp()).sum(0).log(), picked


def head_logprobs(hidden: torch.Tensor, weight, bias, post: tuple[str, float] | None,
                  chunks: list[tuple[int, int, int, int]], node_of: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of every scored token, from the final-normed hidden state of its predicting node.

    The one LM-head scorer of vneuron (evaluation, planting, dry-run calibration): the head runs
    chunk by chunk (``Batch.head_chunks``), each chunk through ``head_logsumexp`` in float32; ``post``
    is the family's logit post-processing (``Architecture.post``). Only tensors and plain data go
    in, so it also runs inside a (remote) trace body; it is differentiable. The logits are made and
    gathered on the head's device; only the scored tokens' log-probabilities come to the host.
    """
    parts = []
    for lo, hi, s_lo, s_hi in chunks:
        rows = node_of[s_lo:s_hi].to(weight.device) - lo
        lse, picked = head_logsumexp(hidden[lo:hi].to(weight.device), weight, bias, post, rows, targets[s_lo:s_hi].to(weight.device))
        parts.append((picked - lse[rows]).cpu())  # the scored tokens' log-probabilities, to the host
    return torch.cat(parts)
