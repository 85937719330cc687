"""The `augment` flow (LLMRec Stage 1, paper §3.1 and Figure 1): the base model's candidates, then per stage (u-i
edges, user profiles, item attributes) plan the batches, run them within the budget and collect what they wrote;
last, what the run cost. In batch mode, each stage's questions first go to OpenAI's Batch API (tasks/batch_api.py)
and the batches then validate the answers. The flow `estimate` builds every prompt and prices it, sending none."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectWrappedFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.base import base_flow
from flows.runners import runner_kind, with_runner
from flows.subflows import call_subflow
from recsys.augment.positions import position_table
from recsys.config import AugmentRunConfig, default_store_dir
from recsys.llm.batch import BatchAPIError
from recsys.llm.pricing import require_budget
from storage.ledger import store_ledger_root
from storage.store import ArtifactStore
from tasks.augment import (
    BatchFailed,
    augment_batch,
    batch_ref,
    close_run,
    collect_stage,
    plan_batches,
    require_item_text,
)
from tasks.batch_api import prepare_batch_job, submit_batch_job, wait_batch_job
from tasks.common import bind
from tasks.cost import Budget
from tasks.data import load_data
from tasks.estimate import estimate_stage
from tasks.progress import PhaseProgress, duration
from tasks.ratelimit import check_rate_limit

ITEMS_FAILED = "items failed"  # a batch that wrote its answered items and recorded the others as failed


class AugmentFailed(RuntimeError):
    """Items stayed unanswered, or the budget stopped the run; what succeeded has been written."""


def _check_runner(config: AugmentRunConfig, logger: Any) -> None:
    """Warn when the config asks for a runner this flow run does not have (it was called without
    `run_augment` / `flows.runners.with_runner`)."""
    ctx = FlowRunContext.get()
    if ctx is None or runner_kind(ctx.task_runner) == config.runner.kind:
        return
    logger.warning("config.runner asks for the %s runner but this flow run uses %s: call flows.augment.run_augment "
                   "(or flows.runners.with_runner) to run the batches there", config.runner.kind,
                   type(ctx.task_runner).__name__)


def run_batches(start: Callable[[int], PrefectWrappedFuture[str, Any]], n: int, in_flight: int,
                timeout_s: float | None, may_start: Callable[[list[int], int], bool],
                on_finished: Callable[[int, str | None], None] | None = None) -> tuple[dict[int, str], int]:
    """Start batches 0..n-1 on the task runner, at most `in_flight` at once and each only while `may_start(finished
    batches, number running)` (the budget) agrees; `on_finished(batch, why it failed or None)` as each ends.
    Returns why batches failed (number -> ITEMS_FAILED, "crashed: <error>" or "abandoned: ...", in batch order) and
    how many were never started.

    A batch with no result `timeout_s` after it was started is abandoned: its future is cancelled (a Dask task is
    released; a thread already running finishes on its own, and a re-run reuses what it saved).
    """
    waiting, running, finished, failed = list(range(n)), {}, [], {}
    while True:
        while waiting and len(running) < in_flight and may_start(finished, len(running)):
            i = waiting.pop(0)
            running[start(i)] = (i, time.monotonic())
        if not running:
            return dict(sorted(failed.items())), len(waiting)
        first = min(t for _, t in running.values())
        try:  # the first batch to finish, or a TimeoutError when the oldest one is due
            done = [next(as_completed(list(running), None if timeout_s is None else
                                      max(0.0, first + timeout_s - time.monotonic())))]
        except TimeoutError:
            done = [f for f, (_, t) in running.items() if time.monotonic() - t >= timeout_s]
            for fut in done:
                fut.wrapped_future.cancel()
                failed[running[fut][0]] = f"abandoned: no result within batch_timeout_s={timeout_s:g} s"
        for fut in done:
            i, _ = running.pop(fut)
            finished.append(i)
            if i not in failed:
                try:
                    fut.result()
                except BatchFailed:
                    failed[i] = ITEMS_FAILED
                except Exception as exc:  # the batch (or the worker running it) raised before writing anything
                    failed[i] = f"crashed: {type(exc).__name__}: {exc}"
            if on_finished is not None:
                on_finished(i, failed.get(i))


def run_batch_api(root: str, stage: str, batches: list[list[int]], refs: dict[str, str], config: AugmentRunConfig,
                  ledger_root: str) -> list[str]:
    """The stage's questions through the Batch API: rounds of prepare -> submit -> wait (tasks/batch_api.py), one
    round (batch_followup "normal") or until nothing is pending or `batch_rounds` batches ran. Returns the job
    folders whose results the stage's batches then read."""
    augment, jobs = config.augment, []
    ids = [i for batch in batches for i in batch]
    for _ in range(1 if augment.batch_followup == "normal" else augment.batch_rounds):
        folder = prepare_batch_job(root, stage, ids, refs, config.llm, augment, jobs)
        if folder is None:
            break
        submit_batch_job(folder, config.llm, augment)
        wait_batch_job(root, folder, config.llm, augment, ledger_root)
        jobs.append(folder)
    return jobs


def run_stage(root: str, stage: str, batches: list[list[int]], refs: dict[str, str], config: AugmentRunConfig,
              budget: Budget, batch_jobs: list[str] | None = None) -> tuple[list[str], dict[int, str], int]:
    """The stage's batches on the flow's task runner (`run_batches`), with their progress (a log line per batch,
    "batch 3 of 19", a terminal bar and a Prefect progress artifact); returns their refs, why batches failed and
    how many were not started. `batch_jobs`: the Batch API jobs whose results they read (batch mode)."""
    task = bind(augment_batch, root)
    shared = {"dataset_ref": refs["dataset"], "split_ref": refs["split"], "candidates_ref": refs["candidates"],
              "llm": config.llm, "augment": config.augment}
    logger = get_run_logger()
    n, done, failed_so_far = len(batches), [], []
    with PhaseProgress(f"{stage}-batches", f"{stage}: LLM batches", n, "batches") as progress:

        def finished(i: int, why: str | None) -> None:
            done.append(i)
            if why is not None:
                failed_so_far.append(i)
            progress.update(len(done), f"{len(failed_so_far)} failed" + (f" (batches {failed_so_far})"
                                                                          if failed_so_far else ""))
            eta = progress.eta()
            logger.info("%s batch %d of %d %s; %d of %d batches done, %d failed%s", stage, i, n,
                        "finished" if why is None else f"failed ({why})", len(done), n, len(failed_so_far),
                        f", ETA {duration(eta)}" if eta is not None and len(done) < n else "")

        failed, not_started = run_batches(
            lambda i: task.submit(root, stage, i, batches[i], ledger_root=budget.ledger_root, n_batches=n,
                                  batch_jobs=batch_jobs, **shared),
            n, config.augment.max_batches_in_flight, config.augment.batch_timeout_s,
            lambda finished_batches, running: budget.allows(stage, finished_batches, running), finished)
        if not_started:
            progress.close(f"{len(failed_so_far)} failed; budget reached, {not_started} not started",
                           complete=False)
    return [str(batch_ref({"stage": stage, "ids": ids, **shared})) for ids in batches], failed, not_started


def stage_problems(stage: str, failed: dict[int, str], failures: pd.DataFrame, not_started: int, n_batches: int,
                   budget: Budget) -> list[str]:
    """What went wrong in a stage, for `AugmentFailed`: failed items (`failures`, with the most common reason),
    crashed or abandoned batches, the budget."""
    problems = [f"{stage}: {len(failures)} items failed in batches "
                f"{[i for i, why in failed.items() if why == ITEMS_FAILED]} ({most_common_reason(failures)})"
                ] if len(failures) else []
    problems += [f"{stage} batch {i} {why}" for i, why in failed.items() if why != ITEMS_FAILED]
    if not_started:
        problems.append(f"{stage}: budget ${budget.max_cost_usd} reached after spending ${budget.spent():.6f}; "
                        f"{not_started} of {n_batches} batches not started")
    return problems


def most_common_reason(failures: pd.DataFrame, max_chars: int = 300) -> str:
    """`most often: <reason> (<n> of <total>)` over the failed items' `reason` column, cut to `max_chars`."""
    counts = failures["reason"].astype(str).value_counts()
    if counts.empty:
        return "no reason recorded"
    reason = counts.index[0] if len(counts.index[0]) <= max_chars else counts.index[0][:max_chars - 1] + "…"
    return f"most often: {reason} ({int(counts.iat[0])} of {len(failures)})"


@flow(name="augment", task_runner=ThreadPoolTaskRunner(max_workers=8))
def augment_flow(config: AugmentRunConfig | None = None, store_root: str | None = None, out_dir: str | None = None,
                 max_cost_usd: float | None = None, allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """Base model -> candidates -> LLM augmentation of edges, profiles and attributes (paper §3.1, Figure 1).

    Writes augmented_edges / user_profiles / item_attributes Parquet (and augment_failures.parquet) to `out_dir`;
    every HTTP call is a row in the store's cost ledger (`<store>/ledger`, shared by all runs), and this run's
    rows are also written to `<out_dir>/ledger.parquet`. The result's "batches" maps each stage to its batch refs:
    together they are that stage's artifact for later stages. Batches run on this flow's task runner: use
    `run_augment` to honour `config.runner`.

    `max_cost_usd` is the run's LLM budget in USD: no new batch starts once the spend so far plus the dearest
    batch seen would pass it. It is a parameter of its own, not part of `config`, so that a deployment's budget
    survives a run that overrides `config`. A run against a priced model with no budget refuses to start
    (UnboundedSpend, before any work) unless `allow_unbounded_spend`.
    """
    config = config or AugmentRunConfig()
    require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)
    logger = get_run_logger()
    _check_runner(config, logger)
    check_rate_limit(config.llm.prefect_rate_limit)  # before any work: a missing limit must not start the run
    root = str(store_root or default_store_dir())
    if config.augment.stages:  # before training and before any LLM call: items without text cannot be asked about
        require_item_text(ArtifactStore(root), bind(load_data, root)(root, config.data))
    refs = call_subflow(base_flow, config=config.base(), store_root=root)["refs"]  # the base model, candidates
    budget = Budget(max_cost_usd, str(store_ledger_root(root)), str(flow_run.id))
    batches, rows, failures, problems = {}, {}, [], []  # per stage: batch refs, rows written; failures; problems
    not_asked = 0
    for stage in config.augment.stages:
        ids, skipped = bind(plan_batches, root)(root, stage, refs["dataset"], refs["split"], refs["candidates"],
                                                config.augment)
        if len(skipped):
            logger.warning("%s: %d %s not asked (listed in augment_failures), e.g. %d: %s", stage, len(skipped),
                           "items" if stage == "attributes" else "users", skipped["key"].iat[0],
                           skipped["reason"].iat[0])
        jobs = None
        if config.augment.mode == "batch":
            try:
                jobs = run_batch_api(root, stage, ids, refs, config, budget.ledger_root)
            except BatchAPIError as exc:
                problems.append(f"{stage}: {exc}")
                continue
        batches[stage], failed, not_started = run_stage(root, stage, ids, refs, config, budget, jobs)
        rows[stage], fails = collect_stage(root, stage, batches[stage], out_dir)
        failures += [fails, skipped]
        not_asked += len(skipped)
        logger.info("%s: %d answered, %d failed, %d not asked, %d of %d batches failed, %d not started",
                    stage, rows[stage], len(fails), len(skipped), len(failed), len(ids), not_started)
        problems += stage_problems(stage, failed, fails, not_started, len(ids), budget)
        if not_started:
            break
    all_failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
    spent = close_run(budget.ledger_root, budget.flow_run_id, all_failures, budget.max_cost_usd, out_dir)
    positions = edge_positions(root, batches.get("edges", []), config.candidates.n_candidates)
    if positions is not None:
        logger.info("liked picks by base-model rank: %s", dict(zip(positions["rank"], positions["liked"],
                                                                    strict=True)))
    if problems:
        raise AugmentFailed("; ".join(problems) + f". Spent ${spent:.6f} in this run. Re-run to retry.")
    return {"refs": refs, "rows": rows, "failed": len(all_failures) - not_asked, "not_asked": not_asked,
            "cost_usd": spent, "ledger": budget.ledger_root, "batches": batches, "positions": positions}


def edge_positions(root: str, edge_refs: list[str], n_candidates: int) -> pd.DataFrame | None:
    """How often the liked / disliked edge picked each base-model rank (recsys/augment/positions.py), over the
    edges batches written; None when there are none."""
    store = ArtifactStore(root)
    frames = [store.read_table(r, "rows") for r in edge_refs if store.exists(r)]
    frames = [f for f in frames if len(f)]
    return position_table(pd.concat(frames, ignore_index=True), n_candidates) if frames else None


def run_augment(config: AugmentRunConfig | None = None, store_root: str | None = None, out_dir: str | None = None,
                max_cost_usd: float | None = None, allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """`augment_flow` (a subflow when called in a flow run) with its batches on the task runner `config.runner`
    names (threads or Dask)."""
    config = config or AugmentRunConfig()
    return call_subflow(with_runner(augment_flow, config.runner), config=config, store_root=store_root,
                        out_dir=out_dir, max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)


@flow(name="estimate", task_runner=ThreadPoolTaskRunner(max_workers=4))
def estimate_flow(config: AugmentRunConfig | None = None, store_root: str | None = None) -> list[dict[str, Any]]:
    """What `augment_flow` with `config` would cost, per stage (tasks/estimate.py), without any LLM request: the
    base model and its candidates (trained when not in the store), then every prompt built and counted."""
    config = config or AugmentRunConfig()
    root = str(store_root or default_store_dir())
    refs = call_subflow(base_flow, config=config.base(), store_root=root)["refs"]
    ledger_root = str(store_ledger_root(root))
    rows = []
    for stage in config.augment.stages:
        batches, _ = bind(plan_batches, root)(root, stage, refs["dataset"], refs["split"], refs["candidates"],
                                              config.augment)
        rows.append(estimate_stage(root, stage, [i for b in batches for i in b], refs, config.llm, config.augment,
                                   ledger_root))
    return rows
