"""Structured outputs and answer wrappings over real HTTP: the project's client against the local server (llmsim),
which takes one `response_format` form, enforces it, and answers any other with HTTP 500 as llama.cpp does.

The server's malformed fault is on for every request: with a schema (json_schema, json_object_schema) a
constrained decoder cannot produce prose, so every answer validates; JSON mode without a schema (json_object)
gives a JSON object of the wrong shape; no response_format gives prose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recsys.augment.parse import InvalidAnswer, answer_schema, validate_attributes, validate_edges, validate_profile
from recsys.augment.profiles import augment_profiles
from recsys.augment.prompts import ItemText, UserContext, attributes_messages, edges_messages, profile_messages
from recsys.config import LLMConfig
from recsys.llm.client import LLMClient, LLMUnsupportedError
from recsys.llm.limits import clear_shared_limiters
from recsys.llm.structured import MODES, response_format, strict_schema

if TYPE_CHECKING:
    from llmsim.launch import LLMServer

HISTORY = [ItemText(1, "Star Trek: The Wrath of Khan", 1982, "Action|Adventure|Sci-Fi"),
           ItemText(2, "Star Trek III: The Search for Spock", 1984, "Action|Adventure|Sci-Fi")]
CANDIDATES = [ItemText(10 + i, title, 1990 + i, genres) for i, (title, genres) in enumerate([
    ("Fargo", "Crime|Drama"), ("Star Trek VI: The Undiscovered Country", "Action|Sci-Fi"),
    ("Sound of Music, The", "Children's|Musical"), ("Heat", "Action|Crime")])]
USER = UserContext(7, HISTORY, CANDIDATES, frozenset({1, 2}))
MOVIES = {5: "Postino, Il (1994)", 6: "Toy Story (1995)"}
STAGES = {
    "edges": (edges_messages(USER), lambda text: validate_edges(text, USER)),
    "profiles": (profile_messages(USER), validate_profile),
    "attributes": (attributes_messages([ItemText(i, t, 1995, "Drama") for i, t in MOVIES.items()]),
                   lambda text: validate_attributes(text, MOVIES)[0] or (_ for _ in ()).throw(InvalidAnswer("none"))),
}


@pytest.fixture()
def server(llm_server: LLMServer) -> Iterator[LLMServer]:
    """The module's server with clean stats; its settings go back to the defaults afterwards."""
    clear_shared_limiters()
    llm_server.reset()
    try:
        yield llm_server
    finally:
        llm_server.set_faults()


def client(server: LLMServer, tmp_path: Path, stage: str, mode: str, **cfg: object) -> LLMClient:
    config = LLMConfig(model="gpt-4o-mini", base_url=server.base_url, rpm=None, tpm=None, structured_outputs=mode,
                       max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, **cfg)
    return LLMClient(config, cache_dir=tmp_path / f"cache-{stage}-{mode}",
                     answer_schema=(f"{stage}_answer", answer_schema(stage)))


def test_schemas_are_strict_and_come_from_the_answer_models() -> None:
    edges = strict_schema(answer_schema("edges"))
    assert edges == {"type": "object", "properties": {"liked": {"type": "integer"}, "disliked": {"type": "integer"}},
                     "required": ["liked", "disliked"], "additionalProperties": False}
    profile = strict_schema(answer_schema("profiles"))
    assert profile["properties"]["gender"]["enum"] == ["male", "female"]
    assert profile["properties"]["liked_genres"] == {"type": "array", "items": {"type": "string"}}
    entry = strict_schema(answer_schema("attributes"))["properties"]["items"]["items"]
    assert entry["required"] == ["id", "director", "country", "language"] and not entry["additionalProperties"]
    assert response_format("json_object", "x", answer_schema("edges")) == {"type": "json_object"}
    assert response_format("none", "x", answer_schema("edges")) is None


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_over_http(server: LLMServer, tmp_path: Path, mode: str) -> None:
    """The server in `mode` takes the client in `mode` and enforces it; a client in any other mode is refused at
    its first request (no retry), with an error naming response_format."""
    server.set_faults(structured_outputs=mode, malformed_rate=1.0, first_listed_rate=1.0)  # no embedding needed
    for stage, (messages, validate) in STAGES.items():
        with client(server, tmp_path, stage, mode) as llm:
            text = llm.chat(messages, template_version="t").text
        if mode in ("json_schema", "json_object_schema"):
            validate(text)  # the decoder could not break it
        elif mode == "json_object":
            assert json.loads(text).keys() == {"answer"}
            with pytest.raises(InvalidAnswer, match="missing field"):
                validate(text)
        else:
            with pytest.raises(InvalidAnswer, match="answer is not JSON"):
                validate(text)
    others = [m for m in MODES if m not in (mode, "none")]
    for other in others:
        server.reset()
        with client(server, tmp_path, "edges", other) as llm, pytest.raises(LLMUnsupportedError,
                                                                             match="response_format"):
            llm.chat(STAGES["edges"][0], template_version="t")
        stats = server.stats()
        assert stats["requests"] == 1 and stats["by_status"] == {"500": 1}, other


def test_wrapped_answers_cost_no_reask(server: LLMServer, tmp_path: Path) -> None:
    """Every answer comes wrapped (fences with any tag, prose, an example object first, its own line): each user
    is asked once, and every profile is kept."""
    server.set_faults(wrapped_rate=1.0, seed=3)
    users = [UserContext(u, [*HISTORY, ItemText(100 + u, f"Movie {u}", 1980 + u, "Drama")], CANDIDATES,
                         frozenset({1, 2, 100 + u})) for u in range(1, 25)]
    with client(server, tmp_path, "profiles", "none") as llm:
        outcomes = augment_profiles(llm, users, max_reasks=2, max_workers=4, tags={"stage": "profiles"})
    stats = server.stats()
    assert all(o.ok and o.asks == 1 for o in outcomes)
    assert stats["requests"] == len(users) and stats["faults"]["wrapped"] == len(users)
    raws = {o.raw.split("\n")[0][:12] for o in outcomes}
    assert len(raws) >= 4, raws  # several kinds of wrapping were met
