"""The residual stream beside the neurons: what a capture keeps of every block's output.

Read in the same forward pass as the neuron statistics (``capture._session``), local and on NDIF alike:

* **the sums**: per (label, fold, layer), Σh over the counted tokens of the block output h (the residual
  stream after that layer), float32 per batch and float64 totals on the client like the neuron sums (exact
  for float64 models). A pole's mean residual minus its opposite's is the direction d_L of the direction
  baselines (``vneuron.validate.directions``). [labels × folds × layers × hidden] float64: a few vectors
  of the model's hidden size per layer.
* **the probe rows**: per prompt and layer, the mean of h over that prompt's counted tokens, what the
  held-out probes (``vneuron.locate.probes``) fit and score. The prompt is the unit, not the token: the
  tokens of one text are not independent, the bootstrap resamples prompts, and a prompt's mean projected
  on d equals the mean of its tokens' projections. Rows are float32 [prompts × layers × k]: k = hidden
  when hidden ≤ ``probe_width`` (exact), otherwise a signed bucket sketch of width ≤ ``probe_width``
  (``sketch``: each coordinate sums ±h_i over ⌈hidden/k⌉ consecutive dimensions with fixed pseudo-random
  signs, so inner products are kept in expectation), made inside the trace so that a remote run downloads
  k numbers per prompt and layer, not hidden. **The bound**: 4·prompts·layers·k bytes in memory, on disk
  and over the network — 47 MB for the built-in corpus (1,024 prompts) on Gemma-3-270M (18 layers,
  hidden 640, exact), 134 MB at the 8B shape (32 layers, k = 1,024), 336 MB at the 70B shape (80 layers).
  The alternative, two passes (directions from one fold, the other fold projected on them in the trace),
  costs a second capture of the corpus and still leaves the logistic probe without features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from vneuron.errors import VneuronError

RESIDUAL = "residual.safetensors"  # beside the run's statistics
KEYS = ("n", "sum", "rows", "prompt_labels", "prompt_folds")
HASH = 2654435761  # Knuth's multiplicative hash: the sketch's fixed signs, computed where the trace runs


def sketch_width(hidden: int, probe_width: int) -> int:
    """k, the width of the probe rows: ``hidden`` itself up to ``probe_width``, else ⌈hidden / ⌈hidden / probe_width⌉⌉."""
    if hidden <= probe_width:
        return hidden
    group = -(-hidden // probe_width)
    return -(-hidden // group)


def sketch(x: torch.Tensor, probe_width: int) -> torch.Tensor:
    """x [..., hidden] → [..., k]: unchanged when hidden ≤ ``probe_width``, else coordinate j = Σ s_i·x_i over
    the dimensions i of bucket j (⌈hidden/k⌉ consecutive ones), s_i = ±1 from a hash of i. Linear, so the
    sketch of a mean is the mean of the sketches; made on the tensor's own device (inside a remote trace too)."""
    hidden = x.shape[-1]
    if hidden <= probe_width:
        return x
    group = -(-hidden // probe_width)
    i = torch.arange(hidden, device=x.device)
    signs = (1 - 2 * (((i * HASH) >> 16) & 1)).to(x.dtype)
    out = torch.zeros(*x.shape[:-1], -(-hidden // group), dtype=x.dtype, device=x.device)
    return out.index_add_(x.dim() - 1, i // group, x * signs)


def block_hidden(output):
    """The residual stream a decoder block hands on (its output, or the first element of a tuple output)."""
    return output[0] if isinstance(output, tuple) else output


def reduce_residual(weights: torch.Tensor, output, keep: torch.Tensor, probe_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt mode, one block: ([S, hidden] Σh per slot, [B, k] each row's mean sketched) over counted tokens.

    ``weights`` [S, B*T] and ``keep`` (the counted token rows) as for ``capture.reduce_sums``: padding is
    dropped before any arithmetic. A row without counted tokens gets NaN. Runs inside the trace.
    """
    h = block_hidden(output)
    rows, length, hidden = h.shape
    keep = keep.to(h.device)
    a = h.reshape(-1, hidden)[keep]
    a = a if a.dtype == torch.float64 else a.float()
    w = weights.to(h.device)[:, keep].to(a.dtype)
    row_of = (torch.arange(rows, device=h.device)[:, None] == (keep // length)[None]).to(a.dtype) * w.sum(0)[None]  # [B, N]
    means = sketch(row_of @ a, probe_width) / row_of.sum(1, keepdim=True)
    return w @ a, means.float()


def step_residual(weights: torch.Tensor, output, alive: torch.Tensor, probe_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate mode, one block at one step: ([S, hidden] Σh per slot, [B, k] each row's h sketched, 0 where
    the row has stopped) of the newest position; ``weights`` [S, B] already zero for stopped rows."""
    h = block_hidden(output)[:, -1, :]
    a = h if h.dtype == torch.float64 else h.float()
    return weights.to(a.device, a.dtype) @ a, (sketch(a, probe_width) * alive.to(a.device, a.dtype)[:, None]).float()


@dataclass
class ResidualStats:
    """Residual sums per (label, fold, layer) and probe rows per prompt (the module docstring says why both)."""

    labels: list[str]
    folds: int
    n: torch.Tensor  # [K, F] tokens counted (the neuron statistics' counts)
    sum: torch.Tensor  # [K, F, L, H] float64
    rows: torch.Tensor  # [P, L, k] float32 per-prompt means (NaN: no counted token, or not captured yet)
    prompt_labels: torch.Tensor  # [P] label index of each prompt
    prompt_folds: torch.Tensor  # [P] fold of each prompt
    probe_width: int = 1024
    groups: dict = field(default_factory=dict)  # derived label → captured labels it pools (as ActivationStats.groups)

    @classmethod
    def zeros(cls, labels: Sequence[str], folds: int, n_layers: int, hidden: int, prompt_labels: Sequence[int],
              prompt_folds: Sequence[int], probe_width: int) -> "ResidualStats":
        k = len(labels)
        rows = torch.full((len(prompt_labels), n_layers, sketch_width(hidden, probe_width)), torch.nan)
        return cls(list(labels), folds, torch.zeros(k, folds, dtype=torch.float64),
                   torch.zeros(k, folds, n_layers, hidden, dtype=torch.float64), rows,
                   torch.tensor(list(prompt_labels), dtype=torch.long), torch.tensor(list(prompt_folds), dtype=torch.long),
                   probe_width)

    @property
    def n_layers(self) -> int:
        return self.sum.shape[2]

    @property
    def hidden(self) -> int:
        return self.sum.shape[3]

    @property
    def sketched(self) -> bool:
        return self.rows.shape[2] != self.hidden

    def add_(self, slots: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """Add one request's totals: ``sums`` [L, S, H] for flat slots (label * folds + fold)."""
        self.sum.view(-1, self.n_layers, self.hidden).index_add_(0, slots, sums.permute(1, 0, 2).to(torch.float64))
        self.n.view(-1).index_add_(0, slots, counts.to(torch.float64))

    def put_rows(self, prompts: torch.Tensor, means: torch.Tensor) -> None:
        """Keep one batch's probe rows: ``means`` [L, B, k] for the prompt indices ``prompts`` [B]."""
        self.rows[prompts] = means.permute(1, 0, 2).float()

    def members(self, label: str) -> list[int]:
        """The captured labels a pole pools (a derived whole-value pole pools several)."""
        names = self.groups.get(label, [label])
        missing = [m for m in names if m not in self.labels]
        if missing:
            raise VneuronError(f"No residual statistics for label {missing[0]!r}", f"the run has: {', '.join(self.labels)}")
        return [self.labels.index(m) for m in names]

    def mean(self, label: str, fold: int | None = None) -> torch.Tensor:
        """[L, H] mean residual over the label's counted tokens (all folds, or one)."""
        k = self.members(label)
        n = self.n[k].sum() if fold is None else self.n[k, fold].sum()
        if float(n) == 0:
            raise VneuronError(f"Label {label!r} has no counted tokens" + ("" if fold is None else f" in fold {fold}"),
                               "add texts for it, or check the span the dataset marks")
        total = self.sum[k].sum((0, 1)) if fold is None else self.sum[k, fold].sum(0)
        return total / n

    def difference(self, pole: str, opposite: str, fold: int | None = None) -> torch.Tensor:
        """[L, H] d_L: the pole's mean residual minus its opposite's, per layer."""
        return self.mean(pole, fold) - self.mean(opposite, fold)

    def describe(self) -> dict:
        """What the manifest records of the file."""
        return {"file": RESIDUAL, "hidden": self.hidden, "layers": self.n_layers, "prompts": int(self.rows.shape[0]),
                "probe_width": self.probe_width, "row_width": int(self.rows.shape[2]), "sketched": self.sketched,
                "sums": "Σ block output over counted tokens per (label, fold, layer), float64",
                "rows": "per prompt and layer, the mean block output over its counted tokens" + (
                    f", sketched to {self.rows.shape[2]} signed buckets" if self.sketched else "") + ", float32"}

    # -- disk ---------------------------------------------------------------------------
    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + key: getattr(self, key).contiguous() for key in KEYS}

    def metadata(self, prefix: str = "") -> dict[str, str]:
        return {prefix + "labels": json.dumps(self.labels), prefix + "folds": str(self.folds),
                prefix + "probe_width": str(self.probe_width)}

    @classmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor], prefix: str = "") -> "ResidualStats":
        return cls(json.loads(meta[prefix + "labels"]), int(meta[prefix + "folds"]),
                   *(tensors[prefix + key] for key in KEYS), int(meta[prefix + "probe_width"]))

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors(), str(path), metadata=self.metadata())

    @classmethod
    def load(cls, path: Path) -> "ResidualStats":
        from vneuron.locate.examples import read_tensors

        meta, t = read_tensors(path, KEYS, ("labels", "folds", "probe_width"), "residual statistics")
        return cls.from_tensors(meta, t)


def residual_bytes(labels: int, folds: int, n_layers: int, hidden: int, prompts: int, probe_width: int) -> int:
    """The size of a run's residual file: the float64 sums and the float32 probe rows."""
    return 8 * labels * folds * (n_layers * hidden + 1) + 4 * prompts * n_layers * sketch_width(hidden, probe_width) + 16 * prompts
