"""What the LLM calls cost, from cost-ledger rows (storage/ledger.py): totals per group and spend over time.

Pure pandas (and matplotlib for the chart, rendered to PNG bytes in memory): reading the ledger and writing files
is the caller's business.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import pandas as pd

GROUPINGS = {"stage": "stage", "model": "model", "day": "day", "flow-run": "flow_run_id"}
TOTAL = "total"
NONE = "(none)"  # the group of rows with no value in the grouping column
COST_COLUMNS = ["calls", "cache_hits", "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced"]
COST_HEADERS = {"calls": "calls", "cache_hits": "cache hits", "failed_calls": "failed", "prompt_tokens": "in tokens",
                "completion_tokens": "out tokens", "cost_usd": "USD", "unpriced": "unpriced"}


def parse_since(text: str) -> pd.Timestamp:
    """A `--since` value: a date (`2026-05-01`, midnight UTC) or an ISO 8601 time (UTC unless it has an offset)."""
    try:
        value = date.fromisoformat(text)
        stamp = pd.Timestamp(datetime(value.year, value.month, value.day, tzinfo=UTC))
    except ValueError:
        try:
            stamp = pd.Timestamp(datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(f"--since: {text!r} is not a date; use YYYY-MM-DD or an ISO 8601 time such as "
                             "2026-05-01T12:00:00+00:00") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def totals(rows: pd.DataFrame) -> dict[str, float | int]:
    """What ledger rows add up to; the one definition behind `llmrec cost`, the augment flow's budget and Prefect
    artifacts, and the report's cost per strategy.

    Calls are HTTP attempts, retries included; a cache hit is no call and costs nothing. `failed_calls`: attempts
    whose outcome is not ok. Tokens and USD are those of the calls; `unpriced`: answered calls whose model has no
    price (their cost is missing from `cost_usd`)."""
    http = rows[~rows["cached"]]
    return {
        "calls": int(len(http)),
        "cache_hits": int(rows["cached"].sum()),
        "failed_calls": int((http["outcome"] != "ok").sum()),
        "prompt_tokens": int(http["prompt_tokens"].fillna(0).sum()),
        "completion_tokens": int(http["completion_tokens"].fillna(0).sum()),
        "cost_usd": float(http["cost_usd"].fillna(0).sum()),
        "unpriced": int((http["cost_usd"].isna() & (http["outcome"] == "ok")).sum()),
    }


def summarize(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`totals` per group of the columns `by` (a missing value is the group "(none)"), sorted by group; columns
    `by` and COST_COLUMNS."""
    keys = [rows[c].astype("string").fillna(NONE) for c in by]
    out = [{**dict(zip(by, name, strict=True)), **totals(part)} for name, part in rows.groupby(keys, sort=True)]
    return pd.DataFrame(out, columns=[*by, *COST_COLUMNS])


def cost_by(rows: pd.DataFrame, by: str) -> pd.DataFrame:
    """One row per group (`by`: stage, model, day or flow-run), sorted by group, then a `total` row; columns
    `group` and COST_COLUMNS, and for flow-run also `name` (the run's name, "" for rows written without one)."""
    if by not in GROUPINGS:
        raise ValueError(f"--by: unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)}")
    if by == "day":
        rows = rows.assign(day=rows["timestamp"].dt.strftime("%Y-%m-%d"))
    groups = summarize(rows, [GROUPINGS[by]]).rename(columns={GROUPINGS[by]: "group"}).to_dict("records")
    out = pd.DataFrame([*groups, {"group": TOTAL, **totals(rows)}], columns=["group", *COST_COLUMNS])
    if by == "flow-run":
        names = rows.dropna(subset=["flow_run_name"]).groupby("flow_run_id")["flow_run_name"].first()
        out.insert(1, "name", out["group"].map(names.to_dict()).fillna("").astype(str))
    return out


def paid_usd(rows: pd.DataFrame) -> float:
    """USD of the rows' paid calls (0 when every call was free, unpriced or a cache hit)."""
    return float(totals(rows)["cost_usd"]) if len(rows) else 0.0


def no_paid_reason(rows: pd.DataFrame) -> str:
    """Why rows with no spend paid nothing, in words: calls to free or unpriced models, or cache hits only."""
    t = totals(rows) if len(rows) else {"calls": 0, "cache_hits": 0, "unpriced": 0}
    if not t["calls"]:
        return f"{t['cache_hits']:,} cache hits, no HTTP call"
    models = ", ".join(sorted(rows.loc[~rows["cached"], "model"].dropna().astype(str).unique()))
    if t["unpriced"]:
        return f"{t['calls']:,} calls to models without a price: {models}"
    return f"{t['calls']:,} calls, all to free models: {models}"


def cumulative_spend(rows: pd.DataFrame) -> pd.DataFrame:
    """timestamp, stage, cumulative_usd: the running spend of each stage after each of its paid rows."""
    paid = rows[~rows["cached"]][["timestamp", "stage", "cost_usd"]].copy()
    paid["stage"] = paid["stage"].astype("string").fillna(NONE)
    paid = paid.sort_values("timestamp", kind="stable")
    paid["cumulative_usd"] = paid["cost_usd"].fillna(0).groupby(paid["stage"]).cumsum()
    return paid[["timestamp", "stage", "cumulative_usd"]].reset_index(drop=True)


def spend_plot_png(rows: pd.DataFrame, title: str = "LLM spend over time") -> bytes:
    """A PNG: cumulative USD against time, one line per stage; when nothing was paid (a free or unpriced model,
    or only cache hits), the words "no paid calls" instead of flat lines on a meaningless axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend, no display
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not paid_usd(rows):
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no paid calls\n({no_paid_reason(rows)})", ha="center", va="center", fontsize=14,
                transform=ax.transAxes)
        ax.set_title(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    spend = cumulative_spend(rows)
    for stage, part in spend.groupby("stage", sort=True):
        times = part["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        ax.step(times, part["cumulative_usd"], where="post", label=str(stage))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("cumulative USD")
    ax.set_title(title)
    if len(spend):
        ax.legend(title="stage")
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
