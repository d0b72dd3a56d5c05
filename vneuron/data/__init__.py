"""Value corpora: schema, loaders, the built-in scenarios, and questionnaires for evaluation."""

from vneuron.data.files import read_rows
from vneuron.data.inventories import InventoryItem, load_inventory
from vneuron.data.loaders import BUILTIN, list_datasets, load_corpus
from vneuron.data.schema import AXES, DIMENSIONS, OPPOSITE, Corpus, Item, Prompt, Text

__all__ = [
    "AXES", "BUILTIN", "DIMENSIONS", "OPPOSITE", "Corpus", "InventoryItem", "Item", "Prompt", "Text",
    "list_datasets", "load_corpus", "load_inventory", "read_rows",
]
