"""What augmentation costs: the budget guard, and the Prefect artifacts of one run. The ledger is summed by
recsys/costs.py, the same way as for `llmrec cost`."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from recsys.costs import summarize, totals
from storage.ledger import read_ledger
from tasks.artifacts import replace_earlier


@dataclass
class Budget:
    """Stops scheduling batches before `max_cost_usd` would be exceeded.

    The cost of the next batch is estimated as the dearest batch finished so far in this run; until one has
    finished only one batch may be in flight, so spend can pass the cap by at most one batch's cost.
    """

    max_cost_usd: float | None
    ledger_root: str
    flow_run_id: str

    def spent(self) -> float:
        return float(totals(read_ledger(self.ledger_root, flow_run_id=self.flow_run_id))["cost_usd"])

    def allows(self, stage: str, finished: list[int], running: int) -> bool:
        """Whether one more batch of `stage` may start, given the batches (by number) already finished."""
        if self.max_cost_usd is None:
            return True
        rows = read_ledger(self.ledger_root, flow_run_id=self.flow_run_id)
        spent = float(totals(rows)["cost_usd"])
        done = rows[(rows["stage"] == stage) & rows["batch"].isin([str(b) for b in finished])]
        if not len(done):
            return running == 0 and spent < self.max_cost_usd
        dearest = float(summarize(done, ["batch"])["cost_usd"].max())
        return spent + (running + 1) * dearest <= self.max_cost_usd


# The UI shows a table artifact's columns in this order and cuts what does not fit its width (about 1,400 px
# here): what the on-call engineer looks for first (failed items, USD) comes first, counts of calls and tokens last.
COST_TABLE_COLUMNS = ["stage", "model", "failed_items", "cost_usd", "calls", "cache_hits", "failed_calls",
                      "prompt_tokens", "completion_tokens"]


def cost_table(rows: pd.DataFrame, failures: pd.DataFrame) -> list[dict[str, object]]:
    """recsys/costs.py `totals` per stage and model, with the failed items of each stage, in COST_TABLE_COLUMNS
    order (plus `unpriced` when some call had no price)."""
    failed = failures["stage"].value_counts().to_dict() if len(failures) else {}
    table = summarize(rows, ["stage", "model"]).round({"cost_usd": 6})
    out = [{**r, "failed_items": int(failed.get(r["stage"], 0))} for r in table.to_dict("records")]
    seen = set(table["stage"])  # stages with failed items but no ledger row in this run
    out += [{"stage": s, "model": "", **totals(rows.iloc[:0]), "failed_items": int(n)}
            for s, n in failed.items() if s not in seen]
    columns = COST_TABLE_COLUMNS + (["unpriced"] if any(r["unpriced"] for r in out) else [])
    return [{c: r[c] for c in columns} for r in out]


def budget_lines(run_usd: float, ledger_usd: float, budget: float | None, ledger_root: str) -> str:
    """Markdown: this run's spend and the ledger's running total, each against the run budget."""
    cap = f"${budget:.4f}" if budget is not None else "none"
    left = f"${budget - run_usd:.6f}" if budget is not None else "-"
    status = "over budget" if budget is not None and run_usd > budget else "within budget"
    return (f"| | USD |\n|---|---|\n| this run | {run_usd:.6f} |\n| budget of this run | {cap} |\n"
            f"| left in this run's budget | {left} |\n| all runs in the ledger (`{ledger_root}`) | {ledger_usd:.6f} |\n"
            f"\nThis run is **{status}**.\n")


def publish_cost(rows: pd.DataFrame, failures: pd.DataFrame, budget: float | None, ledger_root: str) -> float:
    """Prefect artifacts of one augment run (its ledger `rows` and failed items): the cost table, and this run's
    spend and the ledger's running total (every run in `ledger_root`) against the budget. Returns the spend."""
    table = cost_table(rows, failures)
    replace_earlier("augment-cost")
    create_table_artifact(key="augment-cost", table=table, description="LLM calls, tokens, cost and failures")
    spent = float(totals(rows)["cost_usd"])
    ledger_usd = float(totals(read_ledger(ledger_root))["cost_usd"])
    md = "# Augmentation cost\n\n" + budget_lines(spent, ledger_usd, budget, ledger_root)
    md += ("\n| stage | model | calls | cache hits | cost USD | failed |\n|---|---|---|---|---|---|\n"
           + "".join(f"| {r['stage']} | {r['model']} | {r['calls']} | {r['cache_hits']} | {r['cost_usd']} | "
                     f"{r['failed_items']} |\n" for r in table))
    replace_earlier("augment-cost-summary")
    create_markdown_artifact(key="augment-cost-summary", markdown=md, description="spend against budget")
    return spent
