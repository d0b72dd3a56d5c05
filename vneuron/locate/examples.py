"""The texts that activate each neuron most and least, collected during capture.

Per label, neuron and side, the ``N`` texts with the highest (lowest) mean activation over their
counted tokens, merged batch by batch (a streaming top-N, exact for the texts the run saw), are
kept as four [labels, N, layers, width] tensors: values and prompt indices, most and least. A
neuron card reads them, so it needs neither the model nor a pass over the corpus. Only local
captures collect them: remotely, the per-text means of every neuron would cross the network with
every request (N = 5 on Llama-3.1-70B: about 0.4 GB per request), so a remote run's cards need a
local copy of the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError

EXAMPLES = "examples.safetensors"  # beside the run's statistics
SCORE = "mean activation over the text's counted tokens"


@dataclass
class TopExamples:
    """The N most and least activating texts per (label, layer, neuron); ids index ``prompts``."""

    site: str
    labels: list[str]
    prompts: list[dict]  # per prompt index: id, label, text, span (what the run counted)
    top_values: torch.Tensor  # [K, N, L, W] float32, best first (-inf: fewer than N texts)
    top_ids: torch.Tensor  # [K, N, L, W] int32 (-1: none)
    bottom_values: torch.Tensor  # [K, N, L, W] lowest first (+inf: none)
    bottom_ids: torch.Tensor

    @classmethod
    def empty(cls, site: str, labels: Sequence[str], n: int, n_layers: int, width: int,
              prompts: Sequence[Prompt]) -> "TopExamples":
        shape = (len(labels), n, n_layers, width)
        return cls(site, list(labels), [{"id": p.id, "label": p.label, "text": p.text, "span": list(p.span) if p.span else None}
                                        for p in prompts],
                   torch.full(shape, -torch.inf), torch.full(shape, -1, dtype=torch.int32),
                   torch.full(shape, torch.inf), torch.full(shape, -1, dtype=torch.int32))

    @property
    def n(self) -> int:
        return self.top_values.shape[1]

    def merge(self, labels: torch.Tensor, prompts: torch.Tensor, means: torch.Tensor) -> None:
        """Fold one batch in: ``labels`` and ``prompts`` [B] per row, ``means`` [L, B, W] (rows without counted tokens: NaN)."""
        counted = ~means.isnan().any(2).any(0)
        for k in labels[counted].unique().tolist():
            rows = (labels == k) & counted
            values = means[:, rows].permute(1, 0, 2).float()  # [b, L, W]
            ids = prompts[rows].to(torch.int32)[:, None, None].expand_as(values)
            for best, where, sign in ((self.top_values, self.top_ids, 1.0), (self.bottom_values, self.bottom_ids, -1.0)):
                pool = torch.cat([best[k] * sign, values * sign])
                pool_ids = torch.cat([where[k], ids])
                kept, order = pool.topk(self.n, dim=0)
                best[k] = kept * sign
                where[k] = pool_ids.gather(0, order)

    def neuron(self, layer: int, unit: int) -> dict[str, dict[str, list[tuple[dict, float]]]]:
        """label → {"most": [(prompt, value), ...], "least": [...]} for one neuron."""
        out = {}
        for k, label in enumerate(self.labels):
            sides = {}
            for side, values, ids in (("most", self.top_values, self.top_ids), ("least", self.bottom_values, self.bottom_ids)):
                sides[side] = [(self.prompts[int(i)], float(v)) for i, v in zip(ids[k, :, layer, unit], values[k, :, layer, unit])
                               if int(i) >= 0]
            out[label] = sides
        return out

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        meta = {"site": self.site, "labels": json.dumps(self.labels), "score": SCORE,
                "prompts": json.dumps(self.prompts, ensure_ascii=False)}
        save_file({"top_values": self.top_values, "top_ids": self.top_ids, "bottom_values": self.bottom_values,
                   "bottom_ids": self.bottom_ids}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> "TopExamples":
        meta, t = read_tensors(path, ("top_values", "top_ids", "bottom_values", "bottom_ids"), ("site", "labels", "prompts"),
                               "top examples")
        return cls(meta["site"], json.loads(meta["labels"]), json.loads(meta["prompts"]), t["top_values"], t["top_ids"],
                   t["bottom_values"], t["bottom_ids"])


def read_tensors(path: Path, keys: Sequence[str], meta_keys: Sequence[str], what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and the named tensors of a safetensors file vneuron wrote; a damaged file is one line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            tensors = {key: fh.get_tensor(key) for key in keys}
        missing = [key for key in meta_keys if key not in (meta or {})]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in its metadata")
        return meta, tensors
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError on truncated files
        raise VneuronError(f"{path} is not readable vneuron {what} ({exc.__class__.__name__}: {str(exc)[:80]})",
                           "it is truncated or corrupt: restore it, or rerun vneuron locate") from None


def row_means(rows: torch.Tensor, value: torch.Tensor, width: int, keep: torch.Tensor) -> torch.Tensor:
    """[B, W]: each row's mean activation over its counted tokens (``rows``: [B, B*T] weights 1/count).

    Like ``capture.reduce_sums``, padding rows are dropped first (``keep``); a row with no counted
    token gets NaN, so the merge skips it.
    """
    a = value.reshape(-1, width)[keep.to(value.device)]
    a = a if a.dtype == torch.float64 else a.float()
    w = rows[:, keep].to(a.device, a.dtype)  # the weights meet the activations where they are (a GPU, a layer's device)
    return ((w @ a) / (w.sum(1, keepdim=True) > 0).to(a.dtype)).cpu()
