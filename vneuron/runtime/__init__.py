"""Where and how the model computes, and where what it computed goes: the machinery under every stage.

The compute dtype (``precision``), the thread count (``threads``), what an evaluation costs (``budget``),
token batches under a budget (``tokens``), NDIF requests (``remote``), the run directory and its rescue
(``store``), the consoles and progress (``progress``, ``quiet``) and DataFrames (``frames``). Nothing here
knows a model family, a corpus format or a statistic: it imports only ``vneuron.errors`` and
``vneuron.data``'s schema, and every stage above may import it.
"""
