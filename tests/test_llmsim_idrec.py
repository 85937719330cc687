"""The local server answers LLM4IDRec generation prompts (llmsim/idrec.py): a fine-tuning job over HTTP learns item
co-occurrences from its training file, and chat completions with the job's fine-tuned model answer an `i<id>` list
from them; any other model echoes the history. Planted file: i1 is always in a history whose target is i2,i7;
unrelated records (i10+k -> i50+k,i80+k) add prior mass elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from llmsim import MODEL_ID, idrec
from llmsim.launch import LLMServer
from recsys.llm4idrec.hosted import start_job, wait_job
from recsys.llm4idrec.jsonl import to_jsonl
from recsys.llm4idrec.parse import parse_generation
from recsys.llm4idrec.prompts import item_list, prompt_text
from storage.fine_tune_jobs import fine_tune_job

PLANTED = 20
FLOW_SAMPLING = {"temperature": 0.8, "top_p": 0.9, "max_tokens": 200}  # what LLM4IDRec's hosted generation sends


def _record(user: int, history: list[int], target: list[int]) -> dict:
    return {"messages": [{"role": "user", "content": prompt_text(user, history)},
                         {"role": "assistant", "content": item_list(target)}]}


def _training_file() -> str:
    planted = [_record(u, [1, 100 + u], [2, 7]) for u in range(PLANTED)]
    unrelated = [_record(100 + k, [10 + k], [50 + k, 80 + k]) for k in range(20)]
    return to_jsonl(planted + unrelated)


CATALOGUE = {1, 2, 5, 7, 9, *range(10, 30), *range(50, 100), *range(100, 100 + PLANTED)}


def _client(server: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def _fine_tune(client: openai.OpenAI, training: str, folder: Path) -> Any:
    """The succeeded job, run as LLM4IDRec's hosted path runs it (recsys/llm4idrec/hosted.py)."""
    record = fine_tune_job(folder, "job")
    start_job(client, record, training, None, model="gpt-4o-mini-2024-07-18", hyperparameters={}, suffix="idrec")
    return wait_job(client, record, poll_s=0.05, poll_max_s=0.1)


@pytest.fixture(scope="module")
def server(llm_server: LLMServer) -> Iterator[LLMServer]:
    llm_server.set_faults(fine_tune_duration_s=0.1)
    yield llm_server
    llm_server.set_faults()


@pytest.fixture(scope="module")
def tuned(server: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fine-tuned model id of a job on the planted file."""
    return _fine_tune(_client(server), _training_file(), tmp_path_factory.mktemp("ft")).fine_tuned_model


def _ask(server: LLMServer, model: str, user: int, history: list[int], **params) -> openai.types.chat.ChatCompletion:
    return _client(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt_text(user, history)}], **params)


# --- over HTTP -------------------------------------------------------------------------------------------------------
def test_fine_tuned_model_answers_the_co_occurring_items_and_never_the_history(server, tuned):
    for seed in range(10):
        reply = _ask(server, tuned, 42, [1, 5], seed=seed, **FLOW_SAMPLING)
        text = reply.choices[0].message.content
        parsed = parse_generation(text, {1, 5}, CATALOGUE)
        assert sorted(parsed.items) == [2, 7] and not parsed.dropped, text  # i2,i7 fill the 0.9 nucleus
        assert reply.choices[0].finish_reason == "stop" and reply.model == tuned
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 20
    # i2 in the history: never answered; the other co-occurring item first, then a prior-only item
    greedy = _ask(server, tuned, 42, [1, 2], temperature=0).choices[0].message.content
    parsed = parse_generation(greedy, {1, 2}, CATALOGUE)
    assert parsed.items[0] == 7 and 2 not in parsed.items and len(parsed.items) == 2 and not parsed.dropped


def test_same_request_same_answer_and_seeds_change_the_draw(server, tuned):
    history = [1, 12, 13]
    without_seed = {_ask(server, tuned, 3, history, temperature=1.5).choices[0].message.content for _ in range(3)}
    assert len(without_seed) == 1  # seeded by the prompt's hash
    seeded = [_ask(server, tuned, 3, history, seed=s, temperature=1.5).choices[0].message.content
              for s in range(12)]
    assert seeded == [_ask(server, tuned, 3, history, seed=s, temperature=1.5).choices[0].message.content
                      for s in range(12)]
    assert len(set(seeded)) > 1


def test_a_model_the_server_did_not_fine_tune_echoes_the_history(server, tuned):
    history = [1, 5, 9, 11, 12, 13, 14]
    for model in (MODEL_ID, "ft:gpt-4o-mini-2024-07-18:other:idrec:abc"):
        text = _ask(server, model, 8, history, **FLOW_SAMPLING).choices[0].message.content
        assert text == item_list(history[-idrec.ECHO_ITEMS:])
        parsed = parse_generation(text, set(history), CATALOGUE)
        assert parsed.items == [] and parsed.dropped["in_history"] == idrec.ECHO_ITEMS
    assert _ask(server, MODEL_ID, 8, []).choices[0].message.content == "u8"


def test_max_tokens_truncates_and_answers_are_counted(server, tuned):
    server.reset()
    full = _ask(server, tuned, 42, [1, 5], seed=1).choices[0].message.content
    cut = _ask(server, tuned, 42, [1, 5], seed=1, max_tokens=2).choices[0]
    assert cut.finish_reason == "length" and full.startswith(cut.message.content) and cut.message.content != full
    stats = server.stats()
    assert stats["by_status"] == {"200": 2} and stats["chat_ok"] == 1 and stats["faults"] == {"truncated": 1}


def test_injected_error_and_response_format_are_refused(server, tuned):
    try:
        server.set_faults(fine_tune_duration_s=0.1, fail_match="user(u77)")
        with pytest.raises(openai.InternalServerError):
            _ask(server, tuned, 77, [1, 5], **FLOW_SAMPLING)
        assert _ask(server, tuned, 78, [1, 5], **FLOW_SAMPLING).choices[0].message.content
    finally:
        server.set_faults(fine_tune_duration_s=0.1)
    with pytest.raises(openai.BadRequestError, match="send no response_format"):
        _ask(server, tuned, 42, [1, 5], response_format={"type": "json_schema", "json_schema": {
            "name": "items", "schema": {"type": "object", "properties": {"items": {"type": "array"}}}}})


def test_models_list_the_fine_tuned_id_and_a_non_idrec_file_learns_nothing(server, tuned, tmp_path):
    client = _client(server)
    assert tuned in {m.id for m in client.models.list()} and client.models.retrieve(tuned).id == tuned
    other = to_jsonl([{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}])
    job = _fine_tune(client, other, tmp_path)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert not any("co-occurrences" in e for e in events)
    assert _ask(server, job.fine_tuned_model, 4, [1, 5]).choices[0].message.content == "i1,i5"  # untuned echo


# --- the model itself ------------------------------------------------------------------------------------------------
def test_prompt_round_trip_and_malformed_history():
    for history in ([], [5], [5, 9, 42]):
        messages = [{"role": "system", "content": "x"}, {"role": "user", "content": prompt_text(123, history)}]
        assert idrec.parse_prompt(messages) == idrec.IDRecPrompt(123, tuple(history))
    assert idrec.parse_prompt([{"role": "user", "content": "User history:\n- A | 1990 | Drama"}]) is None
    bad = prompt_text(1, [5]).replace("i5", "i5,movie 9")
    with pytest.raises(idrec.PromptError, match="'movie 9'"):
        idrec.parse_prompt([{"role": "user", "content": bad}])


def test_learn_counts_pairs_popularity_and_answer_length():
    model = idrec.learn(_training_file().encode())
    assert model is not None and model.examples == 40 and model.answer_length == 2
    at = {int(i): k for k, i in enumerate(model.items)}
    dense = model.cooccurrence.toarray()
    assert dense[at[1], at[2]] == dense[at[1], at[7]] == PLANTED and dense[at[10], at[50]] == 1
    assert dense[at[1], at[50]] == 0 and dense.sum() == 2 * (2 * PLANTED + 20)
    assert model.popularity[at[2]] == PLANTED and model.popularity[at[1]] == 0
    scores = model.scores((1, 5))
    assert scores[at[1]] == 0 and scores[at[2]] == PLANTED + 1 and scores[at[100]] == 0  # never a target
    assert idrec.learn(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}'
                       ) is None


def test_draw_is_greedy_at_temperature_zero_and_top_p_cuts_the_tail():
    scores = np.array([0.0, 3.0, 5.0, 3.0, 0.5])
    assert idrec.draw(scores, 3, idrec.Sampling(0.0, 1.0, 0)) == [2, 1, 3]
    assert idrec.draw(scores, 9, idrec.Sampling(0.0, 1.0, 0)) == [2, 1, 3, 4]  # only positive scores
    firsts = {idrec.draw(scores, 1, idrec.Sampling(1.0, 0.4, s))[0] for s in range(50)}
    assert firsts == {2}  # item 2 holds 5/11.5 > 0.4 of the mass
    firsts = {idrec.draw(scores, 1, idrec.Sampling(1.0, 1.0, s))[0] for s in range(200)}
    assert firsts == {1, 2, 3, 4}
    assert idrec.draw(scores, 4, idrec.Sampling(0.7, 0.9, 5)) == idrec.draw(scores, 4, idrec.Sampling(0.7, 0.9, 5))
