"""What augmentation costs: spend so far from the ledger, the budget guard, and per-run Prefect artifacts."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage.ledger import read_ledger


def run_ledger(ledger_root: str, flow_run_id: str) -> pd.DataFrame:
    """This flow run's ledger rows (rows still being written by running batches included)."""
    return read_ledger(ledger_root, flow_run_id=flow_run_id)


def spent_usd(rows: pd.DataFrame) -> float:
    return float(rows["cost_usd"].fillna(0).sum()) if len(rows) else 0.0


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
        return spent_usd(run_ledger(self.ledger_root, self.flow_run_id))

    def allows(self, finished_batches: list[str], running: int, stage: str) -> bool:
        """Whether one more batch of `stage` may start, given the batches (by number) already finished."""
        if self.max_cost_usd is None:
            return True
        rows = run_ledger(self.ledger_root, self.flow_run_id)
        spent = spent_usd(rows)
        done = rows[(rows["stage"] == stage) & rows["batch"].isin(finished_batches)] if len(rows) else rows
        if not len(done):
            return running == 0 and spent < self.max_cost_usd
        estimate = float(done.groupby("batch")["cost_usd"].sum().max())
        return spent + (running + 1) * estimate <= self.max_cost_usd


def cost_table(rows: pd.DataFrame, failures: dict[str, int]) -> list[dict[str, object]]:
    """Calls, cache hits, tokens, cost and failed items per stage and model."""
    out: list[dict[str, object]] = []
    if len(rows):
        grouped = rows.groupby(["stage", "model"], dropna=False)
        for (stage, model), g in grouped:
            http = g[~g["cached"]]
            out.append({
                "stage": stage, "model": model,
                "http_calls": int(len(http)), "cache_hits": int(g["cached"].sum()),
                "errors": int((http["outcome"] != "ok").sum()),
                "prompt_tokens": int(http["prompt_tokens"].sum()),
                "completion_tokens": int(http["completion_tokens"].sum()),
                "cost_usd": round(spent_usd(g), 6),
                "failed_items": int(failures.get(str(stage), 0)),
            })
    seen = {r["stage"] for r in out}
    out += [{"stage": s, "model": "", "http_calls": 0, "cache_hits": 0, "errors": 0, "prompt_tokens": 0,
             "completion_tokens": 0, "cost_usd": 0.0, "failed_items": n} for s, n in failures.items() if s not in seen]
    return out


def budget_lines(run_usd: float, ledger_usd: float, budget: float | None, ledger_root: str) -> str:
    """Markdown: this run's spend and the ledger's running total, each against the run budget."""
    cap = f"${budget:.4f}" if budget is not None else "none"
    left = f"${budget - run_usd:.6f}" if budget is not None else "-"
    status = "over budget" if budget is not None and run_usd > budget else "within budget"
    return (f"| | USD |\n|---|---|\n| this run | {run_usd:.6f} |\n| budget of this run | {cap} |\n"
            f"| left in this run's budget | {left} |\n| all runs in the ledger (`{ledger_root}`) | {ledger_usd:.6f} |\n"
            f"\nThis run is **{status}**.\n")


def publish_cost(rows: pd.DataFrame, failures: dict[str, int], budget: float | None, total_usd: float,
                 ledger_root: str) -> None:
    """Prefect artifacts of one augment run: the cost table, and this run's spend and the ledger's running total
    (`total_usd`, every run in `ledger_root`) against the budget."""
    table = cost_table(rows, failures)
    create_table_artifact(key="augment-cost", table=table, description="LLM calls, tokens, cost and failures")
    md = "# Augmentation cost\n\n" + budget_lines(spent_usd(rows), total_usd, budget, ledger_root)
    md += ("\n| stage | model | http calls | cache hits | cost USD | failed |\n|---|---|---|---|---|---|\n"
           + "".join(f"| {r['stage']} | {r['model']} | {r['http_calls']} | {r['cache_hits']} | {r['cost_usd']} | "
                     f"{r['failed_items']} |\n" for r in table))
    create_markdown_artifact(key="augment-cost-summary", markdown=md, description="spend against budget")
