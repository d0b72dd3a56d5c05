"""Value corpora: schema, loaders and the built-in scenarios."""

from .loaders import BUILTIN, list_datasets, load_corpus, read_rows
from .schema import AXES, DIMENSIONS, OPPOSITE, Corpus, Item, Prompt, Text

__all__ = ["AXES", "BUILTIN", "DIMENSIONS", "OPPOSITE", "Corpus", "Item", "Prompt", "Text", "list_datasets", "load_corpus", "read_rows"]
