"""Locate: corpus → per-neuron statistics → scores → neuron sets → a locate run directory.

``capture`` streams the statistics inside the forward pass (local or NDIF), ``examples`` keeps the top
texts per neuron, ``scoring`` turns statistics into scores and ``NeuronSet``s, ``locating`` is the whole
of ``vneuron locate``, ``runs`` opens a finished run, ``plan`` is its ``--dry-run``. Imports ``models``,
``data``, ``runtime`` and ``config``, never ``validate``, ``planting``, ``results`` or ``cli``.

The public function is ``vneuron.locate`` (``vneuron.locate.locating.locate``); its modules are imported by
their full names (``from vneuron.locate.capture import capture``).
"""
