"""Chat clients behind `ChatClient`: OpenAI-compatible endpoints and Anthropic's API.

`make_client(cfg)` picks a client from `CLIENTS` (provider name → factory; one entry per new
provider). Both clients speak HTTP through the standard library, retry transient failures
(timeouts, refused connections, 429 honouring Retry-After, 5xx) with exponential backoff and
jitter, cache every call on disk (one JSON file per call, keyed by the request without the key)
and keep thread-safe totals of calls, tokens and estimated cost in `client.accounting`.
`complete_many` runs many requests concurrently and keeps each one's result or error.

Keys come only from the environment variable `cfg.api_key_env`; they are sent in headers and
never logged, cached or written anywhere. Not here: prompts and parsing of explanations
(`explain.py`), streaming, tool use, images.
"""

from __future__ import annotations

import abc
import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, final
from urllib.parse import urlparse

from tqdm.auto import tqdm

from aimri._io import write_json_atomic
from aimri.config import LLMConfig
from aimri.errors import AimriError
from aimri.features.chat import ChatClient, ChatReply, Message, TokenLogprob, Usage

log = logging.getLogger(__name__)

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}
"""USD per million (prompt, completion) tokens of hosted models, matched by longest name prefix
(`claude-3-5-haiku-20241022` → `claude-3-5-haiku`). Unknown and local models cost 0."""

HOSTED_KEY_REQUIRED = {"api.openai.com", "api.anthropic.com"}
ANTHROPIC_VERSION = "2023-06-01"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_SERVER_HINT = (
    "is the server running? start one with `python -m llama_cpp.server --model "
    "<file.gguf> --host 127.0.0.1 --port 8080`, or point --llm.base-url at a running endpoint"
)


@dataclass(frozen=True)
class ChatRequest:
    """One call for `complete_many`: the arguments of `ChatClient.complete`."""

    messages: list[Message]
    max_tokens: int = 256
    temperature: float = 0.0
    logprobs: int | None = None


@final
@dataclass
class Accounting:
    """Running totals of one client's calls; `add` is safe from many threads."""

    calls: int = 0
    """Requests sent and answered."""
    cached_calls: int = 0
    """Replies served from the on-disk cache: no request, no tokens, no cost."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, usage: Usage, *, cached: bool) -> None:
        with self._lock:
            if cached:
                self.cached_calls += 1
                return
            self.calls += 1
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.cost_usd += usage.cost_usd


def cache_root(cfg: LLMConfig) -> Path:
    """Where calls are cached: `cfg.cache_dir`, else `$AIMRI_CACHE_DIR/llm` (~/.cache/aimri)."""
    if cfg.cache_dir is not None:
        return cfg.cache_dir
    return Path(os.environ.get("AIMRI_CACHE_DIR", Path.home() / ".cache" / "aimri")) / "llm"


@final
class CallCache:
    """One JSON file per call under `root`, named by the sha256 of the request (never the key).

    The same request (provider, endpoint, model, messages, max_tokens, temperature, logprobs)
    is answered from disk, also at temperature > 0: delete the folder to ask again."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def digest(request: dict[str, Any]) -> str:
        blob = json.dumps(request, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()

    def get(self, digest: str) -> ChatReply | None:
        path = self.root / f"{digest}.json"
        if not path.is_file():
            return None
        try:
            r = json.loads(path.read_text())["reply"]
            logprobs = r["logprobs"]
            return ChatReply(
                text=r["text"],
                finish_reason=r["finish_reason"],
                logprobs=None if logprobs is None else [TokenLogprob(**t) for t in logprobs],
                usage=Usage(**r["usage"]),
                cached=True,
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable cached call %s (%s)", path, e)
            return None

    def put(self, digest: str, request: dict[str, Any], reply: ChatReply) -> None:
        stored = asdict(reply)
        stored.pop("cached")
        write_json_atomic(self.root / f"{digest}.json", {"request": request, "reply": stored})


def _api_key(cfg: LLMConfig) -> str | None:
    key = os.environ.get(cfg.api_key_env) or None
    host = urlparse(cfg.base_url).hostname or ""
    if key is None and host in HOSTED_KEY_REQUIRED:
        raise AimriError(
            f"no API key for {host}: the environment variable {cfg.api_key_env} is not set; "
            f"export {cfg.api_key_env}=<your key>, or name the variable that holds it with "
            "--llm.api-key-env (keys are read from the environment only)"
        )
    return key


def _is_local(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "") in _LOCAL_HOSTS


def estimate_cost(cfg: LLMConfig, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for one call from `PRICES_PER_MTOK`; 0 for local endpoints and unknown models."""
    if _is_local(cfg.base_url):
        return 0.0
    match = max((m for m in PRICES_PER_MTOK if cfg.model.startswith(m)), key=len, default=None)
    if match is None:
        return 0.0
    per_prompt, per_completion = PRICES_PER_MTOK[match]
    return (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1e6


class HttpChatClient(abc.ABC):
    """A chat endpoint over HTTP: the key, retries, the cache of calls and accounting.

    Subclasses are final and only say the dialect: the path, request body, headers and how
    to read a reply. Everything else (and the key handling) lives here once."""

    provider: ClassVar[str]
    path: ClassVar[str]

    def __init__(self, cfg: LLMConfig, *, backoff_s: float = 0.5) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + self.path
        self.accounting = Accounting()
        self.cache = CallCache(cache_root(cfg))
        self.backoff_s = backoff_s
        """First retry waits about this long (× 0.5–1.5 jitter), doubling each retry."""
        self._key = _api_key(cfg)

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.cfg.model or 'default'}"

    def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int | None = None,
    ) -> ChatReply:
        """The cached reply to this request, else POST it, parse, price, cache and count it."""
        request = ChatRequest(messages, max_tokens, temperature, logprobs)
        ident = {"provider": self.provider, "base_url": self.cfg.base_url}
        ident |= {"model": self.cfg.model, **asdict(request)}
        digest = CallCache.digest(ident)
        if (hit := self.cache.get(digest)) is not None:
            self.accounting.add(hit.usage, cached=True)
            return hit
        reply = self._parse(self._post(self._body(request)))
        u = reply.usage
        cost = estimate_cost(self.cfg, u.prompt_tokens, u.completion_tokens)
        reply = replace(reply, usage=replace(u, cost_usd=cost))
        self.cache.put(digest, ident, reply)
        self.accounting.add(reply.usage, cached=False)
        return reply

    @abc.abstractmethod
    def _body(self, r: ChatRequest) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _headers(self, key: str | None) -> dict[str, str]: ...

    @abc.abstractmethod
    def _parse(self, data: dict[str, Any]) -> ChatReply: ...

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self._headers(self._key)}
        last, hint = "", _SERVER_HINT
        for attempt in range(self.cfg.max_retries + 1):
            wait: float | None = None
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return _json_object(resp.read(), self.url)
            except urllib.error.HTTPError as e:
                detail = self._scrub(_body_snippet(e))
                if e.code not in (408, 429) and e.code < 500:
                    raise AimriError(_client_error(self.url, e.code, detail, self.cfg)) from e
                last = f"HTTP {e.code} {e.reason}: {detail}"
                wait = _retry_after(e.headers.get("Retry-After")) if e.code == 429 else None
                hint = _RATE_HINT if e.code == 429 else _FAILING_HINT
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
                hint = _SERVER_HINT if _is_local(self.url) else _NETWORK_HINT
            if attempt < self.cfg.max_retries:
                delay = wait if wait is not None else self._backoff(attempt)
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    *(self.url, last, attempt + 1, self.cfg.max_retries, delay),
                )
                time.sleep(delay)
        n = self.cfg.max_retries + 1
        raise AimriError(f"LLM endpoint {self.url} failed {n} times (last: {last}): {hint}")

    def _backoff(self, attempt: int) -> float:
        return min(60.0, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


_RATE_HINT = "rate limited; lower --llm.concurrency or raise --llm.max-retries"
_FAILING_HINT = "the server keeps failing; check its log, lower --llm.concurrency, or retry later"
_NETWORK_HINT = "check the network and --llm.base-url"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped at 5 minutes."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 300.0)


def _body_snippet(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(500).decode(errors="replace").strip() or str(e.reason)
    except OSError:
        return str(e.reason)
    finally:
        e.close()


def _client_error(url: str, code: int, detail: str, cfg: LLMConfig) -> str:
    if code in (401, 403):
        fix = f"check the key in the environment variable {cfg.api_key_env}"
    elif code == 404:
        fix = "check --llm.base-url (it usually ends in /v1) and --llm.model"
    else:
        fix = "check --llm.model and that this endpoint accepts these request fields"
    return f"LLM endpoint {url} rejected the request (HTTP {code}: {detail}): {fix}"


def _json_object(raw: bytes, url: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        snippet = raw[:200].decode(errors="replace")
        raise AimriError(
            f"LLM endpoint {url} answered with something that is not a JSON object "
            f"({snippet!r}): check that --llm.base-url points at the API root (e.g. …/v1) "
            "and --llm.provider matches the server"
        )
    return data


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _count(x: Any) -> int:
    return x if isinstance(x, int) else 0


def _number(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else float("-inf")


@final
class OpenAIClient(HttpChatClient):
    """Any OpenAI-compatible `/chat/completions` (vLLM, llama.cpp's server, Ollama, OpenAI)."""

    provider = "openai"
    path = "/chat/completions"

    def _body(self, r: ChatRequest) -> dict[str, Any]:
        body = {"model": self.cfg.model, "messages": r.messages, "max_tokens": r.max_tokens}
        body["temperature"] = r.temperature
        if r.logprobs:
            body |= {"logprobs": True, "top_logprobs": r.logprobs}
        return body

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _parse(self, data: dict[str, Any]) -> ChatReply:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise AimriError(
                f"LLM endpoint {self.url} replied without choices ({json.dumps(data)[:200]}): "
                "check the server's log and that --llm.model names a chat model it serves"
            )
        choice = choices[0]
        message = _dict(choice.get("message"))
        content = message.get("content")
        if isinstance(content, list):  # some servers send content parts
            content = "".join(str(_dict(p).get("text", "")) for p in content)
        text, finish = str(content or ""), str(choice.get("finish_reason") or "")
        if not text and message.get("refusal"):
            text, finish = str(message["refusal"]), "refusal"
        usage = _dict(data.get("usage"))
        return ChatReply(
            text=text,
            finish_reason=finish,
            logprobs=_parse_logprobs(choice.get("logprobs")),
            usage=Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))),
        )


def _parse_logprobs(logprobs: Any) -> list[TokenLogprob] | None:
    """`logprobs.content[*].{token, logprob, top_logprobs}`; None when the server sent none."""
    content = _dict(logprobs).get("content")
    if not isinstance(content, list):
        return None
    out = []
    for t in map(_dict, content):
        top = [_dict(a) for a in _list(t.get("top_logprobs"))]
        alternatives = {str(a.get("token")): _number(a.get("logprob")) for a in top}
        out.append(TokenLogprob(str(t.get("token", "")), _number(t.get("logprob")), alternatives))
    return out


_ANTHROPIC_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


@final
class AnthropicClient(HttpChatClient):
    """Anthropic's Messages API (`/messages`). It has no logprobs: `logprobs=` is ignored."""

    provider = "anthropic"
    path = "/messages"

    def _body(self, r: ChatRequest) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in r.messages if m["role"] == "system")
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": r.max_tokens}
        body["temperature"] = r.temperature
        body["messages"] = [m for m in r.messages if m["role"] != "system"]
        return body | {"system": system} if system else body

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION} | ({"x-api-key": key} if key else {})

    def _parse(self, data: dict[str, Any]) -> ChatReply:
        content = data.get("content")
        if not isinstance(content, list):
            raise AimriError(
                f"LLM endpoint {self.url} replied without a content list "
                f"({json.dumps(data)[:200]}): check that --llm.provider anthropic points at "
                "Anthropic's Messages API"
            )
        blocks = [_dict(c) for c in content]
        text = "".join(str(c.get("text", "")) for c in blocks if c.get("type") == "text")
        stop = str(data.get("stop_reason") or "")
        usage = _dict(data.get("usage"))
        return ChatReply(
            text=text,
            finish_reason=_ANTHROPIC_STOP.get(stop, stop),
            usage=Usage(_count(usage.get("input_tokens")), _count(usage.get("output_tokens"))),
        )


CLIENTS: dict[str, Callable[[LLMConfig], ChatClient]] = {
    "openai": OpenAIClient,
    "anthropic": AnthropicClient,
}
"""Provider name → factory. A new provider is one entry (tests may add a scripted one)."""


def make_client(cfg: LLMConfig) -> ChatClient:
    """The client for `cfg.provider`; raises AimriError for an unknown provider or missing key."""
    factory = CLIENTS.get(cfg.provider)
    if factory is None:
        raise AimriError(
            f"unknown LLM provider '{cfg.provider}': use one of {', '.join(sorted(CLIENTS))}"
        )
    return factory(cfg)


def _any_succeeded(futures: Iterable[Future]) -> bool:
    """Whether any call that has finished so far returned a reply."""
    return any(f.done() and not f.cancelled() and f.exception() is None for f in futures)


def complete_many(
    client: ChatClient,
    requests: Sequence[ChatRequest],
    concurrency: int = 8,
    *,
    desc: str = "llm calls",
) -> list[ChatReply | AimriError]:
    """Run `requests` on `concurrency` threads; results in request order, each a reply or the
    AimriError that request ended with, so one failing call does not lose the finished ones.

    An endpoint that fails every call is an error, not a column of NaN: when the first
    `concurrency` calls to finish (or all of them, if fewer) have all failed, the rest are not
    sent and the last failure is raised. Replies that did arrive are cached, so a rerun after
    the fix pays for none of them again.
    """

    def one(r: ChatRequest) -> ChatReply:
        return client.complete(
            r.messages, max_tokens=r.max_tokens, temperature=r.temperature, logprobs=r.logprobs
        )

    results: list[ChatReply | AimriError | None] = [None] * len(requests)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="aimri-llm")
    give_up_after = min(len(requests), max(1, concurrency))
    failed = 0
    try:
        futures = {pool.submit(one, r): i for i, r in enumerate(requests)}
        with tqdm(total=len(requests), desc=desc, unit="call", leave=False) as bar:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except AimriError as e:
                    log.warning("%s: request %d failed: %s", client.name, i, e)
                    results[i] = e
                    failed += 1
                    # as_completed hands out calls that finished together in no set order, so
                    # one that succeeded may not have been counted yet: ask every finished call.
                    if failed >= give_up_after and not _any_succeeded(futures):
                        rest = len(requests) - failed
                        which = f"the first {failed}" if rest else f"all {failed}"
                        skipped = f", so the other {rest} were not sent" if rest else ""
                        raise AimriError(
                            f"{desc}: {which} calls to {client.name} failed{skipped}; "
                            f"last error: {e}"
                        ) from e
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    assert all(r is not None for r in results), "every request finished"
    return [r for r in results if r is not None]
