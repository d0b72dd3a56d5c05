"""``--quiet`` for what other libraries print on their own: nnsight's job status lines
(``◉ [id] RECEIVED …``) and result download bars, and transformers' bars while a GGUF file is
converted. vneuron's own progress goes through its progress callback and is silenced there."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial
from typing import Iterator

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or not) the libraries' own output for the rest of this process."""
    global _quiet
    was, _quiet = _quiet, quiet
    if "nnsight" in sys.modules:  # else when a remote request is built (no nnsight import for nothing)
        if quiet:
            nnsight_logging()
        elif was:
            sys.modules["nnsight"].CONFIG.APP.REMOTE_LOGGING = True


def nnsight_logging() -> None:
    """When quiet, nnsight's status display and download bar are off (read when a RemoteBackend is
    built); otherwise the user's nnsight configuration stands."""
    if _quiet:
        import nnsight

        nnsight.CONFIG.APP.REMOTE_LOGGING = False


def is_quiet() -> bool:
    return _quiet


@contextmanager
def library_bars() -> Iterator[None]:
    """Within: no tqdm bars from transformers' loading and its GGUF de-quantiser, when quiet."""
    if not _quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - transformers without GGUF support
        gguf_utils = None
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' own bars: loading weights, writing shards
    original = getattr(gguf_utils, "tqdm", None)  # imported by name there, so it is replaced there
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if enabled:
            hf_logging.enable_progress_bar()
