"""The `augment` flow (LLMRec Stage 1): candidates from the base model, then the LLM's u-i edges, user profiles
and item attributes, batch by batch, within a budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.base import base_flow
from flows.runners import abandon, describe, future_done, future_failure, runner_kind, with_runner
from recsys.config import AugmentRunConfig, default_store_dir
from storage.atomic import write_parquet
from storage.ledger import read_ledger, store_ledger_root
from tasks.augment import BatchFailed, augment_batch, batch_ref, collect_stage, plan_batches
from tasks.common import bind
from tasks.cost import Budget, publish_cost, run_ledger, spent_usd
from tasks.ratelimit import check_rate_limit

OUTPUT_FILES = {"edges": "augmented_edges.parquet", "profiles": "user_profiles.parquet",
                "attributes": "item_attributes.parquet"}
RUN_LEDGER_FILE = "ledger.parquet"  # this run's ledger rows, beside its outputs
ABANDONED = "abandoned"  # how a batch given up after batch_timeout_s is reported


class AugmentFailed(RuntimeError):
    """Items stayed unanswered, or the budget stopped the run; what succeeded has been written."""


def run_stage(root: str, stage: str, batches: list[list[int]], refs: dict[str, str], config: AugmentRunConfig,
              ledger_root: str, budget: Budget) -> tuple[list[str], dict[int, str], int]:
    """Submit the stage's batches, at most `max_batches_in_flight` at once and only while the budget allows.

    A batch with no result `batch_timeout_s` after its submission is abandoned and counted as failed.
    Returns the batch refs, the failed batches (number -> the task run's state message), and how many batches
    were not started.
    """
    task = bind(augment_batch, root)
    shared = {"dataset_ref": refs["dataset"], "split_ref": refs["split"], "candidates_ref": refs["candidates"],
              "llm": config.llm, "augment": config.augment}
    pending = list(enumerate(batches))
    running: dict[int, Any] = {}
    submitted: dict[int, float] = {}
    timeout = config.augment.batch_timeout_s
    finished: list[str] = []
    failed: dict[int, str] = {}
    denied_at = -1  # how many batches had finished when the budget last said no: it can only change after more
    while pending or running:
        while pending and len(running) < config.augment.max_batches_in_flight:
            if denied_at == len(finished):
                break
            if not budget.allows(finished, len(running), stage):
                denied_at = len(finished)
                break
            i, ids = pending.pop(0)
            running[i] = task.submit(root, stage, i, ids, ledger_root=ledger_root, **shared)
            submitted[i] = time.monotonic()
        if not running:
            break  # the budget stopped scheduling
        for i, fut in list(running.items()):
            if future_done(fut):
                del running[i]
                finished.append(str(i))
                if (why := future_failure(fut)) is not None:
                    failed[i] = why
            elif timeout is not None and time.monotonic() - submitted[i] > timeout:
                abandon(fut)
                del running[i]
                finished.append(str(i))
                failed[i] = f"{ABANDONED}: no result within batch_timeout_s={timeout:g} s"
        time.sleep(0.05)
    batch_refs = [str(batch_ref({"stage": stage, "ids": ids, **shared})) for _, ids in enumerate(batches)]
    return batch_refs, dict(sorted(failed.items())), len(pending)


def _check_runner(config: AugmentRunConfig, logger: Any) -> None:
    """Warn when the config asks for a runner this flow run does not have (it was called without
    `run_augment` / `flows.runners.with_runner`)."""
    ctx = FlowRunContext.get()
    if ctx is None or runner_kind(ctx.task_runner) == config.runner.kind:
        return
    logger.warning("config.runner asks for the %s runner but this flow run uses %s: call flows.augment.run_augment "
                   "(or flows.runners.with_runner) to run the batches there", config.runner.kind,
                   describe(ctx.task_runner))


@flow(name="augment", task_runner=ThreadPoolTaskRunner(max_workers=8))
def augment_flow(config: AugmentRunConfig | None = None, store_root: str | None = None,
                 out_dir: str | None = None) -> dict[str, Any]:
    """Base model -> candidates -> LLM augmentation of edges, profiles and attributes (paper §3.1, Figure 1).

    Writes augmented_edges / user_profiles / item_attributes Parquet (and augment_failures.parquet) to `out_dir`;
    every HTTP call is a row in the store's cost ledger (`<store>/ledger`, shared by all runs), and this run's
    rows are also written to `<out_dir>/ledger.parquet`. The result's "batches" maps each stage to its batch refs:
    together they are that stage's artifact for later stages. Batches run on this flow's task runner: use
    `run_augment` to honour `config.runner`.
    """
    config = config or AugmentRunConfig()
    logger = get_run_logger()
    _check_runner(config, logger)
    check_rate_limit(config.llm.prefect_rate_limit)  # before any work: a missing limit must not start the run
    root = str(store_root or default_store_dir())
    refs = base_flow(config=config.base(), store_root=root)["refs"]
    ledger_root = str(store_ledger_root(root))
    run_id = str(flow_run.id)
    budget = Budget(config.augment.max_cost_usd, ledger_root, run_id)

    outputs: dict[str, pd.DataFrame] = {}
    failures: list[pd.DataFrame] = []
    stage_batches: dict[str, list[str]] = {}
    problems: list[str] = []
    for stage in config.augment.stages:
        batches = bind(plan_batches, root)(root, stage, refs["dataset"], refs["split"], refs["candidates"],
                                                config.augment)
        batch_refs, failed, not_started = run_stage(root, stage, batches, refs, config, ledger_root, budget)
        stage_batches[stage] = batch_refs
        rows, fails = collect_stage(root, stage, batch_refs)
        outputs[stage], failures = rows, [*failures, fails]
        logger.info("%s: %d answered, %d failed, %d of %d batches failed, %d not started",
                    stage, len(rows), len(fails), len(failed), len(batches), not_started)
        # A batch that crashed or was abandoned (rather than record failed items): name it and why.
        crashed = {i: m for i, m in failed.items() if BatchFailed.__name__ not in m}
        if len(fails):
            problems.append(f"{stage}: {len(fails)} items failed in batches {sorted(set(failed) - set(crashed))}")
        problems += [f"{stage} batch {i} {m if m.startswith(ABANDONED) else 'crashed: ' + m}"
                     for i, m in crashed.items()]
        if not_started:
            problems.append(f"{stage}: budget ${budget.max_cost_usd} reached after spending ${budget.spent():.6f}; "
                            f"{not_started} of {len(batches)} batches not started")
            break

    all_failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
    rows = run_ledger(ledger_root, run_id)
    fail_counts = {s: int((all_failures["stage"] == s).sum()) for s in outputs} if len(all_failures) else {}
    publish_cost(rows, fail_counts, config.augment.max_cost_usd, spent_usd(read_ledger(ledger_root)), ledger_root)
    if out_dir:
        for stage, frame in outputs.items():
            write_parquet(Path(out_dir) / OUTPUT_FILES[stage], frame)
        write_parquet(Path(out_dir) / "augment_failures.parquet", all_failures)
        write_parquet(Path(out_dir) / RUN_LEDGER_FILE, rows)
    result = {"refs": refs, "rows": {s: len(f) for s, f in outputs.items()}, "failed": len(all_failures),
              "cost_usd": spent_usd(rows), "ledger": ledger_root, "batches": stage_batches}
    if problems:
        raise AugmentFailed("; ".join(problems) + f". Spent ${spent_usd(rows):.6f} in this run. Re-run to retry.")
    return result


def run_augment(config: AugmentRunConfig | None = None, store_root: str | None = None,
                out_dir: str | None = None) -> dict[str, Any]:
    """`augment_flow` with its batches on the task runner `config.runner` names (threads or Dask)."""
    config = config or AugmentRunConfig()
    return with_runner(augment_flow, config.runner)(config=config, store_root=store_root, out_dir=out_dir)
