"""The `llm4idrec` flow with the hosted backend, end to end against the local server: the fine-tuning job through
/v1/files and /v1/fine_tuning/jobs, generation with the fine-tuned model through /v1/chat/completions in batches,
the job and every call in the cost ledger at gpt-4o-mini's prices, the budget (refused without one, no job created
when the job's estimate is over it), a failed batch re-asked alone, and a run killed (SIGKILL) while polling the job
that a re-run resumes without a second job. The server's counters (`/admin/stats`) are the ground truth.

Each test uses its own `seed` (part of the job's key and of the generation's sampling), so no test finds another's
job or answers in the shared store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows.llm4idrec import LLM4IDRecFailed, llm4idrec_flow
from flows.runners import prefect_api_url
from llmsim.launch import LLMServer, start_llm_server
from recsys.config import DataConfig, EndpointConfig, LLM4IDRecConfig, LLM4IDRecRunConfig, TrainConfig
from recsys.llm.limits import clear_shared_limiters
from recsys.llm.pricing import UnboundedSpend
from storage.ledger import read_ledger, store_ledger_root
from storage.store import ArtifactStore
from tasks.llm4idrec import FINETUNE_STAGE, GENERATE_STAGE, BudgetExceeded
from tests.conftest import REPO

USERS = 20
BASE = "gpt-4o-mini-2024-07-18"  # $3.00 per 1M trained tokens; the fine-tuned model $0.30 / $1.20 per 1M
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with start_llm_server() as started:
        yield started


@pytest.fixture()
def sim(server: LLMServer) -> Iterator[LLMServer]:
    clear_shared_limiters()
    server.set_faults(fine_tune_duration_s=0.2)
    server.reset()
    try:
        yield server
    finally:
        server.set_faults(fine_tune_duration_s=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("idrec-hosted-store"))


def config(data: Path, server: LLMServer, seed: int, **idrec: object) -> LLM4IDRecRunConfig:
    return LLM4IDRecRunConfig(
        data=DataConfig(dataset=str(data)), train=TrainConfig(max_epochs=2, device="cpu"), downstream=("mf",),
        endpoint=EndpointConfig(base_url=server.base_url, rpm=None, tpm=None, max_attempts=2,
                                backoff_initial_s=0.05, backoff_max_s=0.5),
        llm4idrec=LLM4IDRecConfig(**{"backend": "hosted", "base_model": BASE, "sample_users": USERS,
                                     "prefixes_per_user": 2, "max_prompt_tokens": 256, "poll_s": 0.05,
                                     "poll_max_s": 0.2, "users_per_batch": 8, "seed": seed, "max_steps": 4, **idrec}),
    )


def test_hosted_end_to_end_with_cost_and_cache(small_movielens: Path, sim: LLMServer, store: str,
                                               tmp_path: Path) -> None:
    cfg, out = config(small_movielens, sim, 11), tmp_path / "out"
    result = llm4idrec_flow(config=cfg, store_root=store, out_dir=str(out), max_cost_usd=1.0)
    stats = sim.stats()
    assert stats["fine_tuning_jobs_created"] == 1 and stats["files_created"] == 2  # train + held-out file
    assert stats["chat_ok"] == USERS  # one generation per sampled user, in 3 batches
    ledger = read_ledger(store_ledger_root(store))
    (job_row,) = ledger[ledger["stage"] == FINETUNE_STAGE].itertuples()
    assert job_row.mode == "fine-tune" and job_row.model == BASE and job_row.prompt_tokens > 0
    assert job_row.cost_usd == pytest.approx(job_row.prompt_tokens * 3.00 / 1e6)
    gen = ledger[ledger["stage"] == GENERATE_STAGE]
    assert len(gen) == USERS and (gen["outcome"] == "ok").all() and set(gen["batch"]) == {"0", "1", "2"}
    assert gen["model"].str.startswith(f"ft:{BASE}:llmsim:llm4idrec:").all()
    expected = gen["prompt_tokens"].sum() * 0.30 / 1e6 + gen["completion_tokens"].sum() * 1.20 / 1e6
    assert gen["cost_usd"].sum() == pytest.approx(expected)
    assert result["cost_usd"] == pytest.approx(job_row.cost_usd + gen["cost_usd"].sum())
    assert len(pd.read_parquet(out / "ledger.parquet")) == USERS + 1
    summary = result["summary"]
    assert summary["users"] == USERS and summary["pieces"] == summary["kept"] + sum(summary["dropped"].values())
    report = (out / "report.md").read_text()
    verdict = report.splitlines()[2]
    assert verdict.startswith("**LLM4IDRec augmentation ") and f"cost ${result['cost_usd']:.2f}" in verdict
    assert "Fine-tuning (hosted): job ftjob-" in report and "## Test by user group" in report
    assert not (out / "loss.parquet").exists()

    again = llm4idrec_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "again"), max_cost_usd=1.0)
    stats = sim.stats()
    assert stats["fine_tuning_jobs_created"] == 1 and stats["chat_ok"] == USERS  # all from the store
    assert again["cost_usd"] == 0.0 and again["refs"] == result["refs"]
    assert "cost $" in (tmp_path / "again" / "report.md").read_text().splitlines()[2]  # the augmentation's cost


def test_budget_is_required_and_checked_before_the_job(small_movielens: Path, sim: LLMServer, store: str) -> None:
    cfg = config(small_movielens, sim, 12)
    with pytest.raises(UnboundedSpend, match="no budget"):
        llm4idrec_flow(config=cfg, store_root=store)
    with pytest.raises(BudgetExceeded, match="more than the \\$0.0000 left of this run's budget; no job was created"):
        llm4idrec_flow(config=cfg, store_root=store, max_cost_usd=1e-6)
    stats = sim.stats()
    assert stats["files_created"] == 0 and stats["fine_tuning_jobs_created"] == 0 and stats["requests"] == 0


def test_failed_batch_fails_the_run_and_a_rerun_asks_only_its_users(small_movielens: Path, sim: LLMServer,
                                                                      store: str, tmp_path: Path) -> None:
    cfg = config(small_movielens, sim, 13, sample_users=None)  # all 60 users, 8 batches
    sim.set_faults(fine_tune_duration_s=0.2, fail_match="user(u7)'s")  # user 7's generation request: HTTP 500
    with pytest.raises(LLM4IDRecFailed, match=r"1 items failed in batches \[0\]"):
        llm4idrec_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "out"), max_cost_usd=1.0)
    failures = pd.read_parquet(tmp_path / "out" / "augment_failures.parquet")
    assert failures["key"].tolist() == [7] and failures["stage"].tolist() == [GENERATE_STAGE]
    assert sim.stats()["fine_tuning_jobs_created"] == 1 and sim.stats()["chat_ok"] == 59
    sim.set_faults(fine_tune_duration_s=0.2)
    sim.reset()
    result = llm4idrec_flow(config=cfg, store_root=store, max_cost_usd=1.0)
    stats = sim.stats()
    assert stats["fine_tuning_jobs_created"] == 0 and stats["chat_ok"] == 1  # the job reused, user 7 re-asked
    assert result["summary"]["users"] == 60
    job = ArtifactStore(store).read_json(result["refs"]["job"], "job")
    assert f"cost ${job['cost_usd']:.4f}. Generation" in result["report"]  # this job's row, not other jobs'


def test_killed_while_polling_the_job_resumes_it(small_movielens: Path, sim: LLMServer, store: str,
                                                 tmp_path: Path) -> None:
    sim.set_faults(fine_tune_duration_s=4.0)
    cfg = config(small_movielens, sim, 14)
    script = ("import sys; from flows.llm4idrec import llm4idrec_flow; from recsys.config import LLM4IDRecRunConfig; "
              "llm4idrec_flow(config=LLM4IDRecRunConfig.model_validate_json(sys.argv[1]), store_root=sys.argv[2], "
              "max_cost_usd=1.0)")
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url()}  # this session's Prefect API: no second server
    proc = subprocess.Popen([sys.executable, "-c", script, cfg.model_dump_json(), store], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while sim.stats()["fine_tuning_jobs_created"] == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # polling
        assert proc.poll() is None, "the flow ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert sim.stats()["fine_tuning_jobs_created"] == 1 and sim.stats()["chat_ok"] == 0
    result = llm4idrec_flow(config=cfg, store_root=store, max_cost_usd=1.0)
    stats = sim.stats()
    assert stats["fine_tuning_jobs_created"] == 1 and stats["files_created"] == 2  # resumed, nothing re-uploaded
    assert stats["chat_ok"] == USERS and result["summary"]["users"] == USERS
    job_id = ArtifactStore(store).read_json(result["refs"]["job"], "job")["job_id"]
    ledger = read_ledger(store_ledger_root(store))
    assert len(ledger[(ledger["stage"] == FINETUNE_STAGE) & (ledger["batch"] == job_id)]) == 1  # billed once
