"""Which neurons to plant: K of them, spread over the layers by a profile (seeded), or a given set."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vneuron.config import PlantConfig, profile_weights
from vneuron.errors import VneuronError
from vneuron.locate.scoring import NeuronSet
from vneuron.models.loading import LoadedModel


def layer_counts(profile: str, k: int, n_layers: int, width: int, gen: torch.Generator) -> list[int]:
    """How many of the K planted neurons fall in each layer under ``profile``."""
    if profile == "random":
        flat = torch.randperm(n_layers * width, generator=gen)[:k]
        return torch.bincount(flat // width, minlength=n_layers).tolist()
    weights = [1.0] * n_layers if profile == "uniform" else profile_weights(profile)
    if len(weights) != n_layers:
        raise VneuronError(f"`profile` has {len(weights)} weights but the model has {n_layers} layers", "give one weight per layer")
    total = sum(weights)
    exact = [k * w / total for w in weights]
    counts = [int(math.floor(e)) for e in exact]
    # largest remainders first; ties broken at random (seeded) so no layer is favoured by position
    order = sorted(range(n_layers), key=lambda l: (-(exact[l] - counts[l]), float(torch.rand(1, generator=gen))))
    for l in order[: k - sum(counts)]:
        counts[l] += 1
    if max(counts) > width:
        raise VneuronError(f"`profile` puts {max(counts)} neurons in one layer of {width}",
                           "spread the weights over more layers or lower `k`")
    return counts


def choose_neurons(model: LoadedModel, config: PlantConfig) -> NeuronSet:
    """The K neurons to plant: random under a per-layer profile (seeded), or read from a NeuronSet file."""
    total = model.n_layers * model.width
    if config.neurons:
        chosen = NeuronSet.load(Path(config.neurons))
        if (chosen.n_layers, chosen.width) != (model.n_layers, model.width):
            raise VneuronError(f"{config.neurons} holds neurons of a {chosen.n_layers} x {chosen.width} model, this one is "
                               f"{model.n_layers} x {model.width}", "pass a neuron set located in this model")
        flat = torch.unique(chosen.flat)
        if len(flat) == 0:
            raise VneuronError(f"{config.neurons} holds no neurons", "pass a non-empty neuron set")
        return NeuronSet(config.site, model.n_layers, model.width, flat, torch.zeros(len(flat), dtype=torch.float64),
                         {"planted": True, "source": str(config.neurons), "label": config.dimension})
    if config.k > total:
        raise VneuronError(f"--k {config.k} is more neurons than the model has ({model.n_layers} layers x {model.width} = {total})",
                           f"pick 1..{total}")
    gen = torch.Generator().manual_seed(config.seed)
    counts = layer_counts(config.profile, config.k, model.n_layers, model.width, gen)
    picks = [torch.randperm(model.width, generator=gen)[:c].sort().values + layer * model.width
             for layer, c in enumerate(counts) if c]
    flat = torch.cat(picks)
    return NeuronSet(config.site, model.n_layers, model.width, flat, torch.zeros(len(flat), dtype=torch.float64),
                     {"planted": True, "profile": config.profile, "seed": config.seed, "label": config.dimension})
