"""The scorers by name: `make_scorer("simulation")`. A new scorer is one entry of `SCORERS`.

Its own module because the simulation scorer builds on the others (`simulate.py` imports
`score.py`), so the registry that names them all sits above both. Not here: any scorer.
"""

from __future__ import annotations

from collections.abc import Callable

from aimri.errors import AimriError
from aimri.features.chat import ChatClient
from aimri.features.score import (
    DetectionScorer,
    EmbeddingScorer,
    FuzzingScorer,
    Scorer,
    TokenRuleScorer,
)
from aimri.features.simulate import SimulationScorer

ScorerFactory = Callable[[ChatClient | None, int, int], Scorer]
"""(client, concurrency, seed) → a scorer."""


def _judge(cls: type[DetectionScorer] | type[FuzzingScorer], name: str) -> ScorerFactory:
    def make(client: ChatClient | None, concurrency: int, seed: int) -> Scorer:
        if client is None:
            raise AimriError(
                f"scorer '{name}' asks an LLM to judge labels, and no LLM was given: pass "
                f"--llm.base-url (and --llm.model, --llm.provider) for an OpenAI-compatible or "
                f"Anthropic endpoint, or use the offline 'embedding' scorer"
            )
        return cls(client, concurrency=concurrency, seed=seed)

    return make


def _simulation(client: ChatClient | None, concurrency: int, seed: int) -> Scorer:
    return SimulationScorer(client, concurrency=concurrency, seed=seed)


SCORERS: dict[str, ScorerFactory] = {
    "simulation": _simulation,
    "embedding": lambda client, concurrency, seed: EmbeddingScorer(seed=seed),
    "rule": lambda client, concurrency, seed: TokenRuleScorer(seed=seed),
    "detection": _judge(DetectionScorer, "detection"),
    "fuzzing": _judge(FuzzingScorer, "fuzzing"),
}
"""Scorer name → factory. A new scorer is one entry."""


def make_scorer(
    name: str, client: ChatClient | None = None, *, concurrency: int = 8, seed: int = 0
) -> Scorer:
    """The scorer registered as `name`; LLM scorers need `client`."""
    factory = SCORERS.get(name)
    if factory is None:
        raise AimriError(f"unknown scorer '{name}': use one of {', '.join(sorted(SCORERS))}")
    return factory(client, concurrency, seed)
