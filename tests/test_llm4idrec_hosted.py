"""Hosted fine-tuning over HTTP against the local server's /v1/files and /v1/fine_tuning/jobs: a job that
succeeds, a failed job, a file that breaks the format rules, and a run killed (SIGKILL) while polling a slow job
that a re-run resumes without uploading or creating anything again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import openai
import pytest

from recsys.llm.tokens import count_tokens
from recsys.llm4idrec.hosted import (
    MAX_EPOCHS,
    FineTuneFailed,
    hyperparameters,
    start_job,
    trained_tokens_estimate,
    wait_job,
)
from recsys.llm4idrec.jsonl import chat_record, to_jsonl
from recsys.llm4idrec.samples import prefix_samples
from storage.fine_tune_jobs import fine_tune_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYPER = {"n_epochs": 2, "batch_size": 32, "learning_rate_multiplier": 1.0}


def _files() -> tuple[str, str]:
    histories = {u: tuple(range(100 * u, 100 * u + 6)) for u in range(1, 4)}
    records = [chat_record(s, 256) for s in prefix_samples(histories, per_user=2)]
    return to_jsonl(records[:-2]), to_jsonl(records[-2:])


@pytest.fixture()
def server(llm_server):
    llm_server.set_faults(fine_tune_duration_s=0.3)
    llm_server.reset()
    return llm_server


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def test_job_succeeds_and_a_second_start_reuses_it(server, tmp_path):
    client, record = _client(server), fine_tune_job(tmp_path, "k1")
    train, valid = _files()
    job_id = start_job(client, record, train, valid, model="gpt-4o-mini-2024-07-18", hyperparameters=HYPER,
                       suffix="idrec", seed=7)
    assert start_job(client, record, train, valid, model="gpt-4o-mini-2024-07-18", hyperparameters=HYPER) == job_id
    statuses = []
    job = wait_job(client, record, poll_s=0.05, poll_max_s=0.2, on_status=lambda j: statuses.append(j.status))
    assert job.status == "succeeded" and statuses[-1] == "succeeded" and len(statuses) >= 2
    assert job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:llmsim:idrec:")
    rec = record.record()
    assert rec["job_id"] == job_id and rec["fine_tuned_model"] == job.fine_tuned_model
    assert rec["trained_tokens"] == job.trained_tokens > 0
    stats = server.stats()
    assert stats["fine_tuning_jobs_created"] == 1 and stats["files_created"] == 2
    uploaded = client.files.retrieve(rec["training_file"])
    assert uploaded.purpose == "fine-tune" and client.files.content(uploaded.id).text == train


def test_failed_job_and_bad_file_raise_with_the_reason(server, tmp_path):
    client = _client(server)
    train, _ = _files()
    server.set_faults(fine_tune_fail=True, fine_tune_duration_s=0.1)
    record = fine_tune_job(tmp_path, "failing")
    start_job(client, record, train, None, model="m", hyperparameters=HYPER)
    with pytest.raises(FineTuneFailed, match="failed: The job failed during training"):
        wait_job(client, record, poll_s=0.05, poll_max_s=0.1)
    assert record.record()["status"] == "failed"
    server.set_faults(fine_tune_duration_s=0.1)
    bad = fine_tune_job(tmp_path, "bad")
    start_job(client, bad, train + '{"messages": [{"role": "user", "content": "q"}]}\n', None, model="m",
              hyperparameters=HYPER)
    with pytest.raises(FineTuneFailed, match=r"training_file file-\w+: line 5: no assistant message"):
        wait_job(client, bad, poll_s=0.05, poll_max_s=0.1)


def test_rerun_after_sigkill_while_polling_resumes_the_same_job(server, tmp_path):
    server.set_faults(fine_tune_duration_s=3.0)
    train, valid = _files()
    (tmp_path / "train.jsonl").write_text(train)
    script = textwrap.dedent(f"""
        import openai, pathlib
        from recsys.llm4idrec.hosted import start_job, wait_job
        from storage.fine_tune_jobs import fine_tune_job
        client = openai.OpenAI(base_url={server.base_url!r}, api_key="test", max_retries=0)
        record = fine_tune_job({str(tmp_path)!r}, "k")
        start_job(client, record, pathlib.Path({str(tmp_path / "train.jsonl")!r}).read_text(), None, model="m",
                  hyperparameters={{}})
        print("polling", flush=True)
        wait_job(client, record, poll_s=0.05, poll_max_s=0.1)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "polling"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    record = fine_tune_job(tmp_path, "k")
    assert record.record()["status"] in ("running", "queued", "validating_files")  # killed mid-job
    client = _client(server)
    job_id = start_job(client, record, train, None, model="m", hyperparameters={})
    assert job_id == record.record()["job_id"]
    job = wait_job(client, record, poll_s=0.1, poll_max_s=0.5)
    assert job.status == "succeeded" and job.id == job_id
    stats = server.stats()
    assert stats["fine_tuning_jobs_created"] == 1 and stats["files_created"] == 1


def test_a_failed_job_is_replaced_on_the_next_start_and_calls_go_through_the_wrapper(server, tmp_path):
    client, record, train = _client(server), fine_tune_job(tmp_path, "again"), _files()[0]
    server.set_faults(fine_tune_fail=True, fine_tune_duration_s=0.05)
    calls: list[str] = []

    def call(what, fn):
        calls.append(what)
        return fn()

    first = start_job(client, record, train, None, model="m", hyperparameters=HYPER, call=call)
    with pytest.raises(FineTuneFailed):
        wait_job(client, record, poll_s=0.05, poll_max_s=0.1, call=call)
    server.set_faults(fine_tune_duration_s=0.05)
    second = start_job(client, record, train, None, model="m", hyperparameters=HYPER, call=call)
    assert second != first and record.record()["replaced_jobs"] == [first]
    assert wait_job(client, record, poll_s=0.05, poll_max_s=0.1, call=call).status == "succeeded"
    assert calls[:2] == ["files.create", "fine_tuning.jobs.create"] and calls.count("files.create") == 1
    assert server.stats()["fine_tuning_jobs_created"] == 2 and server.stats()["files_created"] == 1


def test_hyperparameters_and_token_estimate_match_the_server():
    assert hyperparameters(12_800, 32, 400) == {"batch_size": 32, "n_epochs": 1}  # the paper's 400 x 32
    assert hyperparameters(1_000, 32, 400)["n_epochs"] == 13  # 12,800 examples / 1,000, rounded up
    assert hyperparameters(10, 32, 400)["n_epochs"] == MAX_EPOCHS
    train, _ = _files()
    one = trained_tokens_estimate(train, 1)
    assert trained_tokens_estimate(train, 3) == 3 * one
    lines = [json.loads(line) for line in train.splitlines()]
    content = sum(count_tokens(m["content"]) for line in lines for m in line["messages"])
    assert content < one <= content + 8 * len(lines) + 3 * len(lines)  # the content plus chat overhead
