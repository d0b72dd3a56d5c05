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
    "capture": "vneuron.locate.capture",
    "CaptureConfig": "vneuron.config",
    "ActivationStats": "vneuron.locate.capture",
    "contrast_scores": "vneuron.locate.scoring",
    "select": "vneuron.locate.scoring",
    "lape_select": "vneuron.locate.scoring",
    "stability": "vneuron.locate.scoring",
    "NeuronSet": "vneuron.locate.scoring",
    "locate": "vneuron.locate.locating",
    "LocateConfig": "vneuron.config",
    "LocateResult": "vneuron.locate.locating",
    "plant": "vneuron.planting",
    "PlantConfig": "vneuron.config",
    "power": "vneuron.planting.power",
    "PowerConfig": "vneuron.config",
    "ValidateConfig": "vneuron.config",
    "ablate": "vneuron.validate.study",
    "steer": "vneuron.validate.study",
    "locate_first": "vneuron.validate.study",
    "LocateRun": "vneuron.locate.runs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import lazily, so `vneuron --help` does not pay for torch."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vneuron' has no attribute {name!r}")


class _Package(ModuleType):
    """Keeps the documented API stable: importing a submodule binds it as an attribute of its package, so
    importing ``vneuron.locate.capture`` (which any ``vneuron.locate(...)`` call does) would make
    ``vneuron.locate`` the sub-package instead of the function. A module is never bound over an exported
    name; the modules stay reachable through ``from vneuron.locate.capture import ...``."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, ModuleType):
            return  # the import system binding a submodule over an exported function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
