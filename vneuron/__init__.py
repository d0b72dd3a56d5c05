"""vneuron: find the neurons of a language model that encode human values, and test them causally.

The library API (what the CLI calls)::

    import vneuron
    model = vneuron.load_model("default")                     # embedded Gemma-3-270M
    result = vneuron.locate(model, vneuron.LocateConfig(top_k=200), out="runs/my-run")
    result.sets["self_transcendence"]                         # a NeuronSet
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType

__version__ = "0.1.0"

_EXPORTS = {
    "VneuronError": "vneuron.errors",
    "load_model": "vneuron.models.loading",
    "LoadedModel": "vneuron.models.loading",
    "load_corpus": "vneuron.data",
    "Corpus": "vneuron.data",
    "Prompt": "vneuron.data",
    "capture": "vneuron.capture",
    "CaptureConfig": "vneuron.config",
    "ActivationStats": "vneuron.capture",
    "contrast_scores": "vneuron.scoring",
    "select": "vneuron.scoring",
    "lape_select": "vneuron.scoring",
    "stability": "vneuron.scoring",
    "NeuronSet": "vneuron.scoring",
    "locate": "vneuron.locating",
    "LocateConfig": "vneuron.config",
    "LocateResult": "vneuron.locating",
    "plant": "vneuron.planting",
    "PlantConfig": "vneuron.config",
    "power": "vneuron.power",
    "PowerConfig": "vneuron.config",
    "ValidateConfig": "vneuron.config",
    "ablate": "vneuron.validate",
    "steer": "vneuron.validate",
    "locate_first": "vneuron.validate",
    "LocateRun": "vneuron.runs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import lazily, so `vneuron --help` does not pay for torch."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vneuron' has no attribute {name!r}")


class _Package(ModuleType):
    """Keeps the documented API stable: importing the submodule ``vneuron.capture`` (which any
    ``vneuron.locate`` call does) would otherwise make ``vneuron.capture`` that module instead of
    the function. Submodules stay reachable through ``from vneuron.capture import ...``."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, ModuleType) and _EXPORTS[name] == value.__name__:
            return  # the import system binding a submodule over an exported function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
