"""Text to model inputs: tokens with their counted span, padded batches under a token budget.

Capture, evaluation, planting and neuron cards all tokenise and batch the same way, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError

T = TypeVar("T")


@dataclass
class Encoded:
    ids: list[int]
    counted: list[bool]  # per token: does it count
    prompt: Prompt
    slot: int


def encode(tokenizer, prompts: Sequence[Prompt], slots: Sequence[int], *, counted_span: bool = True) -> list[Encoded]:
    """Tokenise and mark counted tokens from character offsets (special tokens never count)."""
    if not getattr(tokenizer, "is_fast", False):
        raise VneuronError("vneuron needs a fast tokenizer (character offsets)", "load the model with a tokenizer.json")
    enc = tokenizer([p.text for p in prompts], return_offsets_mapping=True, add_special_tokens=True)
    out = []
    for prompt, slot, ids, offsets in zip(prompts, slots, enc["input_ids"], enc["offset_mapping"]):
        lo, hi = prompt.span if (prompt.span and counted_span) else (0, len(prompt.text))
        counted = [end > start and start < hi and end > lo for start, end in offsets]
        if counted_span and not any(counted):
            raise VneuronError(f"Prompt {prompt.id!r} has no token in its counted span", "check the item's text is not empty")
        out.append(Encoded(list(ids), counted, prompt, slot))
    return out


def token_batches(things: Sequence[T], length: Callable[[T], int], batch_tokens: int, max_batch: int = 64) -> list[list[T]]:
    """Length-sorted batches whose padded size (rows × longest) stays under ``batch_tokens``."""
    out: list[list[T]] = []
    current: list[T] = []
    for thing in sorted(things, key=length):
        if current and ((len(current) + 1) * length(thing) > batch_tokens or len(current) >= max_batch):
            out.append(current)
            current = []
        current.append(thing)
    if current:
        out.append(current)
    return out


def batches(encoded: list[Encoded], batch_tokens: int, max_batch: int = 64) -> list[list[Encoded]]:
    """Length-sorted batches of encoded prompts under ``batch_tokens`` padded tokens."""
    return token_batches(encoded, lambda e: len(e.ids), batch_tokens, max_batch)


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def pack(batch: list[Encoded], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, counted) of a batch, padded on the left or the right."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    counted = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        cols = slice(width - len(e.ids), width) if left else slice(0, len(e.ids))
        ids[row, cols] = torch.tensor(e.ids)
        mask[row, cols] = 1
        counted[row, cols] = torch.tensor(e.counted)
    return ids, mask, counted


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (GPT-2 mispredicts without them)."""
    return (mask.cumsum(-1) - 1).clamp_min(0)
