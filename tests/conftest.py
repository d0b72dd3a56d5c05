"""Fixtures: tiny random models of every supported family, saved with save_pretrained.

They share one word-level tokenizer (fast, with character offsets and a BOS token) so the same
prompts run through all of them. Built once per session; a few hundred KB each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "you your the a an to of and is do what would right thing choose stay go try new old team work family friend "
    "help money save spend rules follow break change tradition keep travel learn risk safe power win share others "
    "community nature protect honest lead adventure quiet home manager report neighbour plan . , ? ! 我 会 你 帮"
).split()

SHARED = dict(vocab_size=len(WORDS) + 4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
GATED = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)


def _configs():
    from transformers import (Gemma2Config, Gemma3Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTNeoXConfig,
                              GraniteConfig, LlamaConfig, MistralConfig, Olmo2Config, Phi3Config, PhiConfig, Qwen2Config,
                              Qwen3Config, SiglipVisionConfig)

    return {
        "llama": LlamaConfig(**GATED, **SHARED),
        "mistral": MistralConfig(**GATED, **SHARED),
        "qwen2": Qwen2Config(**GATED, **SHARED),
        "qwen3": Qwen3Config(**GATED, head_dim=8, **SHARED),
        "gemma": GemmaConfig(**GATED, head_dim=8, hidden_activation="gelu_pytorch_tanh", **SHARED),
        # windows above the longest test prompt: a padded query whose whole window is padding gets
        # NaN in eager attention, which then leaks through 0-weighted values (a model property)
        "gemma2": Gemma2Config(**GATED, head_dim=8, sliding_window=32, **SHARED),
        # Gemma-3 checkpoints ship without a logit soft-cap; the tiny ones set one so `post` is exercised
        "gemma3": Gemma3TextConfig(**GATED, head_dim=8, sliding_window=32, final_logit_softcapping=30.0, **SHARED),
        "gpt2": GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, activation_function="gelu_new", **SHARED),
        "gpt_neox": GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=128, hidden_act="gelu", **SHARED),
        "olmo2": Olmo2Config(**GATED, **SHARED),
        # multipliers away from 1 and logits divided by 4: the "divide" post-processing is exercised
        "granite": GraniteConfig(**GATED, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.25,
                                 logits_scaling=4.0, **SHARED),
        "phi": PhiConfig(**GATED, **SHARED),  # partial_rotary_factor 0.5 (default); biased fc1/fc2 and LM head
        "phi3": Phi3Config(**GATED, **SHARED),  # one fused gate_up_proj
        # the multimodal Gemma-3 (Gemma3ForConditionalGeneration): the text model one level deeper, a tiny vision tower
        "gemma3_mm": Gemma3Config(
            text_config=Gemma3TextConfig(**GATED, head_dim=8, sliding_window=32, final_logit_softcapping=30.0, **SHARED),
            vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             image_size=16, patch_size=4),
            mm_tokens_per_image=4, **SHARED),
    }


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


ARCHS = tuple(_configs())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Path factory: tiny_dir('llama') → directory of a saved tiny random model."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    configs = _configs()
    made: dict[str, Path] = {}

    def build(arch: str) -> Path:
        if arch not in made:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(configs[arch])
            with torch.no_grad():  # larger weights than the default init so activations spread around zero
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0, 0.3)
            path = root / arch
            model.save_pretrained(path)
            make_tokenizer().save_pretrained(path)
            made[arch] = path
        return made[arch]

    return build


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """Loaded (float64) tiny model per architecture, cached for the session."""
    from vneuron.models.loading import load_model

    loaded = {}

    def get(arch: str, dtype: str = "float64"):
        if (arch, dtype) not in loaded:
            loaded[arch, dtype] = load_model(str(tiny_dir(arch)), dtype=dtype)
        return loaded[arch, dtype]

    return get


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
