"""Shape-real models: random weights with the layer count and MLP width of a real Llama, small elsewhere.

    python scripts/ndif/shape_model.py {8b,70b,405b} OUT_DIR [--hidden 64] [--seed 0]

Llama-3.1-8B has 32 layers x 14,336 MLP neurons, -70B 80 x 28,672, -405B 126 x 53,248. What a
vneuron study sends and receives, and what the server holds per batch, grows with those two
numbers (and with the tokens of the corpus), not with the hidden size; so a Llama with the real
layer count and width, hidden size 64 and random weights exercises the remote path at real size on
a CPU machine: the 70B shape is ~0.47 B parameters, 1.9 GB in float32.

The tokenizer is the one vneuron ships (Gemma-3's, 262,144 tokens: taken from the converted cache
copy of the packaged model if there is one, else read from its GGUF in ~30 s), so the built-in
corpus tokenises to real lengths. Weights are drawn with a seeded generator (N(0, 1/fan_in) for every
projection, so activations spread around zero in every layer): the same arguments always build the
same model. The directory is reused if it already holds this shape (``shape.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

SHAPES = {  # name: (layers, MLP width, the real model)
    "8b": (32, 14_336, "meta-llama/Llama-3.1-8B"),
    "70b": (80, 28_672, "meta-llama/Llama-3.1-70B"),
    "405b": (126, 53_248, "meta-llama/Llama-3.1-405B"),
}


def spec(shape: str, hidden: int = 64, seed: int = 0) -> dict:
    layers, width, real = SHAPES[shape]
    return {"shape": shape, "like": real, "layers": layers, "width": width, "hidden": hidden, "seed": seed,
            "heads": 8, "kv_heads": 1, "version": 1}


def tokenizer():
    """vneuron's packaged tokenizer (Gemma-3), without converting the weights."""
    from transformers import AutoTokenizer

    from vneuron.runtime.store import cache_dir
    from vneuron.models.conversion import packaged_gguf
    from vneuron.models.registry import ALIASES, DEFAULT_ALIAS

    for marker in sorted((cache_dir() / "models").glob("*/.complete")):
        if (marker.parent / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(marker.parent))
    gguf = packaged_gguf(ALIASES[DEFAULT_ALIAS])
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def build(shape: str, out: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Write the model directory (config, safetensors, tokenizer) unless it already holds this shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" would fill a test's or a benchmark's log

    wanted = spec(shape, hidden, seed)
    marker = out / "shape.json"
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out
    tok = tokenizer()
    layers, width = wanted["layers"], wanted["width"]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=width, num_hidden_layers=layers,
                         num_attention_heads=wanted["heads"], num_key_value_heads=wanted["kv_heads"],
                         max_position_embeddings=8192, rope_theta=500_000.0, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms
                p.fill_(1.0)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0, generator=gen)
            else:  # [out, in]: N(0, 1/in) keeps every layer's input and output at unit scale
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=gen)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    tok.save_pretrained(tmp)
    (tmp / "shape.json").write_text(json.dumps(wanted))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def parameters(shape: str, hidden: int = 64, vocab: int = 262_144) -> int:
    layers, width, _ = SHAPES[shape]
    s = spec(shape, hidden)
    head = hidden // s["heads"]
    attention = hidden * hidden * 2 + 2 * hidden * head * s["kv_heads"]
    return layers * (3 * hidden * width + attention + 2 * hidden) + 2 * vocab * hidden + hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.time()
    out = build(args.shape, args.out.resolve(), args.hidden, args.seed)
    n = parameters(args.shape, args.hidden)
    print(f"{out} ({args.shape} shape: {SHAPES[args.shape][0]} x {SHAPES[args.shape][1]:,}, hidden {args.hidden}, "
          f"{n / 1e9:.2f} B parameters, {n * 4 / 1e9:.2f} GB float32; {time.time() - t0:.0f} s)", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
