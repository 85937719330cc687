"""The end-to-end `run` flow: base -> augment -> embed -> LightGCN baseline and LLMRec (or any ablation variants)
per seed -> report.

Every stage is a cached task on its content key (or a subflow of such tasks), so a re-run with the same config
recomputes nothing and asks the LLM nothing. Its body is the `train` flow's (flows/train.py): metrics.parquet,
report.png, config.json and report.md in `out_dir`, and the report as Prefect artifacts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.train import feature_inputs, run_stage_two, with_base_url
from recsys.config import RunConfig

__all__ = ["feature_inputs", "run_flow", "with_base_url"]


@flow(name="run", task_runner=ThreadPoolTaskRunner(max_workers=4))
def run_flow(config: RunConfig | None = None, store_root: str | None = None, out_dir: str | None = None,
             base_url: str | None = None, variants: list[str] | None = None, max_cost_usd: float | None = None,
             allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """Base model and candidates, LLM augmentation (subflow; `max_cost_usd` and `allow_unbounded_spend` are its
    budget, see flows/augment.py), embeddings of item text / user profiles / item attributes, then the LightGCN
    baseline and each variant (default ["llmrec"]) trained and evaluated once per seed; the report last."""
    return run_stage_two(with_base_url(config or RunConfig(), base_url), store_root, out_dir, variants,
                         max_cost_usd, allow_unbounded_spend)
