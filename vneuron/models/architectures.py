"""Everything vneuron knows about one model family, in one record per family.

Adding a family is one ``Architecture`` entry below plus one tiny-model test (a config in
``tests/conftest.py``; docs/extending.md). Every other module asks the record: capture and edits
for the module paths of the neuron sites, planting for the parameters that make up a neuron and how
they are laid out, evaluation for the output head and how its output becomes logits, the dry run for
the residual width, neuron cards for the unit's name in nnsight and TransformerLens. No module outside
``vneuron/models/`` names a family's own attribute or class (tests/test_layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from vneuron.errors import VneuronError

@dataclass(frozen=True)
class Architecture:
    """Module paths and neuron facts of one family, relative to the loaded ``*ForCausalLM`` module."""

    name: str  # the transformers ``model_type``
    layers: str  # dotted path to the list of decoder blocks
    mlp: str = "mlp"  # attribute of a block holding the MLP
    act: str = "act_fn"  # attribute of the MLP holding the activation module (gate site = its output)
    down: str = "down_proj"  # attribute of the MLP holding the output projection (down_in site = its input)
    # projections INTO the hidden layer (a neuron's row of each; the first is the one the gate
    # reads; a fused gate_up holds each neuron twice, at u and width + u)
    inputs: tuple[str, ...] = ("gate_proj", "up_proj")
    gated: bool = True  # the output projection reads act(gate)·up, not act(gate) itself
    width_keys: tuple[str, ...] = ("intermediate_size",)  # config keys holding the MLP width
    width_fallback: tuple[str, int] | None = None  # (config key, factor) when no width key is set (GPT-2: 4·n_embd)
    logit_post: str | None = None  # how the head's output becomes logits: None, "softcap" or "divide"
    final_norm: str = "norm"  # attribute of the decoder stack (``base``) holding the norm the head reads
    mlp_out_norm: str | None = None  # attribute of a block that normalises the MLP's output before the residual (Gemma-2/3, OLMo-2)
    head: str = "lm_head"  # attribute of the ``*ForCausalLM`` module holding the output head (the unembedding)
    hidden_keys: tuple[str, ...] = ("hidden_size",)  # config keys holding the residual stream's width
    # the projections store weight [in, out] and compute x @ W + b (GPT-2's Conv1D) instead of torch's Linear [out, in]
    transposed: bool = False

    @property
    def base(self) -> str:
        """The decoder stack without its head (whose first output is the final-normed hidden state)."""
        return self.layers.rsplit(".", 1)[0]

    def site_module(self, site: str) -> str:
        """The MLP attribute whose output (gate) or input (down_in) holds the neurons."""
        return self.act if site == "gate" else self.down

    def post(self, config) -> tuple[str, float] | None:
        """The logit post-processing as plain data (it travels to a remote server)."""
        cfg = text_config(config)
        if self.logit_post == "softcap":
            cap = getattr(cfg, "final_logit_softcapping", None)
            return ("softcap", float(cap)) if cap else None
        if self.logit_post == "divide":
            return ("divide", float(getattr(cfg, "logits_scaling", 1.0) or 1.0))
        return None

    def hidden(self, config) -> int:
        """The residual stream's width, from the config."""
        value = _first(text_config(config), self.hidden_keys)
        if value is None:
            raise VneuronError(f"The config of {self.name!r} has no hidden size ({', '.join(self.hidden_keys)})")
        return value

    def tied(self, config) -> bool:
        """Does the output head share its weight with the input embedding?"""
        return bool(getattr(text_config(config), "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))

    def width(self, config) -> int:
        """Neurons per layer, from the config."""
        cfg = text_config(config)
        value = _first(cfg, self.width_keys)
        if value is not None:
            return value
        if self.width_fallback:
            key, factor = self.width_fallback
            return factor * int(getattr(cfg, key))
        raise VneuronError(f"The config of {self.name!r} has no MLP width ({', '.join(self.width_keys)})")

    def neuron_names(self, site: str, layer: int, unit: int, width: int) -> dict[str, str]:
        """The same unit in vneuron (flat index), nnsight and TransformerLens."""
        module = self.site_module(site)
        names = {"vneuron": f"{site} L{layer}:U{unit} (flat index {layer * width + unit})",
                 "nnsight": f"model.{self.layers}[{layer}].{self.mlp}.{module}.{'output' if site == 'gate' else 'input'}[..., {unit}]"}
        if site == "down_in" or not self.gated:
            names["TransformerLens"] = f"blocks.{layer}.mlp.hook_post[..., {unit}]"
        else:
            names["TransformerLens"] = (f"act(blocks.{layer}.mlp.hook_pre[..., {unit}]) — TransformerLens has no hook for the "
                                        f"gate activation of a gated MLP (its hook_post is act·up, vneuron's down_in)")
        return names


def _first(cfg, keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` the config sets (a family names a size its own way)."""
    return next((int(getattr(cfg, key)) for key in keys if getattr(cfg, key, None)), None)


def _gated(name: str, **extra) -> Architecture:
    return Architecture(name, "model.layers", **extra)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _gated("llama"),
    _gated("mistral"),
    _gated("qwen2"),
    _gated("qwen3"),
    _gated("gemma"),
    _gated("gemma2", logit_post="softcap", mlp_out_norm="post_feedforward_layernorm"),
    _gated("gemma3_text", logit_post="softcap", mlp_out_norm="post_feedforward_layernorm"),
    # multimodal Gemma-3 checkpoints carry the text model one level deeper, and their head applies no
    # soft-cap (Gemma3ForConditionalGeneration ignores text_config.final_logit_softcapping; the text-only
    # Gemma3ForCausalLM applies it)
    Architecture("gemma3", "model.language_model.layers", mlp_out_norm="post_feedforward_layernorm"),
    _gated("olmo2", mlp_out_norm="post_feedforward_layernorm"),
    _gated("granite", logit_post="divide"),
    Architecture("gpt2", "transformer.h", act="act", down="c_proj", inputs=("c_fc",), gated=False,
                 width_keys=("n_inner",), width_fallback=("n_embd", 4), final_norm="ln_f", hidden_keys=("n_embd",),
                 transposed=True),
    Architecture("gpt_neox", "gpt_neox.layers", act="act", down="dense_4h_to_h", inputs=("dense_h_to_4h",), gated=False,
                 final_norm="final_layer_norm"),
    _gated("phi3", act="activation_fn", inputs=("gate_up_proj",)),
    Architecture("phi", "model.layers", act="activation_fn", down="fc2", inputs=("fc1",), gated=False, final_norm="final_layernorm"),
)}


def architecture_for(config) -> Architecture:
    """The record of a transformers config; unknown families are an error, never a guess."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise VneuronError(
            f"Unsupported architecture {model_type!r}",
            f"vneuron knows the MLP neurons of: {', '.join(sorted(ARCHITECTURES))}. A new family is one Architecture "
            "entry in vneuron/models/architectures.py and one tiny-model test (docs/extending.md)",
        )
    return ARCHITECTURES[model_type]


def text_config(config):
    """The text part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def num_layers(config) -> int:
    cfg = text_config(config)
    for key in ("num_hidden_layers", "n_layer"):
        value = getattr(cfg, key, None)
        if value:
            return int(value)
    raise VneuronError("The model config has no layer count (num_hidden_layers / n_layer)")
