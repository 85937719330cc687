"""Prefect tasks of the Batch API mode (`AugmentConfig.mode = "batch"`), one stage at a time:

1. `prepare-batch-job`: run the stage's augmentors with `DeferredChat` (no HTTP): every question not answered by
   this run's earlier batches or the response cache is pending; write them as a job's JSONL (storage/batch_jobs.py).
2. `submit-batch-job`: files.create (purpose batch), then batches.create; each id is written to the job record
   before the next step, and a job that already has a batch id is not submitted again (a re-run resumes).
3. `wait-batch-job`: poll the batch with backoff until it ends, download its output and error files, put every
   answer in the response cache, and write a ledger row per request (`mode = batch`, batch prices).

Then the stage's normal `augment-batch` tasks validate the answers exactly as in normal mode; what is still
invalid or unanswered becomes the next round's pending requests (a follow-up batch), or is asked by normal
requests (`batch_followup = "normal"`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from recsys.config import AugmentConfig, LLMConfig
from recsys.llm.batch import TERMINAL, BatchAnswer, BatchAPI, BatchAPIError, DeferredChat, pending_lines, read_results
from recsys.llm.cache import ResponseCache
from recsys.llm.client import resolve_endpoint
from recsys.llm.pricing import load_price_table
from storage.batch_jobs import BatchJob, batch_job
from storage.ledger import LedgerWriter
from storage.store import ArtifactStore
from tasks.augment import batch_results, llm_cache_dir, stage_client, stage_outcomes


def collect_pending(store_root: str, stage: str, ids: list[int], refs: Mapping[str, str], llm: LLMConfig,
                    augment: AugmentConfig, jobs: list[str], api_key: str | None = None) -> tuple[DeferredChat, int]:
    """The stage's augmentors run over `ids` with no HTTP: the DeferredChat holding the pending requests, and how
    many items were answered (from `jobs`' results or the response cache). `api_key` goes to the client (default:
    the environment's, recsys/llm/client.py `resolve_endpoint`)."""
    answers, errors = batch_results(jobs)
    with stage_client(store_root, stage, llm, api_key=api_key) as client:
        asker = DeferredChat(client, answers, errors, http=False, rounds=0)
        outcomes = stage_outcomes(asker, ArtifactStore(store_root), stage, ids, refs, llm, augment,
                                  {"stage": stage, "batch": "plan"})
    return asker, sum(o.ok for o in outcomes)


@task(name="prepare-batch-job", cache_policy=NO_CACHE)
def prepare_batch_job(store_root: str, stage: str, ids: list[int], refs: dict[str, str], llm: LLMConfig,
                      augment: AugmentConfig, jobs: list[str]) -> str | None:
    """The folder of the job holding the stage's pending requests, None when nothing is pending."""
    asker, answered = collect_pending(store_root, stage, ids, refs, llm, augment, jobs)
    get_run_logger().info("%s: %d of %d items answered, %d requests pending", stage, answered, len(ids),
                          len(asker.pending))
    if not asker.pending:
        return None
    base_url, _ = resolve_endpoint(llm)
    return str(batch_job(store_root, stage, pending_lines(asker.pending), base_url).folder)


@task(name="submit-batch-job", cache_policy=NO_CACHE)
def submit_batch_job(folder: str, llm: LLMConfig, augment: AugmentConfig) -> str:
    """The job's batch id: the recorded one, one found for the job's uploaded file, or a new batch."""
    job, logger = BatchJob(folder), get_run_logger()
    record = job.record()
    if record.get("batch_id"):
        logger.info("batch job %s: resuming batch %s", job.key, record["batch_id"])
        return str(record["batch_id"])
    api = BatchAPI(llm)
    try:
        if record.get("input_file_id"):
            found = api.find(record["input_file_id"], job.key)
            if found:
                job.update(batch_id=found)
                return found
        file_id = api.upload(job.requests_path)
        job.update(input_file_id=file_id)
        batch_id = api.create(file_id, job.key, augment.batch_window)
        job.update(batch_id=batch_id, submitted_at=time.time())
    finally:
        api.close()
    logger.info("batch job %s: %d requests submitted as batch %s", job.key, record.get("requests", 0), batch_id)
    return batch_id


def _ledger_row(answer: BatchAnswer, llm: LLMConfig, stage: str, job: str, flow_run_id: str) -> dict[str, Any]:
    ok = answer.text is not None
    cost = load_price_table(llm.price_table).cost(llm.model, answer.prompt_tokens, answer.completion_tokens,
                                                  batch=True) if ok else 0.0
    return {"timestamp": time.time(), "flow_run_id": flow_run_id, "stage": stage, "batch": f"api-{job[:8]}",
            "model": llm.model, "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "cached": False, "latency_s": 0.0, "attempt": 1, "retries": 0,
            "outcome": "ok" if ok else "batch_error", "cost_usd": cost, "mode": "batch", "error": answer.error}


@task(name="wait-batch-job", cache_policy=NO_CACHE)
def wait_batch_job(store_root: str, folder: str, llm: LLMConfig, augment: AugmentConfig, ledger_root: str
                   ) -> dict[str, Any]:
    """Poll the job's batch (first after `batch_poll_s`, doubling up to `batch_poll_max_s`) until it ends; then its
    results into the job folder, the response cache and the ledger. Returns the job record. Raises BatchAPIError
    for a batch that failed as a whole."""
    job, logger = BatchJob(folder), get_run_logger()
    record = job.record()
    if record.get("downloaded"):
        return record
    stage, batch_id = record["stage"], record["batch_id"]
    api, delay = BatchAPI(llm), augment.batch_poll_s
    try:
        while True:
            status = api.status(batch_id)
            record = job.update(status=status["status"], request_counts=status.get("request_counts"))
            if status["status"] in TERMINAL:
                break
            logger.info("batch %s is %s (%s); next check in %.0f s", batch_id, status["status"],
                        status.get("request_counts"), delay)
            time.sleep(delay)
            delay = min(delay * 2, augment.batch_poll_max_s)
        if status["status"] == "failed":
            errors = (status.get("errors") or {}).get("data") or []
            raise BatchAPIError(f"batch {batch_id} failed: " + "; ".join(
                f"{e.get('code')}: {e.get('message')} (line {e.get('line')})" for e in errors[:3]))
        texts = [api.content(status[name]) if status.get(name) else "" for name in ("output_file_id",
                                                                                   "error_file_id")]
    finally:
        api.close()
    job.save_results(*texts)
    results = read_results(texts[0]) + read_results(texts[1])
    run_id = str(flow_run.id or "no-flow-run")
    with ResponseCache(llm_cache_dir(store_root, llm)) as cache:
        for answer in results:
            if answer.text is not None:
                cache.put(answer.custom_id, {"text": answer.text, "prompt_tokens": answer.prompt_tokens,
                                             "completion_tokens": answer.completion_tokens, "model": llm.model})
    with LedgerWriter(ledger_root, run_id, f"{stage}-api-{job.key[:8]}") as ledger:
        for answer in results:
            ledger.append(_ledger_row(answer, llm, stage, job.key, run_id))
    answered = sum(a.text is not None for a in results)
    logger.info("batch %s %s: %d answers, %d errors", batch_id, status["status"], answered, len(results) - answered)
    return job.update(downloaded=True, answered=answered, errors=len(results) - answered)


def answered_jobs(jobs: list[str]) -> tuple[int, int]:
    """(answers, errors) over the downloaded results of `jobs`."""
    answers, errors = batch_results(jobs)
    return len(answers), len(errors)
