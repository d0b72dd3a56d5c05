"""Validate: edit located neurons during the forward pass and measure value orientation against controls.

``edits`` (one record per edit mode, ``vneuron.config.EDIT_MODES``), ``evaluate`` and ``prefix`` (forced
choice, PVQ, generation; shared prefixes as token tries), ``sequential`` (Besag–Clifford stopping),
``study`` (``ablate`` and ``steer``), ``side_effects`` and ``specificity`` (damage, the cross-value matrix and
its leakage, the verdict), ``directions`` and ``baselines`` (the same-size residual-direction edits beside the
neurons), ``judges`` (scoring generations) and ``plan`` (their ``--dry-run``). Imports ``locate`` and
everything below it, never ``planting``, ``results`` or ``cli``.
"""
