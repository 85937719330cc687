"""The `llama4rec` flow: Llama4Rec's direct (top-k) recommendation (Luo et al., arXiv 2401.13870 [L4R]) on the
project's data, backbones, LLM client, batching, caching, budget and cost ledger.

load -> split (leave-one-out by default) -> item pairs -> the LLM's pairwise preferences (data augmentation,
§4.2) -> per seed: the backbone on D and on D' = D + the LLM's triplets, each one's top-k' lists and similar users,
the LLM's rankings of those lists with and without prompt augmentation (§4.3), the variants' evaluation with
adaptive aggregation (§4.4) -> the instruction data -> the report. Every stage is a cached task on its content
key; an LLM stage runs as batches (one task run per batch of users) within the budget, as the `augment` flow's.

Outputs in `out_dir`: metrics.parquet (model, variant, seed, split, group, metric, k, value), selection.parquet
(the alpha setting each variant chose on VALID), instructions.jsonl (chat-format fine-tuning data) with
instructions.parquet (its ids), augment_failures.parquet and ledger.parquet (this run's LLM failures and calls),
config.json and, written last, report.md.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.augment import run_batches, stage_problems
from flows.runners import with_runner
from recsys.augment.runner import failures_frame
from recsys.config import Llama4RecRunConfig, default_store_dir
from recsys.llama4rec.report import cost_rows, metrics_rows, report_markdown, selection_rows
from recsys.llama4rec.variants import rankings_needed
from recsys.llm.pricing import require_budget
from storage.atomic import write_json, write_parquet, write_text
from storage.ledger import read_ledger, store_ledger_root
from storage.store import ArtifactStore
from tasks.augment import close_run, require_item_text
from tasks.common import bind, read_split
from tasks.cost import Budget
from tasks.data import load_data, split_data
from tasks.llama4rec import (
    PARTS,
    backbone_lists,
    estimate_llm_stage,
    evaluate_rerank,
    export_instructions,
    llm_batch,
    llm_batch_ref,
    ranking_key,
    sample_item_pairs,
    train_augmented,
)
from tasks.ratelimit import check_rate_limit
from tasks.train import evaluate_model, train_model

INSTRUCTIONS_FILE = "instructions.jsonl"


class Llama4RecFailed(RuntimeError):
    """LLM items stayed unanswered, or the budget stopped the run; what succeeded has been written."""


@dataclass
class LLMStages:
    """Runs the flow's LLM batches on its task runner, numbered across the whole run (so that the ledger's batch
    tags and the budget's estimate tell them apart), and gathers what went wrong."""

    root: str
    config: Llama4RecRunConfig
    budget: Budget
    refs: dict[str, str]
    next_batch: int = 0
    problems: list[str] = field(default_factory=list)
    failures: list[pd.DataFrame] = field(default_factory=list)
    stopped: bool = False

    def run(self, stage: str, users: list[int], source_ref: str, *, prompt: str | None = None,
            split: str | None = None, label: str = "") -> list[str]:
        """The refs of the batches of `users` (sorted, `augment.users_per_batch` per batch) for one LLM stage;
        `label` says what is asked in the log and in problems."""
        size = self.config.augment.users_per_batch
        batches = [users[i:i + size] for i in range(0, len(users), size)]
        first, task = self.next_batch, bind(llm_batch, self.root)
        self.next_batch += len(batches)
        shared = {"dataset_ref": self.refs["dataset"], "split_ref": self.refs["split"], "source_ref": source_ref,
                  "llm": self.config.llm, "max_history": self.config.llama4rec.max_history, "prompt": prompt,
                  "split": split}
        failed, not_started = run_batches(
            lambda i: task.submit(self.root, stage, first + i, batches[i], ledger_root=self.budget.ledger_root,
                                  **shared),
            len(batches), self.config.augment.max_batches_in_flight, self.config.augment.batch_timeout_s,
            lambda finished, running: self.budget.allows(stage, [first + i for i in finished], running))
        refs = [str(llm_batch_ref({"stage": stage, "ids": ids, **shared})) for ids in batches]
        store = ArtifactStore(self.root)
        fails = [store.read_table(r, "failures") for r in refs if store.exists(r)]
        stage_failures = pd.concat(fails, ignore_index=True) if fails else failures_frame([], stage)
        n_failed = len(stage_failures)
        self.failures += fails
        what = f"{stage} ({label})" if label else stage
        self.problems += stage_problems(what, failed, stage_failures, not_started, len(batches), self.budget)
        self.stopped = self.stopped or not_started > 0
        get_run_logger().info("%s: %d users in %d batches, %d items failed, %d batches not started", what,
                              len(users), len(batches), n_failed, not_started)
        return refs


def _users(frame: pd.DataFrame) -> list[int]:
    return sorted(int(u) for u in frame["user_id"].unique())


def _seed_run(stages: LLMStages, seed: int, triplets: list[str]) -> dict[str, Any]:
    """One training seed: both backbones, their lists, the LLM's rankings and the evaluation (refs)."""
    root, config, refs = stages.root, stages.config, stages.refs
    k = config.candidates.n_candidates
    train = config.train.model_copy(update={"seed": seed})
    trained = {"base": bind(train_model, root)(root, refs["split"], config.model, train, config.eval),
               "augmented": bind(train_augmented, root)(root, refs["split"], triplets, config.model, train,
                                                        config.eval)}
    full_ranking = {b: bind(evaluate_model, root)(root, refs["split"], t, config.model, config.eval, train.device)
                    for b, t in trained.items()}
    lists = {b: bind(backbone_lists, root)(root, refs["split"], t, config.model, k, train.device)
             for b, t in trained.items()}
    split, _ = read_split(ArtifactStore(root), refs["split"])
    users = {"valid": _users(split.valid), "test": _users(split.test)}
    rankings: dict[str, list[str]] = {}
    for backbone, prompt in rankings_needed():
        for part in PARTS:
            if stages.stopped:
                return {"trained": trained, "lists": lists, "full_ranking": full_ranking}
            rankings[ranking_key(backbone, prompt, part)] = stages.run(
                "ranking", users[part], lists[backbone], prompt=prompt, split=part,
                label=f"seed {seed}, {backbone} backbone's {part} lists, {prompt} prompt")
    evaluation = bind(evaluate_rerank, root)(root, refs["split"], lists, rankings, config.llama4rec, k, seed)
    return {"trained": trained, "lists": lists, "full_ranking": full_ranking, "evaluate": evaluation}


def _instructions(config: Llama4RecRunConfig, root: str, refs: dict[str, str], first: dict[str, Any]) -> str:
    return bind(export_instructions, root)(
        root, refs["dataset"], refs["split"], first["trained"]["base"], first["lists"]["base"], config.model,
        config.candidates.n_candidates, config.llama4rec.max_history, config.llama4rec.pair_seed,
        config.train.device)


def write_instructions(store: ArtifactStore, ref: str, out: Path) -> int:
    """instructions.jsonl ({"messages": [...]} per line, OpenAI's chat fine-tuning format) and instructions.parquet
    (user_id, source, target_item_id, candidate_item_ids, similar_user_id) in `out`; returns the count."""
    table = store.read_table(ref, "instructions")
    lines = [json.dumps({"messages": json.loads(m)}, ensure_ascii=False) for m in table["messages"]]
    write_text(out / INSTRUCTIONS_FILE, "".join(line + "\n" for line in lines))
    write_parquet(out / "instructions.parquet", table.drop(columns=["messages"]))
    return len(table)


@flow(name="llama4rec", task_runner=ThreadPoolTaskRunner(max_workers=8))
def llama4rec_flow(config: Llama4RecRunConfig | None = None, store_root: str | None = None,
                   out_dir: str | None = None, max_cost_usd: float | None = None,
                   allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """Llama4Rec's direct recommendation ([L4R] §4, protocol §5.1), per seed in `config.seeds`; see the module
    docstring for the stages and the files written to `out_dir`. Raises `Llama4RecFailed` (after writing what
    succeeded) when LLM items stayed unanswered or the budget stopped the run. `max_cost_usd` is the run's LLM
    budget, outside `config` as for `augment` (flows/augment.py); a priced model without one refuses to start
    unless `allow_unbounded_spend`."""
    config = config or Llama4RecRunConfig()
    require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)
    logger = get_run_logger()
    check_rate_limit(config.llm.prefect_rate_limit)  # before any work: a missing limit must not start the run
    root = str(store_root or default_store_dir())
    dataset = bind(load_data, root)(root, config.data)
    # Before training and before any LLM call: a ranking prompt must show every item of a list by its text.
    require_item_text(ArtifactStore(root), dataset, every_item=True)
    refs = {"dataset": dataset, "split": bind(split_data, root)(root, dataset, config.split)}
    budget = Budget(max_cost_usd, str(store_ledger_root(root)), str(flow_run.id))
    stages = LLMStages(root, config, budget, refs)

    l4r = config.llama4rec
    pairs = bind(sample_item_pairs, root)(root, refs["split"], l4r.pairs_per_user, l4r.pair_seed)
    pair_users = _users(ArtifactStore(root).read_table(pairs, "pairs"))
    triplets = stages.run("pairwise", pair_users, pairs)
    seeds: dict[int, dict[str, Any]] = {}
    for seed in config.seeds:
        if stages.stopped:
            break
        seeds[seed] = _seed_run(stages, seed, triplets)
    instructions = _instructions(config, root, refs, seeds[config.seeds[0]]) if seeds else None

    failures = pd.concat(stages.failures, ignore_index=True) if stages.failures else failures_frame([], "")
    spent = close_run(budget.ledger_root, budget.flow_run_id, failures, budget.max_cost_usd, out_dir)
    result: dict[str, Any] = {"refs": {**refs, "pairs": pairs, "triplets": triplets, "seeds": seeds,
                                       "instructions": instructions},
                              "cost_usd": spent, "ledger": budget.ledger_root, "store_root": root}
    if not stages.stopped:
        result.update(report(config, root, result, out_dir))
    if stages.problems:
        raise Llama4RecFailed("; ".join(stages.problems) + f". Spent ${spent:.6f} in this run. Re-run to retry.")
    logger.info("finished: seeds %s, cost $%.6f", ", ".join(map(str, seeds)), spent)
    return result


def report(config: Llama4RecRunConfig, root: str, result: dict[str, Any], out_dir: str | None) -> dict[str, Any]:
    """The metrics, the alpha selections, the cost per stage and the report; written to `out_dir` (report.md
    last) and published as the Prefect artifact `llama4rec-report`."""
    store = ArtifactStore(root)
    seeds = result["refs"]["seeds"]
    evaluations = {seed: store.read_json(r["evaluate"], "metrics") for seed, r in seeds.items()}
    full = {seed: {b: store.read_json(ref, "metrics") for b, ref in r["full_ranking"].items()}
            for seed, r in seeds.items()}
    frame = pd.DataFrame([row for seed, doc in evaluations.items()
                          for row in metrics_rows(config.model.name, seed, doc)])
    selection = pd.DataFrame([row for seed, doc in evaluations.items()
                              for row in selection_rows(config.model.name, seed, doc)])
    costs = cost_rows(read_ledger(result["ledger"], flow_run_id=str(flow_run.id)))
    text = report_markdown(frame, selection, costs, evaluations, full, config)
    create_markdown_artifact(key="llama4rec-report", markdown=text, description="Llama4Rec run report")
    if out_dir:
        out = Path(out_dir).expanduser()
        write_parquet(out / "metrics.parquet", frame)
        write_parquet(out / "selection.parquet", selection)
        n = write_instructions(store, result["refs"]["instructions"], out)
        write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": result["refs"],
                                         "store": str(store.root), "instructions": n})
        write_text(out / "report.md", text)
    return {"metrics": frame, "selection": selection, "report": text}


@flow(name="llama4rec-estimate", task_runner=ThreadPoolTaskRunner(max_workers=4))
def llama4rec_estimate_flow(config: Llama4RecRunConfig | None = None,
                            store_root: str | None = None) -> list[dict[str, Any]]:
    """What `llama4rec_flow` with `config` would cost, per LLM stage, without any LLM request or API key
    (tasks/estimate.py): the pairwise prompts ([L4R] §4.2) exactly; the ranking prompts (§4.3) of the first seed's
    backbone trained on D (trained when not in the store) on its valid and test lists, standing in for every seed
    and for the backbone on D' too, whose lists exist only after the LLM's answers. A list the run meets twice is
    answered from the response cache, so the ranking rows are usually above what is sent. Rows: "pairwise", then
    "ranking, <prompt> prompt" per prompt form."""
    config = config or Llama4RecRunConfig()
    root = str(store_root or default_store_dir())
    ledger_root = str(store_ledger_root(root))
    dataset = bind(load_data, root)(root, config.data)
    require_item_text(ArtifactStore(root), dataset, every_item=True)
    refs = {"dataset": dataset, "split": bind(split_data, root)(root, dataset, config.split)}
    l4r = config.llama4rec
    shared = {"dataset_ref": refs["dataset"], "split_ref": refs["split"], "llm": config.llm,
              "max_history": l4r.max_history, "ledger_root": ledger_root}
    pairs = bind(sample_item_pairs, root)(root, refs["split"], l4r.pairs_per_user, l4r.pair_seed)
    pair_users = _users(ArtifactStore(root).read_table(pairs, "pairs"))
    rows = [estimate_llm_stage(root, "pairwise", {None: pair_users}, source_ref=pairs, **shared)]

    train = config.train.model_copy(update={"seed": config.seeds[0]})
    trained = bind(train_model, root)(root, refs["split"], config.model, train, config.eval)
    lists = bind(backbone_lists, root)(root, refs["split"], trained, config.model, config.candidates.n_candidates,
                                       train.device)
    split, _ = read_split(ArtifactStore(root), refs["split"])
    users: dict[str | None, list[int]] = {"valid": _users(split.valid), "test": _users(split.test)}
    backbones_per_prompt = Counter(prompt for _, prompt in rankings_needed())
    for prompt, backbones in backbones_per_prompt.items():
        rows.append(estimate_llm_stage(root, "ranking", users, source_ref=lists, prompt=prompt,
                                       copies=backbones * len(config.seeds), label=f"ranking, {prompt} prompt",
                                       **shared))
    return rows


def run_llama4rec(config: Llama4RecRunConfig | None = None, store_root: str | None = None,
                  out_dir: str | None = None, max_cost_usd: float | None = None,
                  allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """`llama4rec_flow` with its batches on the task runner `config.runner` names (threads or Dask)."""
    config = config or Llama4RecRunConfig()
    return with_runner(llama4rec_flow, config.runner)(config=config, store_root=store_root, out_dir=out_dir,
                                                      max_cost_usd=max_cost_usd,
                                                      allow_unbounded_spend=allow_unbounded_spend)
