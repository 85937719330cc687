"""The `augment` flow (LLMRec Stage 1): candidates from the base model, then the LLM's u-i edges, user profiles
and item attributes, batch by batch, within a budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.base import base_flow
from recsys.config import AugmentRunConfig, default_store_dir
from storage.atomic import write_parquet
from storage.ledger import read_ledger
from tasks.augment import augment_batch, batch_ref, collect_stage, plan_batches
from tasks.common import bind
from tasks.cost import Budget, publish_cost, run_ledger, spent_usd

OUTPUT_FILES = {"edges": "augmented_edges.parquet", "profiles": "user_profiles.parquet",
                "attributes": "item_attributes.parquet"}


class AugmentFailed(RuntimeError):
    """Items stayed unanswered, or the budget stopped the run; what succeeded has been written."""


def run_stage(root: str, stage: str, batches: list[list[int]], refs: dict[str, str], config: AugmentRunConfig,
              ledger_root: str, budget: Budget) -> tuple[list[str], list[int], int]:
    """Submit the stage's batches, at most `max_batches_in_flight` at once and only while the budget allows.

    Returns the batch refs, the numbers of the batches that failed, and how many were not started.
    """
    task = bind(augment_batch, root)
    shared = {"dataset_ref": refs["dataset"], "split_ref": refs["split"], "candidates_ref": refs["candidates"],
              "llm": config.llm, "augment": config.augment}
    pending = list(enumerate(batches))
    running: dict[int, Any] = {}
    finished: list[str] = []
    failed: list[int] = []
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
        if not running:
            break  # the budget stopped scheduling
        for i, fut in list(running.items()):
            if fut.state.is_final():
                del running[i]
                finished.append(str(i))
                if not fut.state.is_completed():
                    failed.append(i)
        time.sleep(0.05)
    batch_refs = [str(batch_ref({"stage": stage, "ids": ids, **shared})) for _, ids in enumerate(batches)]
    return batch_refs, sorted(failed), len(pending)


@flow(name="augment", task_runner=ThreadPoolTaskRunner(max_workers=8))
def augment_flow(config: AugmentRunConfig | None = None, store_root: str | None = None,
                 out_dir: str | None = None) -> dict[str, Any]:
    """Base model -> candidates -> LLM augmentation of edges, profiles and attributes (paper §3.1, Figure 1).

    Writes augmented_edges / user_profiles / item_attributes Parquet (and augment_failures.parquet) to `out_dir`;
    every HTTP call is a row in the cost ledger under `<out_dir>/ledger` (else `<store>/ledger`). The result's
    "batches" maps each stage to its batch refs: together they are that stage's artifact for later stages.
    """
    config = config or AugmentRunConfig()
    logger = get_run_logger()
    root = str(store_root or default_store_dir())
    refs = base_flow(config=config.base(), store_root=root)["refs"]
    ledger_root = str(Path(out_dir) / "ledger" if out_dir else Path(root) / "ledger")
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
        if len(fails):
            problems.append(f"{stage}: {len(fails)} items failed in batches {failed}")
        if not_started:
            problems.append(f"{stage}: budget ${budget.max_cost_usd} reached after spending ${budget.spent():.6f}; "
                            f"{not_started} of {len(batches)} batches not started")
            break

    all_failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
    rows = run_ledger(ledger_root, run_id)
    fail_counts = {s: int((all_failures["stage"] == s).sum()) for s in outputs} if len(all_failures) else {}
    publish_cost(rows, fail_counts, config.augment.max_cost_usd, spent_usd(read_ledger(ledger_root)))
    if out_dir:
        for stage, frame in outputs.items():
            write_parquet(Path(out_dir) / OUTPUT_FILES[stage], frame)
        write_parquet(Path(out_dir) / "augment_failures.parquet", all_failures)
    result = {"refs": refs, "rows": {s: len(f) for s, f in outputs.items()}, "failed": len(all_failures),
              "cost_usd": spent_usd(rows), "ledger": ledger_root, "batches": stage_batches}
    if problems:
        raise AugmentFailed("; ".join(problems) + f". Spent ${spent_usd(rows):.6f} in this run. Re-run to retry.")
    return result
