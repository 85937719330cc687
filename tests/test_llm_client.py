"""LLMClient against real HTTP servers: a scripted stub (exact status sequences, Retry-After, drops, timeouts)
and the project's local OpenAI-compatible server (cache, token counts, fault-driven retries, key secrecy)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmsim.launch import start_llm_server
from recsys.config import LLMConfig
from recsys.llm.cache import ResponseCache
from recsys.llm.client import (
    LLMAuthError,
    LLMClient,
    LLMConfigError,
    UsageEvent,
    resolve_endpoint,
)
from recsys.llm.limits import clear_shared_limiters
from recsys.llm.pricing import (
    PriceTable,
    UnboundedSpend,
    cost_usd,
    load_price_table,
    price_known,
    require_budget,
)
from recsys.llm.retry import parse_retry_after
from recsys.llm.tokens import count_message_tokens, count_tokens
from storage.ledger import LedgerWriter, read_ledger
from tests.conftest import REPO

ANSWER = '{"liked": 0, "disliked": 1}'


# --- a scripted OpenAI-compatible stub: each request pops the next planned reply --------------------------------
class Reply:
    """What the stub does with one request."""

    def __init__(self, status: int = 200, *, headers: dict[str, str] | None = None, body: Any = None,
                 delay_s: float = 0.0, drop: bool = False, raw: bytes | None = None) -> None:
        self.status, self.headers, self.body = status, headers or {}, body
        self.delay_s, self.drop, self.raw = delay_s, drop, raw


class StubServer:
    """A real HTTP server on 127.0.0.1 that answers /v1/chat/completions by script (then 200 by default) and
    records what it saw: request count, times, Authorization headers, peak concurrency."""

    def __init__(self, default_delay_s: float = 0.0) -> None:
        self.script: deque[Reply] = deque()
        self.times: list[float] = []
        self.auth: list[str] = []
        self.peak = 0
        self._active = 0
        self._lock = threading.Lock()
        self.default_delay_s = default_delay_s
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.times.append(time.monotonic())
                    stub.auth.append(self.headers.get("Authorization", ""))
                    stub._active += 1
                    stub.peak = max(stub.peak, stub._active)
                    reply = stub.script.popleft() if stub.script else Reply(delay_s=stub.default_delay_s)
                try:
                    time.sleep(reply.delay_s)
                    if reply.drop:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if reply.raw is not None:
                        data = reply.raw
                    elif reply.status == 200 and reply.body is None:
                        data = json.dumps(_completion(request)).encode()
                    else:
                        data = json.dumps(reply.body or {"error": {"message": f"status {reply.status}",
                                                                    "type": "test", "code": None}}).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with stub._lock:
                        stub._active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        return len(self.times)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(request: dict[str, Any]) -> dict[str, Any]:
    prompt = count_message_tokens(request["messages"])
    return {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 9, "total_tokens": prompt + 9},
    }


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    clear_shared_limiters()
    yield
    clear_shared_limiters()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.stop()


def _cfg(base_url: str, **kw: Any) -> LLMConfig:
    base = {"model": "gpt-4o-mini", "base_url": base_url, "rpm": None, "tpm": None, "max_attempts": 4,
            "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
    return LLMConfig(**{**base, **kw})


def _client(cfg: LLMConfig, tmp_path: Path, events: list[UsageEvent] | None = None,
            api_key: str | None = "sk-test") -> LLMClient:
    sink = events.append if events is not None else None
    return LLMClient(cfg, cache_dir=tmp_path / "cache", usage_sink=sink, api_key=api_key)


def _msgs(i: int = 0) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a test."}, {"role": "user", "content": f"question {i}"}]


# --- retries ---------------------------------------------------------------------------------------------------
def test_retries_500_then_success(stub: StubServer, tmp_path: Path) -> None:
    stub.script.extend([Reply(500), Reply(503)])
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url), tmp_path, events) as client:
        result = client.chat(_msgs(), template_version="t1", tags={"stage": "edges", "batch": "3"})
    assert result.text == ANSWER and result.error is None
    assert result.attempts == 3 and stub.requests == 3
    assert [(e.attempt, e.outcome) for e in events] == [(1, "http_500"), (2, "http_503"), (3, "ok")]
    assert all(e.stage == "edges" and e.batch == "3" and not e.cached for e in events)
    assert events[-1].prompt_tokens == count_message_tokens(_msgs()) and events[-1].completion_tokens == 9
    assert events[-1].cost_usd == pytest.approx((events[-1].prompt_tokens * 0.15 + 9 * 0.60) / 1e6)
    assert events[0].cost_usd == 0.0 and events[0].prompt_tokens == 0


def test_retry_after_seconds_is_honoured(stub: StubServer, tmp_path: Path) -> None:
    stub.script.append(Reply(429, headers={"Retry-After": "1"}))
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url, backoff_max_s=5.0), tmp_path, events) as client:
        result = client.chat(_msgs(), template_version="t1")
    assert result.text == ANSWER and result.attempts == 2
    assert stub.times[1] - stub.times[0] >= 1.0  # backoff alone would be ~0.01-0.05 s
    assert [e.outcome for e in events] == ["http_429", "ok"]


def test_retry_after_http_date_is_honoured(stub: StubServer, tmp_path: Path) -> None:
    # HTTP dates have 1 s resolution: a date 3 whole seconds ahead is more than 2 s ahead, and stays more than 1 s
    # ahead of the first request even when a loaded machine delays it by most of a second.
    stub.script.append(Reply(429, headers={"Retry-After": formatdate(int(time.time()) + 3, usegmt=True)}))
    with _client(_cfg(stub.base_url, backoff_max_s=5.0), tmp_path) as client:
        result = client.chat(_msgs(), template_version="t1")
    assert result.text == ANSWER
    assert stub.times[1] - stub.times[0] >= 1.0


def test_parse_retry_after_forms() -> None:
    now = time.time()
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    for unusable in ("inf", "Infinity", "nan", "-inf", "1e999"):
        assert parse_retry_after({"retry-after": unusable}) is None
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "2"}) == 2.0
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_retried(stub: StubServer, tmp_path: Path, status: int) -> None:
    stub.script.append(Reply(status))
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url), tmp_path, events) as client:
        result = client.chat(_msgs(), template_version="t1")
    assert result.text is None and result.attempts == 1 and stub.requests == 1
    assert result.error is not None and result.error.startswith(f"HTTP {status}")
    assert [e.outcome for e in events] == [f"http_{status}"]


@pytest.mark.parametrize("reply", [Reply(401), Reply(403),
                                   Reply(429, body={"error": {"message": "quota", "code": "insufficient_quota"}})])
def test_auth_and_quota_errors_raise(stub: StubServer, tmp_path: Path, reply: Reply) -> None:
    stub.script.append(reply)
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url), tmp_path, events) as client, pytest.raises(LLMAuthError):
        client.chat(_msgs(), template_version="t1")
    assert stub.requests == 1 and len(events) == 1


def test_exhausted_attempts_return_an_error_result(stub: StubServer, tmp_path: Path) -> None:
    stub.script.extend([Reply(500)] * 10)
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url, max_attempts=3), tmp_path, events) as client:
        result = client.chat(_msgs(), template_version="t1")
    assert result.text is None and result.error == "HTTP 500 after 3 attempts"
    assert result.attempts == 3 and stub.requests == 3
    assert [(e.attempt, e.outcome, e.cost_usd) for e in events] == [(n, "http_500", 0.0) for n in (1, 2, 3)]
    assert not (tmp_path / "cache").exists() or len(ResponseCache(tmp_path / "cache")) == 0


def test_timeouts_drops_and_garbage_are_retried(stub: StubServer, tmp_path: Path) -> None:
    stub.script.extend([Reply(delay_s=1.0), Reply(drop=True), Reply(raw=b"<html>bad gateway</html>")])
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url, timeout_s=0.3, max_attempts=5), tmp_path, events) as client:
        result = client.chat(_msgs(), template_version="t1")
    assert result.text == ANSWER and result.attempts == 4
    assert [e.outcome for e in events] == ["timeout", "connection", "bad_response", "ok"]


def test_backoff_is_exponential_and_bounded(stub: StubServer, tmp_path: Path) -> None:
    stub.script.extend([Reply(500)] * 4)
    cfg = _cfg(stub.base_url, max_attempts=5, backoff_initial_s=0.1, backoff_max_s=0.25)
    with _client(cfg, tmp_path) as client:
        assert client.chat(_msgs(), template_version="t1").text == ANSWER
    gaps = [b - a for a, b in zip(stub.times, stub.times[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # initial * 2^n ...
    assert all(g < 0.25 + 0.5 for g in gaps)  # ... capped at backoff_max_s (plus scheduling slack)


# --- configuration ----------------------------------------------------------------------------------------------
def test_endpoint_and_key_resolution(monkeypatch: pytest.MonkeyPatch, stub: StubServer, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match="no API key"):
        resolve_endpoint(LLMConfig())
    assert resolve_endpoint(LLMConfig(base_url="http://x/v1/")) == ("http://x/v1", "not-needed")
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert resolve_endpoint(LLMConfig()) == (stub.base_url, "sk-from-env")
    with LLMClient(_cfg(None), cache_dir=tmp_path / "c") as client:  # base_url from the environment
        assert client.chat(_msgs(), template_version="t1").text == ANSWER
    assert stub.auth[-1] == "Bearer sk-from-env"


# --- cache ------------------------------------------------------------------------------------------------------
def test_cache_key_covers_request_but_not_the_api_key(stub: StubServer, tmp_path: Path) -> None:
    cfg = _cfg(stub.base_url)
    a = _client(cfg, tmp_path, api_key="sk-one")
    b = _client(cfg, tmp_path, api_key="sk-two")
    key = a.cache_key(_msgs(), "t1")
    assert key == b.cache_key(_msgs(), "t1") and len(key) == 64
    variants = [
        _client(_cfg(stub.base_url, model="gpt-4o"), tmp_path).cache_key(_msgs(), "t1"),
        _client(_cfg(stub.base_url, temperature=0.0), tmp_path).cache_key(_msgs(), "t1"),
        _client(_cfg(stub.base_url, top_p=1.0), tmp_path).cache_key(_msgs(), "t1"),
        _client(_cfg(stub.base_url, max_tokens=64), tmp_path).cache_key(_msgs(), "t1"),
        a.cache_key(_msgs(), "t2"),
        a.cache_key(_msgs(1), "t1"),
    ]
    assert len({key, *variants}) == 7
    assert a.chat(_msgs(), template_version="t1").cached is False
    assert b.chat(_msgs(), template_version="t1").cached is True  # another key, same answer
    assert stub.requests == 1
    a.close()
    b.close()


def test_forget_makes_the_next_call_ask_again(stub: StubServer, tmp_path: Path) -> None:
    with _client(_cfg(stub.base_url), tmp_path) as client:
        client.chat(_msgs(), template_version="t1")
        assert client.chat(_msgs(), template_version="t1").cached
        assert client.forget(_msgs(), template_version="t1") is True
        assert client.forget(_msgs(), template_version="t1") is False
        assert not client.chat(_msgs(), template_version="t1").cached
    assert stub.requests == 2


# --- limits through the client ----------------------------------------------------------------------------------
def test_max_in_flight_is_respected_over_http(tmp_path: Path) -> None:
    server = StubServer(default_delay_s=0.15)
    try:
        with _client(_cfg(server.base_url, max_in_flight=2), tmp_path) as client:
            threads = [threading.Thread(target=client.chat, args=(_msgs(i),), kwargs={"template_version": "t"})
                       for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert server.requests == 8 and server.peak == 2
    finally:
        server.stop()


def test_clients_of_one_endpoint_share_a_limiter(stub: StubServer, tmp_path: Path) -> None:
    a = _client(_cfg(stub.base_url), tmp_path)
    b = _client(_cfg(stub.base_url), tmp_path)
    c = _client(_cfg(stub.base_url, model="gpt-4o"), tmp_path)
    assert a.limiter is b.limiter and a.limiter is not c.limiter
    for x in (a, b, c):
        x.close()


# --- against the project's local OpenAI-compatible server -----------------------------------------------------
def _profile_prompt(i: int) -> list[dict[str, str]]:
    """A profile prompt in the project's format (the server answers it from genre counts, without a model)."""
    system = ("You are required to generate a user profile based on the user's viewing history (title, year, "
              "genres). Do not answer 'unknown': make an educated guess.")
    history = "\n".join(f"- Movie {i}-{j} | {1990 + j} | Drama, Comedy" for j in range(3))
    user = (f"User history:\n{history}\n"
            'Answer with JSON only: {"age": <integer>, "gender": "male" or "female", "liked_genres": [...], '
            '"disliked_genres": [...], "liked_directors": [...], "country": "...", "language": "..."}')
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def local_server() -> Iterator[Any]:
    with start_llm_server(seed=7) as server:
        yield server


def test_local_server_tokens_cache_and_stats(local_server: Any, tmp_path: Path) -> None:
    local_server.set_faults(seed=7)
    local_server.reset()
    events: list[UsageEvent] = []
    cfg = _cfg(local_server.base_url, model="llmrec-heuristic")
    with _client(cfg, tmp_path, events) as client:
        first = [client.chat(_profile_prompt(i), template_version="profiles-v1") for i in range(4)]
        stats = local_server.stats()
        for i, r in enumerate(first):
            assert r.text and not r.cached and r.attempts == 1
            assert r.prompt_tokens == count_message_tokens(_profile_prompt(i))  # the client's count = server's usage
        assert stats["requests"] == 4 and stats["prompt_tokens"] == sum(r.prompt_tokens for r in first)
        again = [client.chat(_profile_prompt(i), template_version="profiles-v1") for i in range(4)]
    assert local_server.stats()["requests"] == 4  # the repeat made no HTTP call
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached and r.attempts == 0 for r in again)
    hits = [e for e in events if e.cached]
    assert len(hits) == 4 and all(e.attempt == 0 and e.cost_usd == 0.0 and e.outcome == "ok" for e in hits)


def test_local_server_faults_are_retried(local_server: Any, tmp_path: Path) -> None:
    local_server.set_faults(error_rate=0.4, drop_rate=0.1, seed=3)
    local_server.reset()
    events: list[UsageEvent] = []
    cfg = _cfg(local_server.base_url, model="llmrec-heuristic", max_attempts=10, max_in_flight=4)
    try:
        with _client(cfg, tmp_path, events) as client:
            results = [client.chat(_profile_prompt(i), template_version="profiles-v1") for i in range(12)]
    finally:
        local_server.set_faults(seed=7)
    stats = local_server.stats()
    assert all(r.text for r in results)
    assert stats["by_status"].get("500", 0) > 0
    assert sum(r.attempts for r in results) == len(events) == stats["requests"]  # one event per HTTP attempt
    assert {e.outcome for e in events} <= {"ok", "http_500", "connection"}


def test_rpm_limit_holds_over_http(local_server: Any, tmp_path: Path) -> None:
    """rpm=120: a bucket of 3 requests refilled at 0.95 * 2 per second, so 10 requests from 4 eager threads need
    at least (10 - 3) / 1.9 = 3.7 s — and should not need much more."""
    local_server.set_faults(seed=7)
    local_server.reset()
    cfg = _cfg(local_server.base_url, model="rpm-test", rpm=120, max_in_flight=4)
    todo = list(range(10))
    lock = threading.Lock()
    with _client(cfg, tmp_path) as client:

        def worker() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                client.chat(_profile_prompt(500 + i), template_version="profiles-v1")

        start = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    assert local_server.stats()["requests"] == 10
    minimum = (10 - 3) / (0.95 * 120 / 60)
    assert minimum - 0.05 <= elapsed <= minimum + 1.5


def test_retry_after_beyond_backoff_max_fails_at_once(local_server: Any, tmp_path: Path) -> None:
    """A daily quota (Retry-After: 86400) fails the call at once, naming the wait; no sleep, no second request.
    An unusable value (inf) is ignored: the client's own backoff retries, and nothing overflows."""
    local_server.reset()
    try:
        local_server.set_faults(retry_after="86400")
        started = time.monotonic()
        with _client(_cfg(local_server.base_url, backoff_max_s=60.0), tmp_path) as client:
            result = client.chat(_profile_prompt(900), template_version="profiles-v1")
        assert time.monotonic() - started < 5 and local_server.stats()["requests"] == 1
        assert result.text is None and result.attempts == 1
        assert "asks to wait 86400 s (24 h) (Retry-After), longer than backoff_max_s=60 s" in result.error

        local_server.reset()
        local_server.set_faults(retry_after="inf")
        with _client(_cfg(local_server.base_url, max_attempts=3), tmp_path) as client:
            result = client.chat(_profile_prompt(901), template_version="profiles-v1")
        assert result.error == "HTTP 429 after 3 attempts" and local_server.stats()["requests"] == 3
    finally:
        local_server.set_faults(seed=7)


def test_limits_announced_by_the_endpoint_are_adopted_under_a_cap(local_server: Any, tmp_path: Path) -> None:
    """The server announces 30 requests and 40,000 tokens per minute in x-ratelimit-* headers: the client holds
    itself to them instead of its configured defaults (500 / 200k), but never above rpm_cap."""
    local_server.set_faults(rpm_limit=30, tpm_limit=40_000, seed=7)
    try:
        with _client(_cfg(local_server.base_url, model="announce-test", rpm=500, tpm=200_000), tmp_path) as client:
            assert client.limiter.effective == (500, 200_000, 8)
            client.chat(_profile_prompt(910), template_version="profiles-v1")
            assert client.limiter.effective == (30, 40_000, 8)
        clear_shared_limiters()
        with _client(_cfg(local_server.base_url, model="announce-test", rpm_cap=20), tmp_path) as client:
            client.chat(_profile_prompt(911), template_version="profiles-v1")
            assert client.limiter.effective[:2] == (20, 40_000)
    finally:
        local_server.set_faults(seed=7)


def test_timeout_counts_from_sending(local_server: Any, tmp_path: Path) -> None:
    """One request in flight, answers taking 0.7 s, a 1.5 s timeout: the fourth of four concurrent calls waits
    about 2 s for its slot, then is answered; nothing times out, nothing is sent twice."""
    local_server.set_faults(latency_ms=700, seed=7)
    local_server.reset()
    try:
        cfg = _cfg(local_server.base_url, model="slot-test", max_in_flight=1, timeout_s=1.5)
        with _client(cfg, tmp_path) as client:
            threads = [threading.Thread(target=lambda i=i: results.append(
                client.chat(_profile_prompt(920 + i), template_version="profiles-v1"))) for i in range(4)]
            results: list[Any] = []
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert time.monotonic() - started >= 2.8
        assert all(r.text and r.attempts == 1 for r in results) and local_server.stats()["requests"] == 4
    finally:
        local_server.set_faults(seed=7)


def test_api_key_never_leaks(local_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-llmrec-DISTINCTIVE-4f9c2e71b8"
    local_server.set_faults(fail_match="Movie 3-", seed=7)
    local_server.reset()
    ledger_root = tmp_path / "ledger"
    caplog.set_level(logging.DEBUG)  # the SDK and httpx log requests at DEBUG
    cfg = _cfg(local_server.base_url, model="llmrec-heuristic", max_attempts=2)
    try:
        with LedgerWriter(ledger_root, "run-1", "edges") as ledger, \
                LLMClient(cfg, cache_dir=tmp_path / "cache", api_key=secret,
                          usage_sink=lambda e: ledger.append(e.to_row())) as client:
            results = [client.chat(_profile_prompt(i), template_version="profiles-v1", tags={"stage": "edges"})
                       for i in (1, 2, 3, 1)]
            text = repr(client) + repr(results)
    finally:
        local_server.set_faults(seed=7)
    assert results[2].text is None and results[3].cached  # a failure and a cache hit were exercised
    assert len(read_ledger(ledger_root)) == 1 + 1 + 2 + 1
    dumps = [p.read_bytes() for p in list((tmp_path / "cache").rglob("*")) + list(ledger_root.rglob("*"))
             if p.is_file()]
    assert dumps and not any(secret.encode() in d for d in dumps)
    assert caplog.records and secret not in caplog.text and secret not in text


# --- cache, tokens and prices on their own ----------------------------------------------------------------------
def test_cache_is_shared_across_processes(tmp_path: Path) -> None:
    code = ("import sys; from recsys.llm.cache import ResponseCache; "
            "c = ResponseCache(sys.argv[1]); c.put('k', {'text': 'from-child'}); c.close()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=Path(__file__).parents[1])
    with ResponseCache(tmp_path) as cache:
        assert cache.get("k") == {"text": "from-child"}
        assert cache.forget("k") and cache.get("k") is None


def test_token_counts_follow_the_cookbook_formula() -> None:
    assert count_tokens("hello world") == 2 and count_tokens("") == 0
    assert count_tokens("<|endoftext|>") > 1  # special-token text is counted as text, not rejected
    msgs = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello", "name": "bob"}]
    expected = 3 + (3 + 1 + 2) + (3 + 1 + 1 + 1 + 1)  # primer; system msg; user msg with a name (+1)
    assert count_message_tokens(msgs) == expected


def test_a_new_process_counts_tokens_without_the_network(tmp_path: Path) -> None:
    """Every new process (a Dask worker, the server) loads the encoding. Behind a network that accepts connections
    and never answers (here: a proxy that does just that), a download would block that process for ever."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {**os.environ, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    code = "from recsys.llm.tokens import count_tokens; print(count_tokens('hello world'))"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.accept()  # nobody knocked
    finally:
        silent.close()
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr


def test_prices(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = load_price_table()
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # dated snapshot
    assert table.cost("gpt-4o-2024-08-06", 0, 1_000_000) == pytest.approx(10.0)  # not gpt-4o-mini's price
    assert table.cost("gpt-3.5-turbo-0125", 1000, 1000) == pytest.approx(0.002)
    assert table.cost("openai/gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # alias
    assert table.cost("text-embedding-3-small", 1_000_000, 0) == pytest.approx(0.02)
    assert table.cost("llmrec-heuristic", 10**6, 10**6) == 0.0
    assert table.cost("gpt-4o", 10**6, 10**6, cached=True) == 0.0
    fresh = PriceTable.from_yaml(Path(__file__).parents[1] / "recsys/llm/prices.yaml")
    with caplog.at_level(logging.WARNING):
        assert fresh.cost("llama3:8b", 10, 10) is None and fresh.cost("llama3:8b", 10, 10) is None
        assert fresh.cost("gpt-3.5-turbo-16k", 10, 10) is None  # a different model, not a snapshot
        assert fresh.cost("llama3:8b", 10, 10, cached=True) == 0.0
    assert caplog.text.count("llama3:8b") == 1  # one warning per unknown model
    assert not price_known("llama3:8b") and price_known("gpt-4.1-nano-2025-04-14")
    custom = tmp_path / "prices.yaml"
    custom.write_text("models:\n  my-model: {input: 1.0, output: 2.0}\naliases:\n  mine: my-model\n")
    assert cost_usd("mine", 10**6, 10**6, table=custom) == pytest.approx(3.0)
    assert price_known("my-model", custom) and not price_known("gpt-4o-mini", custom)
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  x: {input: 1.0}\n")
    with pytest.raises(ValueError, match="numeric"):
        PriceTable.from_yaml(bad)


def test_fine_tuned_models_and_training_prices(tmp_path: Path) -> None:
    table = load_price_table()
    ft = "ft:gpt-4o-mini-2024-07-18:my-org:llm4idrec:AbC123"
    assert table.resolve(ft) == "ft:gpt-4o-mini"  # priced apart from its base model
    assert table.cost(ft, 1_000_000, 1_000_000) == pytest.approx(0.30 + 1.20)
    assert table.training_cost("gpt-4o-mini-2024-07-18", 2_000_000) == pytest.approx(6.0)
    assert table.training_cost("gpt-4.1-mini", 1_000_000) == pytest.approx(5.0)
    assert table.training_cost("text-embedding-3-small", 10**6) is None  # no training price
    assert table.resolve("ft:unknown-base:org:x:y") is None
    custom = tmp_path / "prices.yaml"
    custom.write_text("models:\n  base: {input: 1.0, output: 2.0, training: 4.0}\n  ft:base: {input: 2, output: 4}\n")
    mine = PriceTable.from_yaml(custom)
    assert mine.training_cost("base", 500_000) == pytest.approx(2.0) and mine.cost("ft:base:o:s:i", 10**6, 0) == 2.0


def test_a_priced_model_needs_a_budget_or_an_explicit_allowance(tmp_path: Path) -> None:
    with pytest.raises(UnboundedSpend, match=r"'gpt-4o-mini-2024-07-18' costs \$0.15 / \$0.6 per 1M .* no budget: set "
                                             r"max_cost_usd .* or allow_unbounded_spend"):
        require_budget("gpt-4o-mini-2024-07-18", None, False)
    require_budget("gpt-4o-mini", 5.0, False)
    require_budget("gpt-4o-mini", None, True)
    require_budget("llmrec-heuristic", None, False)  # free: nothing to bound
    require_budget("llama3:8b", None, False)  # unpriced (self-hosted): a budget could not count it anyway
    with pytest.raises(ValueError, match="max_cost_usd must be > 0"):
        require_budget("gpt-4o-mini", 0.0, False)
    custom = tmp_path / "prices.yaml"
    custom.write_text("models:\n  llmrec-heuristic: {input: 1.0, output: 0.0}\n")
    with pytest.raises(UnboundedSpend):
        require_budget("llmrec-heuristic", None, False, custom)  # the price table the run uses decides


def test_unknown_model_costs_none_in_events(stub: StubServer, tmp_path: Path) -> None:
    events: list[UsageEvent] = []
    with _client(_cfg(stub.base_url, model="some-local-model"), tmp_path, events) as client:
        client.chat(_msgs(), template_version="t1")
        client.chat(_msgs(), template_version="t1")
    assert events[0].cost_usd is None and events[1].cached and events[1].cost_usd == 0.0
