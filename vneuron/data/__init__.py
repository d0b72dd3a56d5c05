"""Value corpora: schema, loaders, the built-in scenarios, and questionnaires for evaluation."""

from .inventories import InventoryItem, load_inventory
from .files import read_rows
from .loaders import BUILTIN, list_datasets, load_corpus
from .schema import AXES, DIMENSIONS, OPPOSITE, Corpus, Item, Prompt, Text

__all__ = [
    "AXES", "BUILTIN", "DIMENSIONS", "OPPOSITE", "Corpus", "InventoryItem", "Item", "Prompt", "Text",
    "list_datasets", "load_corpus", "load_inventory", "read_rows",
]
