"""Positive control: plant value neurons with a known identity.

When every located set is indistinguishable from random controls, the model may hold no value
preference, the method may lack power at this corpus size, or a step of the pipeline may be
broken; a planted model tells them apart. ``plant`` trains ONLY K chosen neurons' own parameters
(their rows of the input projections, their column of the output projection:
``Architecture.inputs`` and ``.down``) so that the model prefers one pole's actions in the
forced-choice formats evaluation reads. The units must also *read* the pole (trained on behaviour
alone they write the preference everywhere, which no activation contrast can see), and a KL term
keeps neutral text close to the original. Every other parameter stays bit for bit.

Written: an ordinary model directory (``--model DIR``), the planted NeuronSet (the ground truth),
the original weights of the planted slices (to restore them exactly), a manifest and the curve.

One module per step: neurons, surgery (the only one touching parameters), reads, objective, train; check (did
planting break the model: neutral-text KL and perplexity over every position), strength and rescale (graded plants).
"""

from vneuron.planting.check import neutral_check
from vneuron.planting.neurons import choose_neurons, layer_counts
from vneuron.planting.reads import reading_directions
from vneuron.planting.rescale import rescale
from vneuron.planting.strength import fit_strength
from vneuron.planting.surgery import (NEURONS_FILE, ORIGINAL_FILE, PLANT_DIR, Planter, check_loaded, check_trainable, is_gated,
                                      original_weights)
from vneuron.planting.train import PlantResult, axis_items, plant

__all__ = [
    "NEURONS_FILE", "ORIGINAL_FILE", "PLANT_DIR", "PlantResult", "Planter", "axis_items", "check_loaded",
    "check_trainable", "choose_neurons", "fit_strength", "is_gated", "layer_counts", "neutral_check", "original_weights", "plant",
    "reading_directions", "rescale",
]
