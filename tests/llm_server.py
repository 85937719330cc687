"""The fixtures of the local OpenAI-compatible server (llmsim), a real subprocess started by `llmsim.launch`.

Not a test module: other test modules use its fixtures, or start a server themselves, e.g.

    pytest_plugins = ["tests.llm_server"]  # registers the fixtures `llm_server` and `llm_server_factory`

    def test_something(llm_server):
        client = openai.OpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0)

    def test_faults(llm_server_factory):
        server = llm_server_factory(error_rate=0.5, seed=1)   # stopped when the test ends

    def test_by_hand():
        from llmsim.launch import start_llm_server
        with start_llm_server(error_rate=0.5, seed=1) as server:
            ...

The server is NOT a language model: it answers with transparent heuristics (see llmsim/heuristics.py). Every
process started is stopped when its `with` block or fixture ends, and again at interpreter exit, so a failing test
never leaves a server running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmsim.launch import LLMServer, start_llm_server


@pytest.fixture(scope="module")
def llm_server() -> Iterator[LLMServer]:
    """A fault-free server shared by one test module."""
    with start_llm_server() as server:
        yield server


@pytest.fixture()
def llm_server_factory() -> Iterator[Callable[..., LLMServer]]:
    """`llm_server_factory(**faults)` starts a server like `start_llm_server`; all are stopped when the test ends."""
    started: list[LLMServer] = []

    def start(**faults: Any) -> LLMServer:
        server = start_llm_server(**faults)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
