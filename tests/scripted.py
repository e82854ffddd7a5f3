"""A scripted ChatClient for tests (like simonw/llm's queued test model): the protocol the real
clients implement, answering from a queue of replies or from a function of the prompt, and
recording every prompt it was sent. It stands in for a judge or explainer whose answers the
test decides; the real clients are tested against a real server in test_llm.py."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from aimri.features.chat import ChatReply, Message, Usage

Reply = ChatReply | str | Exception


class ScriptedClient:
    def __init__(self, *replies: Reply, respond: Callable[[list[Message]], Reply] | None = None):
        self.replies = deque(replies)
        self.respond = respond
        self.prompts: list[list[Message]] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "scripted"

    def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int | None = None,
    ) -> ChatReply:
        with self._lock:
            self.prompts.append(messages)
            reply = self.respond(messages) if self.respond else self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, str):
            return ChatReply(reply, "stop", usage=Usage(prompt_tokens=120, completion_tokens=7))
        return reply
