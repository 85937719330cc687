"""The local OpenAI-compatible server, exercised over real HTTP with the official `openai` client (no patching).

One fault-free server subprocess serves the module; fault tests switch faults on through /admin/faults and the
`faulty` fixture switches them off again. A second, short-lived server checks the command-line flags.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from flows.cli import app
from llmsim import heuristics as h
from llmsim.faults import FaultConfig
from recsys.llm.cache import prompt_hash
from recsys.llm.tokens import count_message_tokens, count_tokens

if TYPE_CHECKING:
    from llmsim.launch import LLMServer



EDGES_SYSTEM = ("You are a movie recommendation system. Based on the user's viewing history (title, year, genres), "
                "choose from the candidate list the movie the user will like most and the one the user will like "
                "least.")
PROFILE_SYSTEM = ("You are required to generate a user profile based on the user's viewing history (title, year, "
                  "genres). Do not answer 'unknown': make an educated guess.")
ATTRIBUTES_SYSTEM = "You are a movie search engine. Provide the director, country and language of each movie below."

STAR_TREK = [
    "Star Trek: The Wrath of Khan | 1982 | Action, Adventure, Sci-Fi",
    "Star Trek III: The Search for Spock | 1984 | Action, Adventure, Sci-Fi",
    "Star Trek IV: The Voyage Home | 1986 | Action, Adventure, Sci-Fi",
]
CANDIDATES = [
    "Fargo | 1996 | Crime, Drama, Thriller",
    "Star Trek VI: The Undiscovered Country | 1991 | Action, Adventure, Sci-Fi",
    "Sound of Music, The | 1965 | Children's, Musical",
    "Heat | 1995 | Action, Crime, Thriller",
]
ROMANCE = [
    "Sense and Sensibility | 1995 | Drama, Romance",
    "Casablanca | 1942 | Drama, Romance, War",
    "Roman Holiday | 1953 | Comedy, Romance",
    "Brief Encounter | 1945 | Drama, Romance",
]


def edges_messages(history: list[str], candidates: list[str]) -> list[dict[str, str]]:
    lines = ["User history:", *[f"- {x}" for x in history], "Candidates:",
             *[f"[{i}] {x}" for i, x in enumerate(candidates)],
             'Answer with JSON only, no reasoning: {"liked": <candidate index>, "disliked": <candidate index>}. '
             f"Both indices must come from the candidate list (0 to {len(candidates) - 1}) and must differ."]
    return [{"role": "system", "content": EDGES_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def profile_messages(history: list[str]) -> list[dict[str, str]]:
    lines = ["User history:", *[f"- {x}" for x in history],
             'Answer with JSON only: {"age": <integer>, "gender": "male" or "female", "liked_genres": [...], '
             '"disliked_genres": [...], "liked_directors": [...], "country": "...", "language": "..."}']
    return [{"role": "system", "content": PROFILE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def attributes_messages(movies: dict[int, str]) -> list[dict[str, str]]:
    lines = ["Movies:", *[f"[{i}] {x}" for i, x in movies.items()],
             'Answer with JSON only: {"items": [{"id": <item id>, "director": "...", "country": "...", '
             '"language": "..."}, ...]} with one entry per movie above.']
    return [{"role": "system", "content": ATTRIBUTES_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def client_for(server: LLMServer, timeout: float = 30.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, messages: list[dict[str, str]], **kw: object) -> str:
    response = client.chat.completions.create(model="gpt-4o-mini", messages=messages, **kw)
    return response.choices[0].message.content or ""


@pytest.fixture()
def faulty(llm_server: LLMServer) -> Iterator[LLMServer]:
    """The module's server with clean stats; every fault is switched off again afterwards."""
    llm_server.set_faults()
    llm_server.reset()
    try:
        yield llm_server
    finally:
        llm_server.set_faults()


# --- endpoints -------------------------------------------------------------------------------------------------------
def test_models_list(llm_server: LLMServer) -> None:
    models = client_for(llm_server).models.list()
    assert [m.id for m in models.data] == ["llmrec-heuristic"]
    assert "not a language model" in models.data[0].model_extra["description"]


def test_edges_pick_closest_and_farthest(llm_server: LLMServer) -> None:
    messages = edges_messages(STAR_TREK, CANDIDATES)
    response = client_for(llm_server).chat.completions.create(model="any-model", messages=messages)
    answer = json.loads(response.choices[0].message.content)
    assert answer == {"liked": 1, "disliked": 2}  # Star Trek VI; the children's musical
    assert response.model == "any-model"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == count_message_tokens(messages)
    assert response.usage.completion_tokens == count_tokens(response.choices[0].message.content)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_profile_fields_and_rules(llm_server: LLMServer) -> None:
    client = client_for(llm_server)
    romance = json.loads(chat(client, profile_messages(ROMANCE)))
    assert set(romance) == {"age", "gender", "liked_genres", "disliked_genres", "liked_directors", "country",
                            "language"}
    assert isinstance(romance["age"], int) and 5 <= romance["age"] <= 100
    assert romance["gender"] == "female"
    assert romance["liked_genres"] == ["Romance", "Drama", "Comedy"]
    assert len(romance["disliked_genres"]) == 3 and not set(romance["disliked_genres"]) & {"Romance", "Drama"}
    assert romance["liked_directors"] == [] and (romance["country"], romance["language"]) == ("USA", "English")
    trek = json.loads(chat(client, profile_messages(STAR_TREK)))
    assert trek["gender"] == "male" and trek["liked_genres"] == ["Action", "Adventure", "Sci-Fi"]
    assert romance["age"] > trek["age"]  # older films -> an older viewer (rule in heuristics.profile)


def test_attributes_one_entry_per_movie(llm_server: LLMServer) -> None:
    movies = {12: "Postino, Il (1994) | 1994 | Comedy, Drama", 7: "Toy Story (1995) | 1995 | Animation, Comedy",
              301: "Contempt (Mépris, Le) (1963) | 1963 | Drama"}
    answer = json.loads(chat(client_for(llm_server), attributes_messages(movies)))
    by_id = {item["id"]: item for item in answer["items"]}
    assert sorted(by_id) == [7, 12, 301]
    assert (by_id[12]["country"], by_id[12]["language"]) == ("Italy", "Italian")
    assert (by_id[7]["country"], by_id[7]["language"]) == ("USA", "English")
    assert (by_id[301]["country"], by_id[301]["language"]) == ("France", "French")
    assert all(item["director"] == h.UNKNOWN_DIRECTOR for item in answer["items"])


def test_max_tokens_truncates(llm_server: LLMServer) -> None:
    response = client_for(llm_server).chat.completions.create(model="m", messages=profile_messages(ROMANCE),
                                                              max_tokens=5)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens <= 5


def test_embeddings_float_and_base64(llm_server: LLMServer) -> None:
    client = client_for(llm_server)
    texts = ["Star Trek: First Contact | 1996 | Sci-Fi", "Star Trek: Generations | 1994 | Sci-Fi",
             "Babe | 1995 | Children's, Comedy"]
    response = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(count_tokens(t) for t in texts)
    raw = httpx.post(f"{llm_server.base_url}/embeddings", json={"input": texts[0], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)


def test_unrecognised_prompt_is_400(llm_server: LLMServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client_for(llm_server), [{"role": "user", "content": "Tell me a joke."}])
    assert info.value.status_code == 400
    assert info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # a candidate list that is not numbered 0..k-1
        chat(client_for(llm_server), edges_messages(STAR_TREK, CANDIDATES[:1]))


def test_concurrent_requests(llm_server: LLMServer) -> None:
    client = client_for(llm_server)
    results: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        text = chat(client, edges_messages(STAR_TREK[: 1 + i % 3], CANDIDATES))
        with lock:
            results.append(text)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 24 and all(json.loads(r)["liked"] == 1 for r in results)


# --- admin -----------------------------------------------------------------------------------------------------------
def test_admin_stats_reset_and_answer_counts(faulty: LLMServer) -> None:
    client = client_for(faulty)
    first, second = profile_messages(ROMANCE), profile_messages(STAR_TREK)
    chat(client, first)
    chat(client, first)
    response = client.chat.completions.create(model="m", messages=second)
    faulty.set_faults(malformed_rate=1.0)
    chat(client, second)  # a 200 answer with invalid content: billed, but not counted as an answer
    stats = faulty.stats()
    assert stats["requests"] == 4 and stats["by_status"] == {"200": 4} and stats["chat_ok"] == 3
    assert stats["prompt_answer_counts"] == {prompt_hash(first): 2, prompt_hash(second): 1}
    assert stats["prompt_tokens"] == 2 * count_message_tokens(first) + 2 * count_message_tokens(second)
    assert stats["completion_tokens"] >= 3 * response.usage.completion_tokens
    assert stats["faults"] == {"malformed": 1}
    assert httpx.get(f"{faulty.root_url}/admin/faults").json()["malformed_rate"] == 1.0
    bad = httpx.post(f"{faulty.root_url}/admin/faults", json={"error_rate": 2.0, "bogus": 1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_faults"
    faulty.reset()
    stats = faulty.stats()
    assert stats["requests"] == 0 and stats["prompt_answer_counts"] == {} and stats["prompt_tokens"] == 0


# --- faults ----------------------------------------------------------------------------------------------------------
def test_rate_limit_429_with_retry_after(faulty: LLMServer) -> None:
    faulty.set_faults(rpm_limit=2)
    client = client_for(faulty)
    chat(client, profile_messages(ROMANCE))
    chat(client, profile_messages(ROMANCE))
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, profile_messages(ROMANCE))
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
    assert info.value.body["type"] == "rate_limit_error" and info.value.code == "rate_limit_exceeded"
    assert faulty.stats()["by_status"] == {"200": 2, "429": 1}


def _error_pattern(server: LLMServer, n: int) -> list[bool]:
    client = client_for(server)
    pattern = []
    for _ in range(n):
        try:
            chat(client, profile_messages(ROMANCE))
            pattern.append(False)
        except openai.InternalServerError as exc:
            assert exc.status_code == 500 and exc.body["type"] == "server_error"
            pattern.append(True)
    return pattern


def test_error_rate_is_roughly_right_and_seeded(faulty: LLMServer) -> None:
    faulty.set_faults(error_rate=0.3, seed=7)
    pattern = _error_pattern(faulty, 80)
    assert 12 <= sum(pattern) <= 36
    faulty.set_faults(error_rate=0.3, seed=7)  # same seed, same order of requests -> same faults
    assert _error_pattern(faulty, 80) == pattern
    assert faulty.stats()["by_status"]["500"] == 2 * sum(pattern)


def test_malformed_answers_are_not_json(faulty: LLMServer) -> None:
    faulty.set_faults(malformed_rate=1.0)
    text = chat(client_for(faulty), edges_messages(STAR_TREK, CANDIDATES))
    assert text and "{" not in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_out_of_candidates(faulty: LLMServer) -> None:
    faulty.set_faults(out_of_candidates_rate=1.0, seed=3)
    for _ in range(4):
        answer = json.loads(chat(client_for(faulty), edges_messages(STAR_TREK, CANDIDATES)))
        assert answer["liked"] in (len(CANDIDATES), 99) and 0 <= answer["disliked"] < len(CANDIDATES)
    assert faulty.stats()["chat_ok"] == 0


def test_drop_closes_the_connection(faulty: LLMServer) -> None:
    faulty.set_faults(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError) as info:
        chat(client_for(faulty), profile_messages(ROMANCE))
    assert not isinstance(info.value, openai.APITimeoutError)
    faulty.set_faults()
    assert json.loads(chat(client_for(faulty), profile_messages(ROMANCE)))["gender"] == "female"
    assert faulty.stats()["by_status"] == {"dropped": 1, "200": 1}


def test_hang_times_out_without_blocking_others(faulty: LLMServer) -> None:
    faulty.set_faults(hang_rate=1.0, hang_s=1.5)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(client_for(faulty, timeout=0.3), profile_messages(ROMANCE))
    assert time.monotonic() - started < 1.2

    # A hanging request keeps hanging while the server answers others.
    faulty.set_faults(hang_rate=1.0, hang_s=2.0)
    errors: list[BaseException] = []

    def hanging() -> None:
        try:
            chat(client_for(faulty, timeout=10), profile_messages(STAR_TREK))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=hanging)
    thread.start()
    deadline = time.monotonic() + 5
    while faulty.stats()["in_flight"] < 2 and time.monotonic() < deadline:  # the timed-out one + this one
        time.sleep(0.02)
    faulty.set_faults()  # the hanging request already drew its fault
    started = time.monotonic()
    chat(client_for(faulty), profile_messages(ROMANCE))
    assert time.monotonic() - started < 1.0 and thread.is_alive()
    thread.join(10)
    assert not errors
    deadline = time.monotonic() + 5
    while faulty.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = faulty.stats()
    assert stats["by_status"] == {"disconnected": 1, "200": 2} and stats["faults"] == {"hang": 2}


def test_fail_match_always_500(faulty: LLMServer) -> None:
    faulty.set_faults(fail_match="Casablanca")
    client = client_for(faulty)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            chat(client, profile_messages(ROMANCE))
    assert json.loads(chat(client, profile_messages(STAR_TREK)))["gender"] == "male"
    assert faulty.stats()["faults"] == {"fail_match": 3}


def test_latency(faulty: LLMServer) -> None:
    faulty.set_faults(latency_ms=300)
    started = time.monotonic()
    chat(client_for(faulty), profile_messages(ROMANCE))
    assert time.monotonic() - started >= 0.3


def test_cli_flags_and_env(llm_server_factory: Callable[..., LLMServer]) -> None:
    env = {"LLMREC_SERVER_ERROR_RATE": "0.1", "LLMREC_SERVER_HANG_S": "2"}  # a flag wins over the environment
    with llm_server_factory(error_rate=1.0, fail_match="zzz", rpm_limit=50, seed=5, env=env) as server:
        faults = httpx.get(f"{server.root_url}/admin/faults").json()
        assert (faults["error_rate"], faults["fail_match"], faults["rpm_limit"], faults["seed"]) == (1.0, "zzz", 50, 5)
        assert faults["hang_s"] == 2.0
        with pytest.raises(openai.InternalServerError):
            chat(client_for(server), profile_messages(ROMANCE))
    assert not server.alive()
    bad = CliRunner().invoke(app, ["llm-server", "--error-rate", "2"])
    assert bad.exit_code == 2 and "invalid fault settings" in bad.output


def test_llm_faults_command_shows_sets_and_clears(llm_server_factory: Callable[..., LLMServer]) -> None:
    """`llmrec llm-faults` is the documented way to change a running server's faults (a rehearsal's endpoint
    recovering); the server's counters stay."""
    runner = CliRunner()
    with llm_server_factory(fail_match="Dunston Checks In") as server:
        chat(client_for(server), profile_messages(ROMANCE))
        shown = runner.invoke(app, ["llm-faults"], env={"OPENAI_BASE_URL": server.base_url})  # its /v1 address
        assert shown.exit_code == 0 and "fail_match=Dunston Checks In" in shown.output, shown.output
        changed = runner.invoke(app, ["llm-faults", "--url", server.root_url, "--error-rate", "0.5"])
        assert changed.exit_code == 0 and "error_rate=0.5" in changed.output and "fail_match" not in changed.output
        cleared = runner.invoke(app, ["llm-faults", "--url", server.root_url, "--clear"])
        assert cleared.exit_code == 0 and "none (all off)" in cleared.output
        assert httpx.get(f"{server.root_url}/admin/faults").json()["error_rate"] == 0.0
        assert server.stats()["chat_ok"] == 1  # counters untouched
        both = runner.invoke(app, ["llm-faults", "--url", server.root_url, "--clear", "--error-rate", "0.1"])
        assert both.exit_code == 2 and "give it alone" in " ".join(both.output.split())
        batch = runner.invoke(app, ["llm-faults", "--url", server.root_url, "--structured-outputs", "json_object",
                                    "--batch-duration-s", "0.3", "--fine-tune-fail"])
        assert batch.exit_code == 0, batch.output
        settings = httpx.get(f"{server.root_url}/admin/faults").json()
        assert (settings["structured_outputs"], settings["batch_duration_s"], settings["fine_tune_fail"]) == (
            "json_object", 0.3, True)
    gone = runner.invoke(app, ["llm-faults", "--url", server.root_url])
    assert gone.exit_code == 2 and "no local LLM server answers at" in gone.output


@pytest.mark.parametrize("command", ["llm-server", "llm-faults"])
def test_every_server_fault_is_a_flag(command: str) -> None:
    """Each FaultConfig field is an option of both commands, so a rehearsal can set, and restore, any fault."""
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0
    missing = [name for name in FaultConfig.model_fields if f"--{name.replace('_', '-')} " not in shown.output]
    assert not missing


# --- heuristics without HTTP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("title", "origin"), [
    ("Postino, Il (1994)", ("Italy", "Italian")),
    ("Boot, Das (1981)", ("Germany", "German")),
    ("Misérables, Les (1995)", ("France", "French")),
    ("Double vie de Véronique, La (Double Life of Veronique, The) (1991)", ("France", "French")),
    ("Shawshank Redemption, The (1994)", None),
    ("Die Hard (1988)", None),
    ("Á köldum klaka (Cold Fever) (1994)", ("unknown", "unknown")),
])
def test_guess_origin(title: str, origin: tuple[str, str] | None) -> None:
    assert h.guess_origin(title) == origin


def test_prompt_parsing_errors() -> None:
    empty = h.parse_prompt([{"role": "user", "content": "User history:\nAnswer with JSON only."}])
    assert empty == h.ProfilePrompt(history=())
    assert h.profile(())["age"] == 18
    with pytest.raises(h.PromptError):
        h.parse_prompt([{"role": "user", "content": "User history:\n- X | 1990 | Drama\nCandidates:\n"
                                                    "[0] A | 1990 | Drama\n[2] B | 1991 | Drama"}])
    assert h.edge_choice(np.empty((0, 3)), np.eye(3)) == (0, 2)
    with pytest.raises(h.PromptError):
        h.parse_prompt([{"role": "user", "content": "Movies:\n[1] A | 1990 | Drama\n[1] B | 1991 | Drama"}])
    prompt = h.parse_prompt(edges_messages(STAR_TREK, CANDIDATES) + [
        {"role": "assistant", "content": "Sure!"}, {"role": "user", "content": "Answer with JSON only."}])
    assert isinstance(prompt, h.EdgesPrompt) and len(prompt.candidates) == 4
    assert prompt.history[0] == h.ItemLine(STAR_TREK[0], "Star Trek: The Wrath of Khan", 1982,
                                           ("Action", "Adventure", "Sci-Fi"))


def test_local_embedder_cache_without_the_model() -> None:
    from recsys.embed.local import LocalEmbedder

    class FakeModel:
        calls: list[list[str]] = []

        def encode(self, texts: list[str], **_: object) -> np.ndarray:
            self.calls.append(list(texts))
            out = np.zeros((len(texts), 384), dtype=np.float32)
            out[np.arange(len(texts)), [len(t) for t in texts]] = 1.0
            return out

    embedder = LocalEmbedder(cache_size=2)
    embedder._model = fake = FakeModel()
    assert embedder.encode_cached(["a"]) is None
    vectors = embedder.encode(["a", "bb", "a", "ccc"])  # more new texts than the cache holds
    assert vectors.shape == (4, 384) and [int(v.argmax()) for v in vectors] == [1, 2, 1, 3]
    assert fake.calls == [["a", "bb", "ccc"]]
    assert embedder.encode_cached(["ccc", "bb"]) is not None and embedder.encode_cached(["a"]) is None
    embedder.encode(["bb"])
    assert fake.calls == [["a", "bb", "ccc"]]
    assert embedder.cache_info()["size"] == 2
