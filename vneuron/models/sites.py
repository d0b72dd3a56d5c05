"""Where the MLP neurons live: module paths to the tensors capture reads and edits write.

A neuron is one unit of an MLP's hidden layer. It can be read at two sites:

* ``gate`` — the output of the MLP's activation function, act(gate_proj(x)) in gated MLPs.
  This is what ValueLocate, ValueExploration and LAPE measure ("active" means a > 0) and edit.
* ``down_in`` — the input of the output projection (act·up in gated MLPs): each unit's actual
  contribution to the residual stream (TransformerLens' ``hook_post``). It is a signed product,
  so "a > 0" is a weak notion of firing there.

The module names per family are in ``architectures.py``; the functions here turn them into
modules, and work on torch modules and nnsight envoys alike (also inside a remote trace body,
where only plain strings travel).
"""

from __future__ import annotations

from vneuron.errors import VneuronError
from vneuron.models.architectures import Architecture

SITES = ("gate", "down_in")


def check_site(site: str) -> str:
    if site not in SITES:
        raise VneuronError(f"Unknown neuron site {site!r}", f"use one of: {', '.join(SITES)}")
    return site


def resolve_path(root, dotted: str):
    """``root.a.b.c`` for the dotted path "a.b.c" (the one module-path walk of vneuron)."""
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def layer_modules(model, arch: Architecture):
    """The list of decoder blocks."""
    return resolve_path(model, arch.layers)


def site_module(block, arch: Architecture, site: str):
    """The module whose output (gate) or input (down_in) holds the neurons of one block."""
    return getattr(getattr(block, arch.mlp), arch.site_module(site))


def site_path(arch: Architecture, site: str) -> tuple[str, str, str, bool]:
    """The site as plain strings (layers, mlp, module, read output?) for code that runs on a server."""
    return (arch.layers, arch.mlp, arch.site_module(site), site == "gate")


def site_tensor(block, path: tuple[str, str, str, bool]):
    """The neuron tensor of one block (inside a trace): the site module's output or input."""
    _, mlp, name, output = path
    module = getattr(getattr(block, mlp), name)
    return module.output if output else module.input


def site_tensors(lm, path: tuple[str, str, str, bool]):
    """The neuron tensor of every layer, in forward order (inside a trace; no vneuron objects needed)."""
    for block in resolve_path(lm, path[0]):
        yield site_tensor(block, path)
