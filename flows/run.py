"""The end-to-end `run` flow: base -> augment -> embed -> LightGCN baseline and LLMRec per seed -> report.

Every stage is a cached task on its content key (or a subflow of such tasks), so a re-run with the same config
recomputes nothing and asks the LLM nothing. Writes metrics.parquet (variant, seed, split, metric, k, value),
report.md (mean ± std per variant, paired t-test against LightGCN) and config.json to `out_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.augment import augment_flow
from recsys.config import RunConfig, default_store_dir
from recsys.embed.texts import ATTRIBUTE_FIELDS
from recsys.eval.report import metrics_frame, metrics_rows, report_markdown
from storage.atomic import write_json, write_parquet, write_text
from storage.store import ArtifactStore
from tasks.common import bind
from tasks.embed import embed_source
from tasks.llmrec import evaluate_llmrec, train_llmrec
from tasks.train import evaluate_model, train_model

BASELINE = "lightgcn"


def feature_inputs(dataset_ref: str, batches: dict[str, list[str]]) -> dict[str, list[str]]:
    """Feature source -> the refs its texts come from: the dataset's items, and the augment batches."""
    sources = {"item_text": [dataset_ref]}
    if "profiles" in batches:
        sources["user_profile"] = list(batches["profiles"])
    if "attributes" in batches:
        sources.update({f"item_attr_{f}": list(batches["attributes"]) for f in ATTRIBUTE_FIELDS})
    return sources


def with_base_url(config: RunConfig, base_url: str | None) -> RunConfig:
    if not base_url:
        return config
    return config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": base_url})})


@flow(name="run", task_runner=ThreadPoolTaskRunner(max_workers=4))
def run_flow(config: RunConfig | None = None, store_root: str | None = None, out_dir: str | None = None,
             base_url: str | None = None) -> dict[str, Any]:
    """Base model and candidates, LLM augmentation (subflow), embeddings of item text / user profiles / item
    attributes, then the LightGCN baseline and LLMRec trained and evaluated once per seed; the report last."""
    config = with_base_url(config or RunConfig(), base_url)
    logger = get_run_logger()
    root = str(store_root or default_store_dir())
    store = ArtifactStore(root)
    out = Path(out_dir).expanduser() if out_dir else None

    aug = augment_flow(config=config.augment_run(), store_root=root,
                       out_dir=str(out / "augment") if out else None)
    refs: dict[str, Any] = dict(aug["refs"])
    batches: dict[str, list[str]] = aug["batches"]

    features: dict[str, str] = {}
    for source, inputs in feature_inputs(refs["dataset"], batches).items():
        features[source] = bind(embed_source, root)(root, source, inputs, config.embed, ledger_root=aug["ledger"])
    refs["features"] = features
    edge_refs = list(batches["edges"]) if "edges" in batches else None

    rows: list[dict] = []
    trained: dict[str, dict[int, dict[str, str]]] = {BASELINE: {}, "llmrec": {}}
    baseline = config.baseline_model()
    for seed in config.seeds:
        train = config.train.model_copy(update={"seed": seed})
        base_ref = bind(train_model, root)(root, refs["split"], baseline, train, config.eval)
        base_eval = bind(evaluate_model, root)(root, refs["split"], base_ref, baseline, config.eval, train.device)
        llm_ref = bind(train_llmrec, root)(root, refs["split"], edge_refs, features, config.llmrec, train,
                                           config.eval)
        llm_eval = bind(evaluate_llmrec, root)(root, llm_ref, config.eval, train.device)
        for variant, t, e in ((BASELINE, base_ref, base_eval), ("llmrec", llm_ref, llm_eval)):
            trained[variant][seed] = {"train": t, "evaluate": e}
            rows += metrics_rows(variant, seed, store.read_json(e, "metrics"))
    refs["variants"] = trained

    frame = metrics_frame(rows)
    report = report_markdown(frame, baseline=BASELINE, title=f"LLMRec run on {config.data.dataset}")
    if out:
        write_parquet(out / "metrics.parquet", frame)
        write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": refs,
                                         "store": str(store.root)})
        write_text(out / "report.md", report)  # last: its presence means the folder is complete
    logger.info("run finished: %d metric rows for %d seeds", len(frame), len(config.seeds))
    return {"refs": refs, "metrics": frame, "report": report, "rows": aug["rows"], "cost_usd": aug["cost_usd"],
            "store_root": root}
