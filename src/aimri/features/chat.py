"""The seam between aimri and language models that explain and judge features.

Everything that asks an LLM something (explainers, detection and fuzzing scorers) talks to a
`ChatClient`: a list of messages in, one `ChatReply` out. Implementations (`llm.py`) speak the
OpenAI-compatible chat API (vLLM, llama.cpp's server, Ollama, hosted APIs) and Anthropic's API;
tests may register a scripted client the same way. Not here: HTTP, retries, caching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)
    """The most likely alternatives at this position: token → logprob (may be empty)."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """Estimated from the client's price table; 0 for local servers."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str
    """`stop`, `length` (truncated), `refusal`, `content_filter` … as the server said."""
    logprobs: list[TokenLogprob] | None = None
    """Per generated token, when asked for and the server supports them."""
    usage: Usage = Usage()
    cached: bool = False
    """Served from the on-disk cache of calls, no request made."""


class ChatClient(Protocol):
    """One chat model behind an endpoint."""

    @property
    def name(self) -> str:
        """Short identifier used in label provenance, e.g. `openai:smollm2` or `anthropic:…`."""
        ...

    def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int | None = None,
    ) -> ChatReply:
        """One completion. `logprobs=n` asks for the top-n alternatives per generated token.
        Raises AimriError (after retries) when the endpoint is down or keeps failing."""
        ...
