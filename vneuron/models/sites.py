"""Where the MLP neurons live, per architecture: one table, read by capture and edits alike.

A neuron is one unit of an MLP's hidden layer. It can be read at two sites:

* ``gate`` — the output of the MLP's activation function, act(gate_proj(x)) in gated MLPs.
  This is what ValueLocate, ValueExploration and LAPE measure ("active" means a > 0) and edit.
* ``down_in`` — the input of the output projection (act·up in gated MLPs): each unit's actual
  contribution to the residual stream (TransformerLens' ``hook_post``). It is a signed product,
  so "a > 0" is a weak notion of firing there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import VneuronError

SITES = ("gate", "down_in")


@dataclass(frozen=True)
class Architecture:
    """Module paths of one model family, relative to the loaded ``*ForCausalLM`` module."""

    name: str
    layers: str  # dotted path to the list of decoder blocks
    mlp: str  # attribute of a block holding the MLP
    act: str  # attribute of the MLP holding the activation module (gate site = its output)
    down: str  # attribute of the MLP holding the output projection (down_in site = its input)
    width_keys: tuple[str, ...] = ("intermediate_size",)


_GATED = dict(layers="model.layers", mlp="mlp", act="act_fn", down="down_proj")

ARCHITECTURES: dict[str, Architecture] = {
    **{
        model_type: Architecture(name=model_type, **_GATED)
        for model_type in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo2",
            "granite",
        )
    },
    "gpt2": Architecture("gpt2", "transformer.h", "mlp", "act", "c_proj", ("n_inner",)),
    "gpt_neox": Architecture("gpt_neox", "gpt_neox.layers", "mlp", "act", "dense_4h_to_h"),
    "phi3": Architecture("phi3", "model.layers", "mlp", "activation_fn", "down_proj"),
    "phi": Architecture("phi", "model.layers", "mlp", "activation_fn", "fc2"),
}
# Multimodal Gemma-3 checkpoints carry the text model one level deeper.
ARCHITECTURES["gemma3"] = Architecture("gemma3", "model.language_model.layers", **{
    k: v for k, v in _GATED.items() if k != "layers"
})


def architecture_for(config) -> Architecture:
    """The site table of a transformers config; unknown families are an error, never a guess."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise VneuronError(
            f"Unsupported architecture {model_type!r}",
            f"vneuron knows the MLP neurons of: {supported}. Add an entry to "
            "vneuron/models/sites.py ARCHITECTURES for a new family",
        )
    return ARCHITECTURES[model_type]


def text_config(config):
    """The text part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def mlp_width(config) -> int:
    """Number of neurons per layer, from the config (GPT-2: n_inner or 4·n_embd)."""
    arch = architecture_for(config)
    cfg = text_config(config)
    for key in arch.width_keys:
        value = getattr(cfg, key, None)
        if value:
            return int(value)
    if arch.name == "gpt2":
        return 4 * int(cfg.n_embd)
    raise VneuronError(f"The config of {arch.name!r} has no MLP width ({', '.join(arch.width_keys)})")


def num_layers(config) -> int:
    cfg = text_config(config)
    for key in ("num_hidden_layers", "n_layer"):
        value = getattr(cfg, key, None)
        if value:
            return int(value)
    raise VneuronError("The model config has no layer count (num_hidden_layers / n_layer)")


def check_site(site: str) -> str:
    if site not in SITES:
        raise VneuronError(f"Unknown neuron site {site!r}", f"use one of: {', '.join(SITES)}")
    return site


def _walk(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def layer_modules(model, arch: Architecture):
    """The list of decoder blocks (works on torch modules and nnsight envoys alike)."""
    return _walk(model, arch.layers)


def site_module(block, arch: Architecture, site: str):
    """The module whose output (gate) or input (down_in) holds the neurons of one block."""
    mlp = getattr(block, arch.mlp)
    return getattr(mlp, arch.act if site == "gate" else arch.down)


def site_path(arch: Architecture, site: str) -> tuple[str, str, str, bool]:
    """The site as plain strings (layers, mlp, module, read output?) for code that runs on a server."""
    return (arch.layers, arch.mlp, arch.act if site == "gate" else arch.down, site == "gate")


def base_path(arch: Architecture) -> str:
    """The decoder stack without its head (whose first output is the final-normed hidden state)."""
    return arch.layers.rsplit(".", 1)[0]


def site_tensors(lm, path: tuple[str, str, str, bool]):
    """The neuron tensor of every layer, in forward order (inside a trace; no vneuron objects needed)."""
    layers_path, mlp, name, output = path
    blocks = lm
    for part in layers_path.split("."):
        blocks = getattr(blocks, part)
    for block in blocks:
        module = getattr(getattr(block, mlp), name)
        yield module.output if output else module.input


# The parameters that belong to one neuron, per architecture: the projections INTO the MLP's hidden
# layer (the neuron's row of each; GPT-2's Conv1D stores it as a column, a fused gate_up projection
# holds it twice, at u and width + u) and the projection OUT of it (the neuron's column).
_GATED_PROJECTIONS = (("gate_proj", "up_proj"), "down_proj")
NEURON_PROJECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    **{name: _GATED_PROJECTIONS for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                             "gemma3", "olmo2", "granite")},
    "gpt2": (("c_fc",), "c_proj"),
    "gpt_neox": (("dense_h_to_4h",), "dense_4h_to_h"),
    "phi3": (("gate_up_proj",), "down_proj"),
    "phi": (("fc1",), "fc2"),
}


def neuron_projections(arch: Architecture) -> tuple[tuple[str, ...], str]:
    """(input projections, output projection) module names of the MLP of ``arch``."""
    if arch.name not in NEURON_PROJECTIONS:
        raise VneuronError(f"vneuron does not know which parameters make up a neuron of {arch.name!r}",
                           "add it to vneuron/models/sites.py NEURON_PROJECTIONS")
    return NEURON_PROJECTIONS[arch.name]
