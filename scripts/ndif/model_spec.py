"""Write the `ndif deploy -f` file for local model directories; print each one's model key.

    python model_spec.py MODEL_DIR [MODEL_DIR ...] OUT_YAML

(one JSON line per model: {"model_key": ..., "size_bytes": ...}, in the order given)

The model key is the one an nnsight 0.8.1 client sends for
``LanguageModel(MODEL_DIR, tokenizer=MODEL_DIR)`` with ``nnsight.modeling.huggingface._ID_CACHE``
seeded with ``MODEL_DIR -> MODEL_DIR`` (no hub lookup), e.g.

    nnsight.modeling.transformers.TransformersModel:{"repo_id": "/abs/dir", "revision": null,
                                                     "task": "text-generation"}

size_bytes is the float32 size of the parameters and buffers (the controller adds its padding).
"""

from __future__ import annotations

import json
import os
import sys
import warnings


def spec(model_dir: str) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import nnsight.modeling.huggingface as hf
    from nnsight import LanguageModel

    hf._ID_CACHE[model_dir] = model_dir
    model = LanguageModel(model_dir, tokenizer=model_dir)
    module = model._module
    size = sum(t.numel() for t in list(module.parameters()) + list(module.buffers())) * 4
    return {"model_key": model.to_model_key(), "size_bytes": int(size)}


def main() -> None:
    *model_dirs, out = sys.argv[1:]
    if not model_dirs:
        sys.exit("usage: model_spec.py MODEL_DIR [MODEL_DIR ...] OUT_YAML")
    import yaml

    entries, specs = [], []
    for model_dir in map(os.path.abspath, model_dirs):
        s = spec(model_dir)
        specs.append(s)
        entries.append({
            "checkpoint": model_dir,
            "model_key": s["model_key"],
            "size_bytes": s["size_bytes"],
            "padding_bias": 0,
            "max_tp": 0,
            "dtype": "float32",
            "pinned": True,
            "replicas": 1,
        })
    with open(out, "w") as f:
        yaml.safe_dump({"models": entries}, f, sort_keys=False)
    for s in specs:
        print(json.dumps(s))


if __name__ == "__main__":
    main()
