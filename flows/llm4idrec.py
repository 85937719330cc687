"""The `llm4idrec` flow (LLM4IDRec, arXiv 2411.02041): load -> split -> fine-tuning samples -> fine-tune ->
generation and parsing -> augmented split (set-wise merge, optional base-rank filter) -> per seed each downstream
model (MF-BPR, LightGCN) on the original and on the augmented training data -> the report.

Two backends (`config.llm4idrec.backend`): "local" fine-tunes LoRA in-process and generates in-process; "hosted"
runs a fine-tuning job at an OpenAI-compatible endpoint (`config.endpoint`) and generates with the fine-tuned model
through chat completions, in batches of users within the run's budget, every call and the job in the cost ledger.

Every stage is a cached task on its content key. Outputs in `out_dir`: metrics.parquet, loss.parquet (local: per
step), adapter/ (local: peft's adapter folder, for PeftModel.from_pretrained or vLLM), generation.json (parse and
drop counts, valid-item shares beside random and most-popular picks), ledger.parquet and augment_failures.parquet
(hosted), config.json and report.md last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.augment import run_batches, stage_problems
from flows.train import group_section
from recsys.augment.runner import failures_frame
from recsys.config import EndpointConfig, LLM4IDRecConfig, LLM4IDRecRunConfig, LLMConfig, ModelConfig, default_store_dir
from recsys.costs import totals
from recsys.eval.report import metrics_frame, metrics_rows, report_markdown
from recsys.eval.verdict import verdict_sentence
from recsys.llm.client import resolve_endpoint
from recsys.llm.pricing import require_budget
from recsys.llm4idrec.lora import adapter_config
from storage.atomic import write_json, write_parquet, write_safetensors, write_text
from storage.ledger import read_ledger, store_ledger_root
from storage.store import ArtifactStore
from tasks.augment import close_run
from tasks.common import bind
from tasks.cost import Budget
from tasks.data import load_data, split_data
from tasks.llm4idrec import (
    FINETUNE_STAGE,
    GENERATE_STAGE,
    answers_artifact,
    augmented_split,
    base_model_files,
    collect_generation,
    finetune_hosted,
    finetune_local,
    generate_batch,
    generate_items,
    prepare_samples,
)
from tasks.train import evaluate_model, train_model

AUGMENTED = "+llm4idrec"
ADAPTER_DIR = "adapter"  # local backend: peft's adapter folder in out_dir (PeftModel.from_pretrained, vLLM)


class LLM4IDRecFailed(RuntimeError):
    """Hosted generation left users unanswered, or the budget stopped it; what succeeded has been written."""


def downstream(config: LLM4IDRecRunConfig, root: str, splits: dict[str, str]) -> tuple[list[dict], dict]:
    """Per seed and downstream model: train and evaluate on each split ("" original, AUGMENTED). Returns the
    metric rows (variant "<model><suffix>") and {variant: {seed: {"evaluate": ref}}} for the user groups."""
    store, rows, trained = ArtifactStore(root), [], {}
    for seed in config.seeds:
        for name in config.downstream:
            model = config.model.model_copy(update={"name": name})
            train = config.train.model_copy(update={"seed": seed})
            for suffix, split_ref in splits.items():
                t_ref = bind(train_model, root)(root, split_ref, model, train, config.eval)
                e_ref = bind(evaluate_model, root)(root, split_ref, t_ref, model, config.eval, train.device)
                rows += metrics_rows(f"{name}{suffix}", seed, store.read_json(e_ref, "metrics"))
                trained.setdefault(f"{name}{suffix}", {})[seed] = {"evaluate": e_ref}
    return rows, trained


def generation_llm(endpoint: EndpointConfig, model: str, cfg: LLM4IDRecConfig) -> LLMConfig:
    """The chat settings of hosted generation: the endpoint, the fine-tuned `model`, the paper's sampling
    (temperature, top-p, new tokens of `cfg`) and no response_format (the answer is a bare ID list)."""
    return LLMConfig(**endpoint.model_dump(), model=model, temperature=cfg.temperature, top_p=cfg.top_p,
                     max_tokens=cfg.max_new_tokens, structured_outputs="none")


def hosted_generation(config: LLM4IDRecRunConfig, root: str, split: str, data: str, budget: Budget,
                      out_dir: str | None) -> tuple[str, str]:
    """The hosted job, then the fine-tuned model's answers in batches of users within `budget`; (job ref,
    generation ref). Raises LLM4IDRecFailed (after publishing the cost) when users stayed unanswered."""
    cfg, store = config.llm4idrec, ArtifactStore(root)
    left = None if budget.max_cost_usd is None else budget.max_cost_usd - budget.spent()
    job = bind(finetune_hosted, root)(root, data, cfg, config.endpoint, resolve_endpoint(config.endpoint)[0],
                                      budget.ledger_root, left)
    llm = generation_llm(config.endpoint, store.read_json(job, "job")["fine_tuned_model"], cfg)
    users = sorted(int(u) for u in store.read_table(data, "records")["user_id"].unique())
    batches = [users[i:i + cfg.users_per_batch] for i in range(0, len(users), cfg.users_per_batch)]
    task, n = bind(generate_batch, root), len(batches)
    failed, not_started = run_batches(
        lambda i: task.submit(root, i, batches[i], split, cfg, llm, budget.ledger_root, n_batches=n),
        n, cfg.max_batches_in_flight, cfg.batch_timeout_s,
        lambda finished, running: budget.allows(GENERATE_STAGE, finished, running))
    refs = [str(answers_artifact({"ids": ids, "split_ref": split, "llm": llm, "config": cfg})) for ids in batches]
    fails = [store.read_table(r, "failures") for r in refs if store.exists(r)]
    failures = pd.concat(fails, ignore_index=True) if fails else failures_frame([], GENERATE_STAGE)
    problems = stage_problems(GENERATE_STAGE, failed, failures, not_started, n, budget)
    if problems:
        spent = close_run(budget.ledger_root, budget.flow_run_id, failures, budget.max_cost_usd, out_dir)
        raise LLM4IDRecFailed("; ".join(problems) + f". Spent ${spent:.6f} in this run. Re-run to retry.")
    return job, bind(collect_generation, root)(root, split, refs, cfg)


def hosted_costs(store: ArtifactStore, job_ref: str, ledger_root: str) -> dict[str, dict]:
    """recsys/costs.py `totals` of the hosted stages over the ledger, all runs: this job's row (its id is the row's
    `batch`) and every generation call to its fine-tuned model. What producing this augmentation cost, also when
    this run found it cached."""
    job = store.read_json(job_ref, "job")
    rows = read_ledger(ledger_root)
    if not len(rows):
        return {s: totals(rows) for s in (FINETUNE_STAGE, GENERATE_STAGE)}
    return {FINETUNE_STAGE: totals(rows[(rows["stage"] == FINETUNE_STAGE) & (rows["batch"] == job["job_id"])]),
            GENERATE_STAGE: totals(rows[(rows["stage"] == GENERATE_STAGE)
                                        & (rows["model"] == job["fine_tuned_model"])])}


def fine_tuning_lines(store: ArtifactStore, refs: dict[str, str], costs: dict[str, dict], ledger_root: str
                      ) -> list[str]:
    """What the fine-tuning did: the local loss curve and speed, or the hosted job, its tokens and the hosted
    stages' cost (`hosted_costs`)."""
    if "lora" in refs:
        loss = store.read_table(refs["lora"], "loss")
        n = max(1, len(loss) // 10)
        return [f"Fine-tuning (local LoRA): {len(loss)} steps, loss first 10 % {loss['loss'][:n].mean():.4f}, last "
                f"10 % {loss['loss'][-n:].mean():.4f}, {loss['seconds'].median():.2f} s per step (median).", ""]
    job = store.read_json(refs["job"], "job")
    usd = {s: f"${t['cost_usd']:.4f}" + (" (some calls unpriced)" if t["unpriced"] else "") for s, t in costs.items()}
    return [f"Fine-tuning (hosted): job {job['job_id']} on {job['base_model']} -> {job['fine_tuned_model']}, "
            f"{job['trained_tokens']} trained tokens, {job['hyperparameters']}; cost {usd[FINETUNE_STAGE]}. "
            f"Generation through the endpoint: {costs[GENERATE_STAGE]['calls']} calls, "
            f"{costs[GENERATE_STAGE]['cache_hits']} cache hits, cost {usd[GENERATE_STAGE]} (ledger `{ledger_root}`, "
            "all runs).", ""]


def report(frame: pd.DataFrame, config: LLM4IDRecRunConfig, summary: dict, merge: dict, fine_tuning: list[str],
           groups: dict[str, list[str]], cost_usd: float | None) -> str:
    """One section per downstream model (original as the baseline, paired t-test over seeds, user groups), after
    the fine-tuning and generation numbers."""
    extra = [*fine_tuning, f"Generation: {summary}", "", f"Merge: {merge}", ""]
    parts = []
    for i, m in enumerate(config.downstream):
        part = frame[frame["variant"].str.startswith(m)]
        verdict = verdict_sentence(part, m, m + AUGMENTED, what="LLM4IDRec augmentation", cost_usd=cost_usd)
        parts.append(report_markdown(part, baseline=m, title=f"LLM4IDRec on {config.data.dataset}: {m}",
                                     extra=[*(extra if i == 0 else []), *groups[m]], lead=[f"**{verdict}**"]))
    return "\n\n".join(parts)


@flow(name="llm4idrec", task_runner=ThreadPoolTaskRunner(max_workers=8))
def llm4idrec_flow(config: LLM4IDRecRunConfig | None = None, store_root: str | None = None,
                   out_dir: str | None = None, max_cost_usd: float | None = None,
                   allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """LLM4IDRec end to end (module docstring). `max_cost_usd`: the run's budget in USD for the hosted backend
    (the job's estimated cost is checked before it is created; generation batches start only within it), a
    parameter of its own as for `augment`; a priced base model without one refuses to start (UnboundedSpend)
    unless `allow_unbounded_spend`. The local backend spends nothing."""
    config = config or LLM4IDRecRunConfig()
    cfg = config.llm4idrec
    if cfg.backend == "hosted":
        require_budget(cfg.base_model, max_cost_usd, allow_unbounded_spend, config.endpoint.price_table)
    root = str(store_root or default_store_dir())
    store = ArtifactStore(root)
    dataset = bind(load_data, root)(root, config.data)
    split = bind(split_data, root)(root, dataset, config.split)
    data = bind(prepare_samples, root)(root, split, cfg)
    refs = {"dataset": dataset, "split": split, "samples": data}
    budget = Budget(max_cost_usd, str(store_ledger_root(root)), str(flow_run.id))
    if cfg.backend == "hosted":
        refs["job"], refs["generate"] = hosted_generation(config, root, split, data, budget, out_dir)
    else:
        refs["lora"] = bind(finetune_local, root)(root, data, cfg, base_model_files(cfg))
        refs["generate"] = bind(generate_items, root)(root, split, data, refs["lora"], cfg)
    base_ref, base_model = None, None
    if cfg.max_base_rank is not None:
        base_model = ModelConfig(**config.model.model_dump())
        base_ref = bind(train_model, root)(root, split, base_model, config.train, config.eval)
    refs["augmented_split"] = bind(augmented_split, root)(root, split, refs["generate"], cfg.max_base_rank, base_ref,
                                                          base_model)
    rows, trained = downstream(config, root, {"": split, AUGMENTED: refs["augmented_split"]})
    frame = metrics_frame(rows)
    groups = {m: group_section(store, split, {v: s for v, s in trained.items() if v.startswith(m)}, m)
              for m in config.downstream}
    summary, merge = store.read_json(refs["generate"], "summary"), store.read_json(refs["augmented_split"], "merge")
    spent, costs, cost_usd = None, {}, None
    if cfg.backend == "hosted":
        spent = close_run(budget.ledger_root, budget.flow_run_id, pd.DataFrame(), max_cost_usd, out_dir)
        costs = hosted_costs(store, refs["job"], budget.ledger_root)
        cost_usd = sum(t["cost_usd"] for t in costs.values())
    text = report(frame, config, summary, merge, fine_tuning_lines(store, refs, costs, budget.ledger_root), groups,
                  cost_usd)
    if out_dir:
        out = Path(out_dir).expanduser()
        write_parquet(out / "metrics.parquet", frame)
        if "lora" in refs:
            write_parquet(out / "loss.parquet", store.read_table(refs["lora"], "loss"))
            write_safetensors(out / ADAPTER_DIR / "adapter_model.safetensors", store.read_tensors(refs["lora"],
                                                                                                 "adapter"))
            write_json(out / ADAPTER_DIR / "adapter_config.json", adapter_config(cfg, cfg.base_model))
        write_json(out / "generation.json", {"summary": summary, "merge": merge})
        write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": refs})
        write_text(out / "report.md", text)
    get_run_logger().info("llm4idrec: %d metric rows; merge %s", len(frame), merge)
    return {"refs": refs, "metrics": frame, "report": text, "summary": summary, "merge": merge,
            "store_root": root, "cost_usd": spent}
