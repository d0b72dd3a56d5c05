"""``bf16-mixed``: the decoder blocks' matrix products in bfloat16, everything else in float32 (issue 27).

Each linear map inside a block keeps its weight in bfloat16 and computes its product on a bfloat16 copy of its input,
returning the input's dtype; its bias is added in float32. So the residual stream, the MLP activations a neuron edit
reads and writes, the norms, attention's softmax, the LM head and every log-softmax stay float32. The modules keep
their names and behaviour (a subclass per class, only ``forward`` replaced), so tracing, edits and captures see float32
tensors where they did. The family's storage convention comes from its Architecture record (``transposed``: weight
[in, out], x @ W + b).
"""

from __future__ import annotations

import torch

_CLASSES: dict[tuple[type, bool], type] = {}


def _linear(self, x):
    out = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
    return out if self.bias is None else out + self.bias


def _transposed(self, x):
    out = (x.reshape(-1, x.size(-1)).to(torch.bfloat16) @ self.weight).to(x.dtype)
    out = out if self.bias is None else out + self.bias
    return out.view(*x.shape[:-1], self.weight.shape[1])


def _maps(block, transposed: bool):
    """(module, stored transposed?) for every linear map of a block: torch's Linear, and in a transposed family every
    leaf module with a 2-D weight (its projections)."""
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            yield module, False
        elif transposed and not any(True for _ in module.children()) and getattr(module, "weight", None) is not None \
                and module.weight.dim() == 2 and not isinstance(module, torch.nn.Embedding):
            yield module, True


def mix(blocks, arch) -> int:
    """Turn the float32 ``blocks`` of a model of family ``arch`` to bf16-mixed in place; returns how many maps."""
    count = 0
    for block in blocks:
        for module, transposed in list(_maps(block, arch.transposed)):
            cls = type(module)
            if (cls, transposed) not in _CLASSES:
                _CLASSES[cls, transposed] = type(cls.__name__, (cls,), {
                    "forward": _transposed if transposed else _linear, "__module__": cls.__module__,
                    "__doc__": f"{cls.__name__}, its product in bfloat16 (vneuron bf16-mixed)"})
            module.__class__ = _CLASSES[cls, transposed]
            module.weight.data = module.weight.data.to(torch.bfloat16)
            count += 1
    return count
