"""The `base` flow: load -> split -> train -> evaluate -> candidates (the input of LLM augmentation)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from recsys.config import BaseRunConfig, default_store_dir
from tasks.candidates import generate_candidates
from tasks.common import bind
from tasks.data import load_data, split_data
from tasks.export import export_base
from tasks.train import evaluate_model, train_model


@flow(name="base")
def base_flow(config: BaseRunConfig | None = None, store_root: str | None = None,
              out_dir: str | None = None) -> dict[str, Any]:
    """Train the base recommender and produce its per-user candidates.

    Every stage is cached on its content key in the artifact store at `store_root` (default `LLMREC_STORE` or
    ~/.cache/llmrec/store): a re-run with the same inputs recomputes nothing. With `out_dir`, metrics.json,
    candidates.parquet, history.parquet and config.json are written there.
    """
    config = config or BaseRunConfig()
    root = str(store_root or default_store_dir())

    dataset = bind(load_data, root)(root, config.data)
    split = bind(split_data, root)(root, dataset, config.split)
    trained = bind(train_model, root)(root, split, config.model, config.train, config.eval)
    scored = bind(evaluate_model, root)(root, split, trained, config.model, config.eval, config.train.device)
    candidates = bind(generate_candidates, root)(
        root, split, trained, config.model, config.candidates, config.train.device
    )

    refs = {"dataset": dataset, "split": split, "train": trained, "evaluate": scored, "candidates": candidates}
    result: dict[str, Any] = {"refs": refs, "store_root": root}
    if out_dir:
        result["metrics"] = export_base(root, refs, config, out_dir)
    return result
