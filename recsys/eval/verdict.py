"""The answer a user runs llmrec for: did augmentation make the recommender better, by how much, with what
confidence, at what cost — in one sentence chosen from the numbers, and the same comparison by user group.

User groups are the quartiles of the number of training interactions per user: LLMRec's claim is about sparse
data (paper §1 and Table 1: about 5 training interactions per user), so the sparsest quartile is where
augmentation should help most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.config import LLMRecConfig
from recsys.eval.report import SHORT, metrics_frame, paired_p

ALPHA = 0.05  # significance level of the paired t-test behind the verdict


def quartile_groups(n_train: pd.Series) -> pd.Series:
    """A label per user (index kept) for the quartile of its training-interaction count, e.g. "Q1 (1-33 train)".

    Quartile edges come from the counts themselves (pandas.qcut); equal edges merge, so a dataset where every user
    has the same count (a capped split) has one group. Labels sort from the sparsest group to the densest.
    """
    counts = n_train.astype("int64")
    bins = pd.qcut(counts, 4, labels=False, duplicates="drop") if counts.nunique() > 1 else pd.Series(0, counts.index)
    labels = {}
    for q, members in counts.groupby(bins):
        labels[q] = f"Q{int(q) + 1} ({members.min()}-{members.max()} train)"
    return bins.map(labels).astype("string")


def one_group_note(n_train: pd.Series) -> str | None:
    """Why the user-group table has a single row, when `quartile_groups(n_train)` makes one group; else None."""
    if quartile_groups(n_train).nunique() != 1:
        return None
    low, high = int(n_train.min()), int(n_train.max())
    span = str(low) if low == high else f"{low}-{high}"
    return (f"One group: every user has {span} training interactions, so the quartiles coincide (a split capped "
            "by --max-train-per-user gives every user the same count). Compare groups on an uncapped split.")


def group_rows(variant: str, seed: int, per_user: pd.DataFrame, groups: pd.Series) -> list[dict]:
    """Rows of the long metrics table (split "test", one per group, metric, k) from one model's per-user test
    metrics. per_user: user_id plus one column per "metric@k"; groups: user_id -> group label."""
    frame = per_user.set_index("user_id")
    label = groups.reindex(frame.index)
    rows = []
    for group, part in frame.groupby(label, sort=True):
        for name in part.columns:
            metric, _, k = name.partition("@")
            rows.append({"variant": variant, "seed": int(seed), "split": "test", "group": str(group),
                         "users": len(part), "metric": metric, "k": int(k), "value": float(part[name].mean())})
    return rows


def group_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """The long table of `group_rows`: variant, seed, split, metric, k, value, group, users."""
    frame = metrics_frame([{k: v for k, v in r.items() if k not in ("group", "users")} for r in rows])
    frame["group"] = pd.Series([r["group"] for r in rows], dtype="string")
    frame["users"] = pd.Series([r["users"] for r in rows], dtype="int64")
    return frame


def compare(frame: pd.DataFrame, baseline: str, variant: str, metric: str = "recall", k: int = 20,
            split: str = "test") -> dict[str, float]:
    """`variant` against `baseline` on one metric over the seeds both have: n, means, relative change of the
    means, the paired t-test p-value (NaN with fewer than 2 seeds)."""
    part = frame[(frame["split"] == split) & (frame["metric"] == metric) & (frame["k"] == k)]
    base = part[part["variant"] == baseline].groupby("seed")["value"].mean()
    other = part[part["variant"] == variant].groupby("seed")["value"].mean()
    seeds = base.index.intersection(other.index)
    b, o = base[seeds].to_numpy(), other[seeds].to_numpy()
    mean_b, mean_o = (float(b.mean()), float(o.mean())) if len(seeds) else (float("nan"), float("nan"))
    rel = mean_o / mean_b - 1.0 if len(seeds) and mean_b else float("nan")
    return {"n": len(seeds), "baseline": mean_b, "variant": mean_o, "rel": rel, "p": paired_p(o, b)}


def augmentation_name(llmrec: LLMRecConfig) -> str:
    """What the full LLMRec of a configuration adds to its backbone, for the verdict's subject: "LLM augmentation"
    when the LLM's edges (ω3 > 0), user profiles and item attributes (scale > 0) are all in use, else which of them
    are, or that none is (a tuned configuration may switch any of them off, paper Eq. 8 with a scale of 0)."""
    made = [name for name, on in (("augmented edges", llmrec.omega3 > 0), ("user profiles", llmrec.profile_scale > 0),
                                  ("item attributes", llmrec.attribute_scale > 0)) if on]
    if len(made) == 3:
        return "LLM augmentation"
    if made:
        return f"LLM augmentation ({' and '.join(made)} only)"
    if llmrec.modal_scale > 0:
        return "LLMRec with item text features and no LLM-made input"
    return "LLMRec with every augmentation off"


def verdict_sentence(frame: pd.DataFrame, baseline: str, variant: str, *, cost_usd: float | None = None,
                     metric: str = "recall", k: int = 20, what: str = "LLM augmentation") -> str:
    """One plain sentence, chosen from the numbers: improved / made worse (paired t-test p < 0.05 over seeds) or
    did not measurably change test metric@k, with the relative change, p, the number of seeds and the cost.

    E.g. "LLM augmentation did not measurably change test Recall@20 (-3.1 %, p = 0.21, 5 seeds; cost $0.59)."
    """
    c = compare(frame, baseline, variant, metric, k)
    name = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "hit": "HitRate"}.get(metric, metric)
    target = f"test {name}@{k}"
    cost = "" if cost_usd is None else f"; cost ${cost_usd:.2f}"
    if c["n"] == 0:
        return f"{what}: no {target} to compare ({variant} or {baseline} was not evaluated)."
    if np.isnan(c["rel"]):  # the baseline scored 0: no relative change
        return (f"{what}: {baseline} has test {name}@{k} 0 and {variant} {c['variant']:.4f}, so there is no relative "
                f"change to test ({c['n']} seeds{cost}).")
    change = f"{c['rel'] * 100:+.1f} %"
    if c["n"] < 2:
        return (f"{what} changed {target} by {change} on a single seed: no significance test, so no verdict "
                f"(run with more seeds){cost}.")
    stats = f"({change}, p = {c['p']:.2g}, {c['n']} seeds{cost})"
    if c["p"] < ALPHA and c["rel"] > 0:
        return f"{what} improved {target} {stats}."
    if c["p"] < ALPHA and c["rel"] < 0:
        return f"{what} made {target} worse {stats}."
    return f"{what} did not measurably change {target} {stats}."


def group_markdown(groups: pd.DataFrame, baseline: str, metrics: Sequence[tuple[str, int]] = (("recall", 20),
                                                                                                ("ndcg", 20))
                   ) -> list[str]:
    """Markdown lines: per user group (rows) and variant, mean ± std over seeds of each metric on test, with the
    relative change against `baseline` and the paired t-test p over seeds (`group_frame` rows in)."""
    variants = list(dict.fromkeys([baseline, *groups["variant"]]))
    head = ["group", "users", "variant"] + [f"{SHORT.get(m, m)}@{k}" for m, k in metrics]
    head += [f"Δ {SHORT.get(m, m)}@{k}" for m, k in metrics] + [f"p {SHORT.get(m, m)}@{k}" for m, k in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, part in groups.groupby("group", sort=True):
        users = int(part["users"].iloc[0]) if "users" in part else ""
        for variant in variants:
            if not (part["variant"] == variant).any():
                continue
            cells = [str(group), str(users), variant]
            stats = [compare(part, baseline, variant, m, k) for m, k in metrics]
            for (m, k) in metrics:
                v = part[(part["variant"] == variant) & (part["metric"] == m) & (part["k"] == k)]["value"]
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}")
            cells += ["" if variant == baseline or np.isnan(c["rel"]) else f"{c['rel']:+.1%}" for c in stats]
            cells += ["" if variant == baseline or np.isnan(c["p"]) else f"{c['p']:.2g}" for c in stats]
            lines.append("| " + " | ".join(cells) + " |")
    return lines
