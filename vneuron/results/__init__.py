"""Results as people read them, from the files a run wrote: terminal tables, figures, the HTML report,
neuron cards, comparisons of runs, ``--json`` and the guard-rails on weak statistics.

Every reader here reads a run directory (never recomputing what a run measured) and may import every
stage below it; only ``cli`` imports ``results``.
"""
