"""aimri: an MRI for AI models.

Look inside a transformer language model and show, with evidence, what it has learned and how
it computes. Heavy modules (torch, transformers) load on first use of the names below, so
`import aimri` and `aimri --help` stay quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aimri._version import __version__ as __version__
from aimri.config import CollectConfig, CorpusConfig, ModelConfig, ScanConfig
from aimri.errors import AimriError

_LAZY = {
    "load_model": "aimri.model.load",
    "Model": "aimri.model.adapter",
    "collect": "aimri.store.collect",
    "ActivationStore": "aimri.store.reader",
    "stream_activations": "aimri.store.reader",
    "stream_batches": "aimri.store.reader",
    "iter_contexts": "aimri.corpus.contexts",
    "take_contexts": "aimri.corpus.contexts",
    "scan": "aimri.scanner.run",
}

if TYPE_CHECKING:
    from aimri.corpus.contexts import iter_contexts, take_contexts
    from aimri.model.adapter import Model
    from aimri.model.load import load_model
    from aimri.scanner.run import scan
    from aimri.store.collect import collect
    from aimri.store.reader import ActivationStore, stream_activations, stream_batches

__all__ = [
    "ActivationStore",
    "AimriError",
    "CollectConfig",
    "CorpusConfig",
    "Model",
    "ModelConfig",
    "ScanConfig",
    "collect",
    "iter_contexts",
    "load_model",
    "scan",
    "stream_activations",
    "stream_batches",
    "take_contexts",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aimri' has no attribute '{name}'")
