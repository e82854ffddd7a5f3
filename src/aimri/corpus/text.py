"""Token ids back to text for display: one token at a time, so each shown piece is exactly one
token. Not here: tokenizing corpora (`contexts.py`)."""

from __future__ import annotations

from typing import Any


class TokenText:
    """Token id → its text, decoded one token at a time and cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            s = self._cache.get(i)
            if s is None:
                s = self._cache[i] = self.tokenizer.decode([i])
            out.append(s)
        return out
