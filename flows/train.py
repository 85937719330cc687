"""The `train` flow (LLMRec Stage 2): augmentation (a cached subflow) -> embeddings -> per seed the backbone baseline
(LightGCN, or MF) and each requested variant (recsys/ablations.py) -> the report, whose first line is the verdict:
did augmentation improve test Recall@20, by how much, with what confidence (paired t-test over seeds), at what cost.

`run_stage_two` is the one body behind both the `train` flow and the `run` flow (flows/run.py). Every model is a
cached task on its content key, so a variant trained by `llmrec run` and by `llmrec ablate` is one artifact, and
a repeated call trains nothing and asks the LLM nothing.

Outputs in `out_dir`: metrics.parquet (variant, seed, split, metric, k, value), report.png (test R@20 / N@20 per
variant), config.json, and report.md last, its presence meaning the folder is complete (the verdict, Table 3, the
cost per strategy, test by user group, every metric); the report is also published as Prefect artifacts
`llmrec-report` (Markdown) and `llmrec-ablation` (the Table-3 summary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.augment import run_augment
from flows.embed import run_embed
from recsys.ablations import FULL, get_variant, parse_variants
from recsys.augment.positions import position_markdown
from recsys.config import LLMRecConfig, RunConfig, default_store_dir
from recsys.embed.texts import ATTRIBUTE_FIELDS
from recsys.eval.cost_rate import cost_improvement, cost_markdown, stage_costs
from recsys.eval.plot import ablation_png
from recsys.eval.report import ablation_table, metrics_frame, metrics_rows, report_markdown
from recsys.eval.verdict import (
    augmentation_name,
    group_frame,
    group_markdown,
    group_rows,
    one_group_note,
    quartile_groups,
    verdict_sentence,
)
from recsys.models.llmrec import feature_group
from storage.atomic import atomic_path, write_json, write_parquet, write_text
from storage.ledger import read_ledger
from storage.store import ArtifactStore
from tasks.artifacts import replace_earlier
from tasks.common import bind
from tasks.llmrec import evaluate_llmrec, train_llmrec
from tasks.train import evaluate_model, train_model

REPORT_PNG = "report.png"
STRATEGY_STAGES = ("edges", "profiles", "attributes")


def feature_inputs(dataset_ref: str, batches: dict[str, list[str]]) -> dict[str, list[str]]:
    """Feature source -> the refs its texts come from: the dataset's items, and the augment batches."""
    sources = {"item_text": [dataset_ref]}
    if "profiles" in batches:
        sources["user_profile"] = list(batches["profiles"])
    if "attributes" in batches:
        sources.update({f"item_attr_{f}": list(batches["attributes"]) for f in ATTRIBUTE_FIELDS})
    return sources


def with_base_url(config: RunConfig, base_url: str | None) -> RunConfig:
    """`config` with the LLM endpoint replaced (unchanged when `base_url` is empty)."""
    if not base_url:
        return config
    return config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": base_url})})


def embed_features(config: RunConfig, root: str, refs: dict[str, Any], batches: dict[str, list[str]],
                   ledger_root: str) -> dict[str, str]:
    """Embed every feature source (item text, user profiles, item attributes) in the `embed` subflow, on the task
    runner `config.runner` names; returns source -> embed ref."""
    return run_embed(feature_inputs(refs["dataset"], batches), config.embed, root, ledger_root, config.runner)


def _safe(name: str) -> str:
    """A variant name as it may appear in a task-run name (w/o-u&i -> wo-u-and-i)."""
    return name.replace("w/o", "wo").replace("&", "-and-").replace("/", "-")


@dataclass(frozen=True)
class StageTwoInputs:
    """What LLMRec trains on, from the augment and embed subflows: the base refs (dataset, split, ...), the
    embedded feature sources (name -> embed ref), the augmented-edge batch refs, and the augment run's result."""

    refs: dict[str, Any]
    features: dict[str, str]
    edge_refs: list[str] | None
    augment: dict[str, Any]


def prepare_inputs(config: RunConfig, root: str, out: Path | None, max_cost_usd: float | None = None,
                   allow_unbounded_spend: bool = False) -> StageTwoInputs:
    """The augment subflow (no LLM request for batches already stored; `max_cost_usd` and `allow_unbounded_spend`
    are its budget, flows/augment.py), then the embed subflow."""
    aug = run_augment(config=config.augment_run(), store_root=root, out_dir=str(out / "augment") if out else None,
                      max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)
    batches: dict[str, list[str]] = aug["batches"]
    features = embed_features(config, root, aug["refs"], batches, aug["ledger"])
    edges = list(batches["edges"]) if "edges" in batches else None
    return StageTwoInputs({**aug["refs"], "features": features}, features, edges, aug)


def used_inputs(cfg: LLMRecConfig, edges: list[str] | None, features: dict[str, str]
                ) -> tuple[list[str] | None, dict[str, str]]:
    """The edges and feature sources a config really uses: none of a group whose fusion scale is 0, no edges when
    omega3 is 0 (so that equal models have equal keys, and a source that is off costs nothing)."""
    kept = {name: ref for name, ref in features.items() if cfg.scale_of(feature_group(name)[1]) > 0}
    return (edges if cfg.omega3 > 0 else None), kept


def train_variants(config: RunConfig, root: str, inputs: StageTwoInputs,
                   variants: list[str]) -> tuple[list[dict], dict[str, dict]]:
    """Per seed: the backbone baseline (`baseline_train`, else the very `train` object LLMRec gets), then each
    variant through the train-llmrec / evaluate-llmrec tasks with the variant's edges, features and config.
    Returns the metric rows and variant -> seed -> {train, evaluate} refs."""
    store = ArtifactStore(root)
    split = inputs.refs["split"]
    baseline = config.baseline_model()
    rows: list[dict] = []
    trained: dict[str, dict[int, dict[str, str]]] = {baseline.name: {}, **{v: {} for v in variants}}
    for seed in config.seeds:
        train = config.train.model_copy(update={"seed": seed})
        base_train = train if config.baseline_train is None else config.baseline_train.model_copy(
            update={"seed": seed})
        base_ref = bind(train_model, root)(root, split, baseline, base_train, config.eval)
        base_eval = bind(evaluate_model, root)(root, split, base_ref, baseline, config.eval, train.device)
        trained[baseline.name][seed] = {"train": base_ref, "evaluate": base_eval}
        rows += metrics_rows(baseline.name, seed, store.read_json(base_eval, "metrics"))
        for name in variants:
            v = get_variant(name)
            # The full model keeps the task's own run name; the others say which variant they are.
            label = "llmrec" if name == FULL else f"llmrec-{_safe(name)}"
            cfg = v.llmrec_config(config.llmrec)
            edges, features = used_inputs(cfg, v.edge_refs(inputs.edge_refs), v.feature_refs(inputs.features))
            t_ref = bind(train_llmrec, root).with_options(task_run_name=f"train-{label}-{seed}")(
                root, split, edges, features, cfg, train, config.eval)
            e_ref = bind(evaluate_llmrec, root).with_options(task_run_name=f"evaluate-{label}-{seed}")(
                root, t_ref, config.eval, train.device)
            trained[name][seed] = {"train": t_ref, "evaluate": e_ref}
            rows += metrics_rows(name, seed, store.read_json(e_ref, "metrics"))
    return rows, trained


def group_section(store: ArtifactStore, split_ref: str, trained: dict[str, dict], baseline: str) -> list[str]:
    """The test metrics by user group (quartiles of training interactions per user), from the per-user tables of
    every evaluated model: the paper's sparsity claim, measured."""
    n_train = store.read_table(split_ref, "train").groupby("user_id").size()
    groups = quartile_groups(n_train)
    rows = [row for variant, seeds in trained.items() for seed, refs in seeds.items()
            for row in group_rows(variant, seed, store.read_table(refs["evaluate"], "per_user_test"), groups)]
    lines = ["## Test by user group (quartiles of training interactions per user)", "",
             "The sparsest users are where LLM augmentation should help most (paper §1, Table 1). Mean ± std over "
             "seeds of each group's mean; Δ and p (paired t-test over seeds) against the baseline.", ""]
    note = one_group_note(n_train)
    return [*lines, *([note, ""] if note else []), *group_markdown(group_frame(rows), baseline), ""]


def cost_section(frame: pd.DataFrame, ledger_root: str, config: RunConfig, paid_now: float
                 ) -> tuple[list[str], float]:
    """The Table-7 section, and what producing the augmentation cost. Costs per stage: every paid call of the
    store's ledger on this run's LLM model (also when this run found them all cached); embedding calls on its
    embedding model are listed apart and counted in the cost. `paid_now`: what this run's augmentation paid."""
    ledger = read_ledger(ledger_root)
    llm = stage_costs(ledger[ledger["model"] == config.llm.model]) if len(ledger) else {}
    embed = stage_costs(ledger[ledger["model"] == config.embed.resolved_model]) if len(ledger) else {}
    source = (f"USD of every paid call on model `{config.llm.model}` in the ledger `{ledger_root}` (all runs; a "
              f"store shared by several datasets or configurations counts them all); this run's augmentation "
              f"paid ${paid_now:.6f} of it")
    others = {s: usd for s, usd in {**embed, **llm}.items() if s not in STRATEGY_STAGES}
    total = sum(usd for s, usd in llm.items() if s in STRATEGY_STAGES) + sum(others.values())
    return cost_markdown(cost_improvement(frame, llm), source, others), float(total)


def setting_line(config: RunConfig) -> str:
    """What was compared, in one line: data, split, the sparse-data cap, LLM, seeds."""
    split = config.split
    how = "the given split" if split.method == "dir" else f"a {split.method} split (seed {split.seed})"
    cap = (f"; training interactions capped at {split.max_train_per_user} per user (sparse-data protocol)"
           if split.max_train_per_user else "")
    return (f"Setting: {config.data.dataset}, {how}{cap}; LLM `{config.llm.model}`; embeddings "
            f"`{config.embed.resolved_model}`; {len(config.seeds)} seeds ({', '.join(map(str, config.seeds))}).")


def report_run(config: RunConfig, root: str, out: Path | None, inputs: StageTwoInputs, rows: list[dict],
               trained: dict[str, dict], variants: list[str], extra: list[str] | None = None) -> dict[str, Any]:
    """metrics.parquet, report.png, config.json and report.md (the verdict first), and the Prefect artifacts."""
    store = ArtifactStore(root)
    baseline = config.baseline_model().name
    frame = metrics_frame(rows)
    costs, cost_usd = cost_section(frame, inputs.augment["ledger"], config, float(inputs.augment["cost_usd"]))
    if inputs.augment.get("positions") is not None:  # position bias of the augmented edges
        costs += position_markdown(inputs.augment["positions"])
    compared = FULL if FULL in variants else variants[0]
    what = augmentation_name(config.llmrec) if compared == FULL else "LLM augmentation"
    lead = [f"**{verdict_sentence(frame, baseline, compared, cost_usd=cost_usd, what=what)}** ({compared} against its "
            f"backbone {baseline})", "", setting_line(config)]
    sections = [*costs, *group_section(store, inputs.refs["split"], trained, baseline), *(extra or [])]
    report = report_markdown(frame, baseline=baseline, title=f"LLMRec on {config.data.dataset}", lead=lead,
                             extra=sections, png=REPORT_PNG)
    refs = {**inputs.refs, "variants": trained}
    if out:
        write_outputs(out, frame, report, ablation_png(frame, baseline), config, refs, str(store.root))
    publish_report(frame, report, baseline)
    return {"refs": refs, "metrics": frame, "report": report, "rows": inputs.augment["rows"],
            "cost_usd": inputs.augment["cost_usd"], "store_root": root}


def write_outputs(out: Path, frame: pd.DataFrame, report: str, png: bytes, config: RunConfig,
                  refs: dict[str, Any], store_root: str) -> None:
    """metrics.parquet, report.png and config.json, then report.md last: its presence means the folder is
    complete."""
    write_parquet(out / "metrics.parquet", frame)
    with atomic_path(out / REPORT_PNG) as tmp:
        tmp.write_bytes(png)
    write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": refs,
                                     "store": store_root})
    write_text(out / "report.md", report)


def publish_report(frame: pd.DataFrame, report: str, baseline: str) -> None:
    """Prefect artifacts of the run: the report (Markdown) and the Table-3 summary (a table)."""
    replace_earlier("llmrec-report")
    create_markdown_artifact(key="llmrec-report", markdown=report, description="LLMRec run report")
    table = ablation_table(frame, baseline)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in table.to_dict("records")]  # NaN is not JSON
    replace_earlier("llmrec-ablation")
    create_table_artifact(key="llmrec-ablation", table=records,
                          description="test metrics per variant, mean and std over seeds (paper Table 3)")


def run_stage_two(config: RunConfig, store_root: str | None, out_dir: str | None, variants: list[str] | None,
                  max_cost_usd: float | None = None, allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """The body of the `train` and `run` flows (call it inside a flow run). `max_cost_usd` and
    `allow_unbounded_spend` are the augment subflow's (flows/augment.py)."""
    names = parse_variants(variants)
    root = str(store_root or default_store_dir())
    out = Path(out_dir).expanduser() if out_dir else None
    inputs = prepare_inputs(config, root, out, max_cost_usd, allow_unbounded_spend)
    rows, trained = train_variants(config, root, inputs, names)
    result = report_run(config, root, out, inputs, rows, trained, names)
    get_run_logger().info("finished: variants %s, %d seeds", ", ".join(names), len(config.seeds))
    return result


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=4))
def train_flow(config: RunConfig | None = None, store_root: str | None = None, out_dir: str | None = None,
               base_url: str | None = None, variants: list[str] | None = None, max_cost_usd: float | None = None,
               allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """LLMRec Stage 2: the augment subflow (no LLM request when its batches are stored; `max_cost_usd` and
    `allow_unbounded_spend` are its budget, see flows/augment.py), embeddings, then per seed the LightGCN baseline
    and each variant in `variants` (default ["llmrec"]; see recsys/ablations.py), and the report (metrics.parquet,
    report.png, report.md in `out_dir`, and Prefect artifacts)."""
    return run_stage_two(with_base_url(config or RunConfig(), base_url), store_root, out_dir, variants,
                         max_cost_usd, allow_unbounded_spend)
