"""The `llm4idrec` flow (LLM4IDRec, arXiv 2411.02041): load -> split -> fine-tuning samples -> local LoRA
fine-tune -> generation and parsing -> augmented split (set-wise merge, optional base-rank filter) -> per seed
each downstream model (MF-BPR, LightGCN) on the original and on the augmented training data -> the report.

Every stage is a cached task on its content key. Outputs in `out_dir`: metrics.parquet, loss.parquet (per step),
generation.json (parse and drop counts, valid-item shares beside random and most-popular picks), config.json and
report.md last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from recsys.config import LLM4IDRecRunConfig, ModelConfig, default_store_dir
from recsys.eval.report import metrics_frame, metrics_rows, report_markdown
from recsys.eval.verdict import verdict_sentence
from storage.atomic import write_json, write_parquet, write_text
from storage.store import ArtifactStore
from tasks.common import bind
from tasks.data import load_data, split_data
from tasks.llm4idrec import augmented_split, base_model_files, finetune_local, generate_items, prepare_samples
from tasks.train import evaluate_model, train_model

AUGMENTED = "+llm4idrec"


def downstream(config: LLM4IDRecRunConfig, root: str, splits: dict[str, str]) -> list[dict]:
    """Per seed and downstream model: train and evaluate on each split ("" original, AUGMENTED); metric rows with
    variant "<model><suffix>"."""
    store, rows = ArtifactStore(root), []
    for seed in config.seeds:
        for name in config.downstream:
            model = config.model.model_copy(update={"name": name})
            train = config.train.model_copy(update={"seed": seed})
            for suffix, split_ref in splits.items():
                t_ref = bind(train_model, root)(root, split_ref, model, train, config.eval)
                e_ref = bind(evaluate_model, root)(root, split_ref, t_ref, model, config.eval, train.device)
                rows += metrics_rows(f"{name}{suffix}", seed, store.read_json(e_ref, "metrics"))
    return rows


def report(frame: pd.DataFrame, config: LLM4IDRecRunConfig, summary: dict, merge: dict, loss: pd.DataFrame) -> str:
    """One section per downstream model (original as the baseline, paired t-test over seeds), after the
    generation and fine-tuning numbers."""
    n = max(1, len(loss) // 10)
    extra = [f"Fine-tuning: {len(loss)} steps, loss first 10 % {loss['loss'][:n].mean():.4f}, last 10 % "
             f"{loss['loss'][-n:].mean():.4f}, {loss['seconds'].median():.2f} s per step (median).", "",
             f"Generation: {summary}", "", f"Merge: {merge}", ""]
    parts = []
    for i, m in enumerate(config.downstream):
        part = frame[frame["variant"].str.startswith(m)]
        verdict = verdict_sentence(part, m, m + AUGMENTED, what="LLM4IDRec augmentation")
        parts.append(report_markdown(part, baseline=m, title=f"LLM4IDRec on {config.data.dataset}: {m}",
                                     extra=extra if i == 0 else None, lead=[f"**{verdict}**"]))
    return "\n\n".join(parts)


@flow(name="llm4idrec")
def llm4idrec_flow(config: LLM4IDRecRunConfig | None = None, store_root: str | None = None,
                   out_dir: str | None = None) -> dict[str, Any]:
    """LLM4IDRec end to end with the local LoRA backend (module docstring)."""
    config = config or LLM4IDRecRunConfig()
    if config.llm4idrec.backend != "local":
        raise ValueError("the llm4idrec flow runs the local backend; the hosted one is recsys/llm4idrec/hosted.py")
    root = str(store_root or default_store_dir())
    store = ArtifactStore(root)
    cfg = config.llm4idrec
    dataset = bind(load_data, root)(root, config.data)
    split = bind(split_data, root)(root, dataset, config.split)
    data = bind(prepare_samples, root)(root, split, cfg)
    lora = bind(finetune_local, root)(root, data, cfg, base_model_files(cfg))
    gen = bind(generate_items, root)(root, split, data, lora, cfg)
    base_ref, base_model = None, None
    if cfg.max_base_rank is not None:
        base_model = ModelConfig(**config.model.model_dump())
        base_ref = bind(train_model, root)(root, split, base_model, config.train, config.eval)
    augmented = bind(augmented_split, root)(root, split, gen, cfg.max_base_rank, base_ref, base_model)
    frame = metrics_frame(downstream(config, root, {"": split, AUGMENTED: augmented}))
    summary, merge = store.read_json(gen, "summary"), store.read_json(augmented, "merge")
    loss = store.read_table(lora, "loss")
    text = report(frame, config, summary, merge, loss)
    refs = {"dataset": dataset, "split": split, "samples": data, "lora": lora, "generate": gen,
            "augmented_split": augmented}
    if out_dir:
        out = Path(out_dir).expanduser()
        write_parquet(out / "metrics.parquet", frame)
        write_parquet(out / "loss.parquet", loss)
        write_json(out / "generation.json", {"summary": summary, "merge": merge})
        write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": refs})
        write_text(out / "report.md", text)
    get_run_logger().info("llm4idrec: %d metric rows; merge %s", len(frame), merge)
    return {"refs": refs, "metrics": frame, "report": text, "summary": summary, "merge": merge,
            "store_root": root}
