"""Cost per LLM augmentation strategy and its cost/improvement rate (paper Table 7).

Strategy <- ledger stage: u-i edges <- "edges", item attributes <- "attributes", user profiling <- "profiles".
Cost: the USD of that stage's ledger rows (HTTP attempts; response-cache hits cost nothing), as `llmrec cost` sums it.
Improvement of a strategy: what the full model gains over the ablation that lacks it (u-i edges: w/o-u-i,
user profiling: w/o-u, item attributes: w/o-i), as the relative change of the mean test Recall@20 over seeds,
(full - ablation) / ablation, in percent. Rate = cost / improvement, in USD per 1 % of relative improvement: the
lower, the cheaper each point of accuracy. It is undefined when the improvement is <= 0 (the strategy did not
help) or when the ablation was not trained.

The paper's Table 7 lists the Netflix costs per strategy (profiling 10.92, item attributes 1.96, u-i edges 8.26,
total 21.14 USD); the rate above is this project's definition, stated in every report.

Pure pandas: the caller reads the ledger (storage/ledger.py) and passes its rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.costs import summarize

# strategy, ledger stage, the ablation without it (recsys/ablations.py)
STRATEGIES = (("u-i edges", "edges", "w/o-u-i"), ("item attributes", "attributes", "w/o-i"),
              ("user profiling", "profiles", "w/o-u"))
FULL = "llmrec"
IMPROVEMENT_METRIC = ("recall", 20)
RATE_DEFINITION = ("rate = cost USD / relative improvement of mean test R@20 (full llmrec vs the ablation "
                   "without the strategy: u-i edges vs w/o-u-i, item attributes vs w/o-i, user profiling vs w/o-u), "
                   "in USD per 1 % of relative improvement; undefined when the improvement is <= 0")


def stage_costs(ledger: pd.DataFrame) -> dict[str, float]:
    """USD per stage, as `llmrec cost --by stage` sums it (recsys/costs.py); a stage with no row is absent."""
    table = summarize(ledger, ["stage"])
    return dict(zip(table["stage"], table["cost_usd"], strict=True))


def _test_mean(frame: pd.DataFrame, variant: str) -> float:
    metric, k = IMPROVEMENT_METRIC
    sel = frame[(frame["variant"] == variant) & (frame["split"] == "test") & (frame["metric"] == metric)
                & (frame["k"] == k)]
    return float(sel["value"].mean()) if len(sel) else float("nan")


def cost_improvement(frame: pd.DataFrame, costs: dict[str, float]) -> pd.DataFrame:
    """One row per strategy: strategy, stage, ablation, cost_usd, full and ablation mean test R@20,
    improvement_pct, rate (USD per 1 %; NaN when undefined) and a note saying why a rate is undefined."""
    full = _test_mean(frame, FULL)
    rows = []
    for strategy, stage, ablation in STRATEGIES:
        cost = float(costs.get(stage, 0.0))
        without = _test_mean(frame, ablation)
        improvement, note = float("nan"), ""
        if np.isnan(full) or np.isnan(without):
            note = f"not measured: train {FULL} and {ablation}"
        elif without <= 0:
            note = f"{ablation} R@20 is 0: no relative improvement, rate undefined"
        else:
            improvement = (full / without - 1.0) * 100.0
            note = "improvement <= 0: rate undefined" if improvement <= 0 else ""
        rate = cost / improvement if not note else float("nan")
        rows.append({"strategy": strategy, "stage": stage, "ablation": ablation, "cost_usd": cost,
                     "full_r20": full, "ablation_r20": without, "improvement_pct": improvement, "rate": rate,
                     "note": note})
    return pd.DataFrame(rows)


def cost_markdown(table: pd.DataFrame, source: str, other_costs: dict[str, float] | None = None) -> list[str]:
    """Markdown lines of the Table-7 section: where the costs come from, the definition, one row per strategy,
    the total, and the other ledger stages (e.g. embeddings) as extra lines."""
    lines = ["## Cost per LLM strategy (paper Table 7)", "", f"Costs: {source}.", "", f"{RATE_DEFINITION}.", "",
             "| strategy | cost USD | full R@20 | ablation | ablation R@20 | improvement | USD per 1 % |",
             "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        imp = "" if np.isnan(r["improvement_pct"]) else f"{r['improvement_pct']:+.2f} %"
        rate = r["note"] if r["note"] else f"{r['rate']:.6g}"
        full = "" if np.isnan(r["full_r20"]) else f"{r['full_r20']:.4f}"
        abl = "" if np.isnan(r["ablation_r20"]) else f"{r['ablation_r20']:.4f}"
        lines.append(f"| {r['strategy']} | {r['cost_usd']:.6f} | {full} | {r['ablation']} | {abl} | {imp} | "
                     f"{rate} |")
    lines.append(f"| total | {float(table['cost_usd'].sum()):.6f} | | | | | |")
    for stage, usd in sorted((other_costs or {}).items()):
        lines.append(f"| ({stage}) | {usd:.6f} | | | | | |")
    return [*lines, ""]
