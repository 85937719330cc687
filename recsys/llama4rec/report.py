"""The Llama4Rec report: the metrics of every variant as a long table, the table of the paper's Table 2 form (mean
± std over seeds, overall and for head and tail users) beside the paper's ML-100K rows, the alpha settings chosen
on VALID, what the LLM answered, and the cost per LLM stage from the ledger."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recsys.costs import COST_COLUMNS, NONE, summarize
from recsys.eval.verdict import verdict_sentence
from recsys.llama4rec.variants import BY_NAME, VARIANTS

METRIC_COLUMNS = ("model", "variant", "seed", "split", "group", "metric", "k", "value")
TABLE_METRICS = (("hit", 3), ("ndcg", 3), ("hit", 5), ("ndcg", 5))  # [L4R] Table 2: H@3 / N@3 / H@5 / N@5
SHORT = {"hit": "H", "ndcg": "N"}
# [L4R] Table 2 (arXiv 2401.13870, early ACM-format version; reference notes B.6), ML-100K, direct recommendation:
# H@3, N@3, H@5, N@5. "IFT" is the instruction-tuned LLM re-ranking the backbone's list without the augmentations.
PAPER_ML100K: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("mf", "Base"): (0.0455, 0.0325, 0.0690, 0.0420),
    ("mf", "IFT"): (0.0546, 0.0388, 0.0790, 0.0488),
    ("mf", "Llama4Rec"): (0.0645, 0.0474, 0.0919, 0.0588),
    ("lightgcn", "Base"): (0.0492, 0.0343, 0.0744, 0.0447),
    ("lightgcn", "IFT"): (0.0537, 0.0381, 0.0846, 0.0507),
    ("lightgcn", "Llama4Rec"): (0.0647, 0.0476, 0.0967, 0.0608),
}


def metrics_rows(model: str, seed: int, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows (model, variant, seed, split, group, metric, k, value) of one evaluation (`evaluate_rerank`'s json)."""
    rows = []
    for variant, result in doc["variants"].items():
        for split in ("valid", "test"):
            for group, values in result[split].items():
                for name, value in values.items():
                    if name == "users":
                        continue
                    metric, _, k = name.partition("@")
                    rows.append({"model": model, "variant": variant, "seed": int(seed), "split": split,
                                 "group": group, "metric": metric, "k": int(k), "value": float(value)})
    return rows


def selection_rows(model: str, seed: int, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows (model, variant, seed, alpha1, alpha2, alpha, selected_on, valid_value): each variant's setting."""
    rows = []
    for variant, result in doc["variants"].items():
        (metric, value), = result["selected_on"].items()
        settings = result["settings"]
        rows.append({"model": model, "variant": variant, "seed": int(seed), "alpha1": settings.get("alpha1"),
                     "alpha2": settings.get("alpha2"), "alpha": settings.get("alpha"), "selected_on": metric,
                     "valid_value": float(value)})
    return rows


def _tag(tags: Any, name: str) -> str | None:
    try:
        return json.loads(tags).get(name) if isinstance(tags, str) else None
    except (ValueError, AttributeError):
        return None


def cost_rows(ledger: pd.DataFrame) -> pd.DataFrame:
    """Calls, cache hits, failed calls, tokens and USD per LLM stage and prompt ("pairwise"; "ranking" with the
    "plain" or "augmented" prompt), from ledger rows (recsys/costs.py `summarize`)."""
    if ledger.empty:
        return pd.DataFrame(columns=["stage", "prompt", *COST_COLUMNS])
    tags = ledger["tags"] if "tags" in ledger else pd.Series(None, index=ledger.index)
    rows = ledger.assign(prompt=tags.map(lambda t: _tag(t, "prompt")))
    return summarize(rows, ["stage", "prompt"])


def summary_table(frame: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Mean and std over seeds per model, variant, group and metric@k on `split`: columns model, variant, group,
    seeds and, per metric of TABLE_METRICS, its mean and "<metric> std"."""
    part = frame[frame["split"] == split]
    rows = []
    for (model, variant, group), g in part.groupby(["model", "variant", "group"], sort=False):
        row: dict[str, Any] = {"model": model, "variant": variant, "group": group, "seeds": g["seed"].nunique()}
        for metric, k in TABLE_METRICS:
            values = g[(g["metric"] == metric) & (g["k"] == k)]["value"]
            name = f"{SHORT[metric]}@{k}"
            row[name] = float(values.mean()) if len(values) else float("nan")
            row[f"{name} std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(row: Mapping[str, Any], name: str) -> str:
    return f"{row[name]:.4f} ± {row[f'{name} std']:.4f}"


def table_markdown(frame: pd.DataFrame, groups: Sequence[str] = ("all", "head", "tail")) -> list[str]:
    """One Markdown table on TEST: a row per model and variant, H@3 N@3 H@5 N@5 (mean ± std over seeds) for each
    group, in VARIANTS order."""
    summary = summary_table(frame)
    names = [f"{SHORT[m]}@{k}" for m, k in TABLE_METRICS]
    head = ["backbone", "variant", *[f"{n} {g}" for g in groups for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {v.name: i for i, v in enumerate(VARIANTS)}
    for model in dict.fromkeys(summary["model"]):
        mine = summary[summary["model"] == model]
        for variant in sorted(dict.fromkeys(mine["variant"]), key=lambda v: order.get(v, len(order))):
            cells = [model, variant]
            for group in groups:
                found = mine[(mine["variant"] == variant) & (mine["group"] == group)]
                cells += [_mean_std(found.iloc[0], n) if len(found) else "" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def paper_markdown() -> list[str]:
    """The paper's ML-100K rows ([L4R] Table 2) in the same four columns."""
    lines = ["| backbone | method | H@3 | N@3 | H@5 | N@5 |", "|---|---|---|---|---|---|"]
    for (model, method), values in PAPER_ML100K.items():
        lines.append(f"| {model} | {method} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines


def _cell(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:g}"


def selection_markdown(selection: pd.DataFrame) -> list[str]:
    """The alpha setting each variant chose on VALID, per seed."""
    lines = ["| backbone | variant | seed | alpha1 | alpha2 | alpha | valid |", "|---|---|---|---|---|---|---|"]
    for r in selection.to_dict("records"):
        if BY_NAME.get(r["variant"]) is not None and BY_NAME[r["variant"]].weighting in ("backbone", "llm"):
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {r['seed']} | {_cell(r['alpha1'])} | {_cell(r['alpha2'])} | "
                     f"{_cell(r['alpha'])} | {r['selected_on']} {r['valid_value']:.4f} |")
    return lines


def answers_markdown(evaluations: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """What the LLM answered per ranking set and seed: users, answered, fallback (backbone order kept), completed
    (answers that left candidates out), re-asked."""
    lines = ["| seed | lists ranked (backbone/prompt/split) | users | answered | fallback | completed | re-asked |",
             "|---|---|---|---|---|---|---|"]
    for seed, doc in evaluations.items():
        for name, a in doc["answers"].items():
            lines.append(f"| {seed} | {name} | {a['users']} | {a['answered']} | {a['fallback']} | "
                         f"{a['completed']} | {a['reasked']} |")
    return lines


def cost_markdown(costs: pd.DataFrame) -> list[str]:
    """The cost table: a row per stage and prompt, and a total."""
    if costs.empty:
        return ["No LLM request in this run: every answer came from the artifact store (`llmrec cost --by "
                "flow-run` lists the runs that asked)."]
    cols = ["calls", "cache_hits", "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd"]
    lines = ["| stage | prompt | calls | cache hits | failed | in tokens | out tokens | USD |",
             "|---|---|---|---|---|---|---|---|"]
    total = {"stage": "total", "prompt": "", **{c: costs[c].sum() for c in cols}}
    for r in [*costs.to_dict("records"), total]:
        prompt = "" if r["prompt"] in ("", NONE) else r["prompt"]
        lines.append(f"| {r['stage']} | {prompt} | " + " | ".join(
            f"{r[c]:.6f}" if c == "cost_usd" else f"{int(r[c]):,}" for c in cols) + " |")
    return lines


def report_markdown(frame: pd.DataFrame, selection: pd.DataFrame, costs: pd.DataFrame,
                    evaluations: Mapping[int, Mapping[str, Any]], full_ranking: Mapping[int, Mapping[str, Any]],
                    config: Any) -> str:
    """The whole report of one `llama4rec` run (`config`: its Llama4RecRunConfig)."""
    l4r, k = config.llama4rec, config.candidates.n_candidates
    seeds = sorted(evaluations)
    tail = next(iter(evaluations.values()))["tail"] if evaluations else {"users": 0, "max_train_items": 0}
    overall = frame[(frame["group"] == "all") & (frame["model"] == config.model.name)]
    verdict = verdict_sentence(overall, "backbone", "llama4rec", metric="hit", k=min(l4r.ks), what="Llama4Rec")
    lines = [f"# Llama4Rec on {config.data.dataset}, backbone {config.model.name}", "", f"**{verdict}**", "",
             f"Split {config.split.method}; the backbone's top-{k} list re-ranked; LLM `{config.llm.model}`; "
             f"seeds {', '.join(map(str, seeds))}. Tail users: the {tail['users']} users with at most "
             f"{tail['max_train_items']} training items (the lowest {l4r.tail_quantile:g} quantile of N(u)); head: "
             f"the others. alpha1, alpha2 (and the one alpha of w/o-AA) from {list(l4r.alpha_grid)}, chosen on "
             f"VALID {l4r.select_metric}.", "",
             "## Test: H@K (hit rate) and N@K (NDCG), mean ± std over seeds", "", *table_markdown(frame), "",
             *[f"- `{v.name}`: {v.description}" for v in VARIANTS], "",
             "## The paper's ML-100K rows ([L4R] Table 2; LLaMA-2-7B fine-tuned, 5 runs)", "", *paper_markdown(), "",
             "## Alpha chosen on VALID", "", *selection_markdown(selection), "",
             "## The LLM's rankings", "", *answers_markdown(evaluations), "",
             "## The backbones' full ranking (all items), test", "",
             "| seed | backbone | recall@20 | ndcg@20 |", "|---|---|---|---|",
             *[f"| {seed} | {b} | {m['test']['recall@20']:.4f} | {m['test']['ndcg@20']:.4f} |"
               for seed, per in full_ranking.items() for b, m in per.items()], "",
             "## Cost of this run's LLM calls, from the ledger", "", *cost_markdown(costs), ""]
    return "\n".join(lines)
