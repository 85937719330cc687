"""The run report: one long metrics table (variant, seed, split, metric, k, value) and its Markdown summary:
the ablation table (paper Table 3), mean ± std per variant and split with a paired t-test (over seeds) of each
variant against the baseline, and the cost per LLM strategy (paper Table 7, recsys/eval/cost_rate.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

COLUMNS = ("variant", "seed", "split", "metric", "k", "value")
# Paper Table 3's columns, in its order (test split); the t-test is shown for the headline R@20 and N@20.
TABLE3_COLUMNS = (("recall", 10), ("ndcg", 10), ("recall", 20), ("ndcg", 20), ("recall", 50), ("ndcg", 50),
                  ("precision", 20))
TABLE3_TESTED = (("recall", 20), ("ndcg", 20))
SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "hit": "H", "ndcg_official": "N_off"}
OFFICIAL_NDCG_NOTE = ("ndcg_official: IDCG from retrieved hits, as the official code; not comparable with "
                      "textbook NDCG (ndcg: IDCG over min(|test items|, K) ranks)")


def metrics_rows(variant: str, seed: int, metrics: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Rows of the long table from {"valid": {"recall@10": ..}, "test": {..}}."""
    rows = []
    for split, values in metrics.items():
        for name, value in values.items():
            metric, _, k = name.partition("@")
            rows.append({"variant": variant, "seed": int(seed), "split": split, "metric": metric,
                         "k": int(k) if k.isdigit() else -1, "value": float(value)})
    return rows


def metrics_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return frame.astype({"variant": "string", "seed": "int64", "split": "string", "metric": "string",
                         "k": "int64", "value": "float64"})


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value (scipy.stats.ttest_rel); NaN with fewer than 2 pairs or no variance."""
    if len(a) < 2 or len(a) != len(b):
        return float("nan")
    from scipy.stats import ttest_rel

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0  # constant difference: the t statistic is undefined
    return float(ttest_rel(a, b).pvalue)


def summary_frame(frame: pd.DataFrame, baseline: str = "lightgcn") -> pd.DataFrame:
    """Per split, metric, k and variant: n seeds, mean, std (ddof 1; 0 for one seed), relative change against the
    baseline's mean and the paired t-test p-value against it (over the seeds both have)."""
    out = []
    for (split, metric, k), group in frame.groupby(["split", "metric", "k"], sort=True):
        base = group[group["variant"] == baseline].set_index("seed")["value"]
        for variant, g in group.groupby("variant", sort=False):
            v = g.set_index("seed")["value"]
            seeds = v.index.intersection(base.index)
            rel = (v.mean() / base.mean() - 1.0) if len(base) and base.mean() else float("nan")
            p = float("nan") if variant == baseline else paired_p(v[seeds].to_numpy(), base[seeds].to_numpy())
            out.append({"split": split, "metric": metric, "k": int(k), "variant": variant, "n": len(v),
                        "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                        "rel_vs_baseline": float("nan") if variant == baseline else float(rel), "p_value": p})
    return pd.DataFrame(out)


def ablation_table(frame: pd.DataFrame, baseline: str = "lightgcn", split: str = "test") -> pd.DataFrame:
    """Paper Table 3 as a frame: one row per variant (baseline first, then in order of appearance), for each of
    R@10 N@10 R@20 N@20 R@50 N@50 P@20 the mean and std over seeds, and the paired t-test p-value against the
    baseline for R@20 and N@20 (NaN for the baseline and with fewer than 2 common seeds)."""
    summary = summary_frame(frame[frame["split"] == split], baseline)
    variants = list(dict.fromkeys([baseline, *frame["variant"]]))
    rows = []
    for variant in variants:
        part = summary[summary["variant"] == variant].set_index(["metric", "k"])
        if part.empty:
            continue
        row: dict[str, object] = {"variant": variant, "seeds": int(part["n"].max())}
        for metric, k in TABLE3_COLUMNS:
            name = f"{SHORT[metric]}@{k}"
            found = (metric, k) in part.index
            row[name] = float(part.at[(metric, k), "mean"]) if found else float("nan")
            row[f"{name} std"] = float(part.at[(metric, k), "std"]) if found else float("nan")
        for metric, k in TABLE3_TESTED:
            found = (metric, k) in part.index
            row[f"p {SHORT[metric]}@{k}"] = float(part.at[(metric, k), "p_value"]) if found else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: float, fmt: str) -> str:
    return "" if value is None or np.isnan(value) else format(value, fmt)


def ablation_markdown(table: pd.DataFrame) -> list[str]:
    """The Table-3 frame as Markdown lines: mean ± std per metric, then the two p-value columns."""
    metrics = [f"{SHORT[m]}@{k}" for m, k in TABLE3_COLUMNS]
    tested = [f"p {SHORT[m]}@{k}" for m, k in TABLE3_TESTED]
    head = ["variant", *metrics, *tested]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.to_dict("records"):
        cells = [str(row["variant"])]
        cells += [f"{_cell(row[m], '.4f')} ± {_cell(row[f'{m} std'], '.4f')}" if not np.isnan(row[m]) else ""
                  for m in metrics]
        cells += [_cell(row[t], ".3g") for t in tested]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_markdown(frame: pd.DataFrame, baseline: str = "lightgcn", title: str = "LLMRec run",
                    extra: list[str] | None = None, png: str | None = None, lead: list[str] | None = None) -> str:
    """Markdown: `lead` (e.g. the verdict) under the title, the Table-3 ablation summary on test (with `png`, the
    bar chart's file name, linked), then `extra` (e.g. the cost section), then per split a table of metric@k rows
    and one mean ± std column per variant, with Δ and p."""
    summary = summary_frame(frame, baseline)
    variants = list(dict.fromkeys(frame["variant"]))
    seeds = sorted(set(frame["seed"]))
    lines = [f"# {title}", "", *([*lead, ""] if lead else []),
             f"Variants: {', '.join(variants)}. Seeds: {', '.join(map(str, seeds))} "
             f"(n = {len(seeds)}). Baseline: {baseline}.", ""]
    if len(seeds) < 2:
        lines += ["One seed: no standard deviation or t-test (run with more seeds for p-values).", ""]
    else:
        lines += ["p: two-sided paired t-test over seeds against the baseline (scipy.stats.ttest_rel).", ""]
    if (frame["metric"] == "ndcg_official").any():
        lines += [f"{OFFICIAL_NDCG_NOTE}.", ""]
    if (frame["split"] == "test").any():
        lines += ["## Ablation (paper Table 3), test: mean ± std over seeds", ""]
        lines += ablation_markdown(ablation_table(frame, baseline))
        lines += ["", "N: textbook NDCG. Early stopping and model selection use textbook NDCG@10 on VALID.", ""]
        if png:
            lines += [f"![test R@20 and N@20 per variant]({png})", ""]
    lines += list(extra or [])
    others = [v for v in variants if v != baseline]
    for split in ("test", "valid"):
        part = summary[summary["split"] == split]
        if part.empty:
            continue
        head = ["metric", *variants, *[f"Δ {v}" for v in others], *[f"p {v}" for v in others]]
        lines += [f"## {split}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for (metric, k), g in part.groupby(["metric", "k"], sort=True):
            by = g.set_index("variant")
            cells = [f"{metric}@{k}"]
            for v in variants:
                cells.append(f"{by.at[v, 'mean']:.4f} ± {by.at[v, 'std']:.4f}" if v in by.index else "")
            for v in others:
                rel = by.at[v, "rel_vs_baseline"] if v in by.index else float("nan")
                cells.append("" if np.isnan(rel) else f"{rel:+.1%}")
            for v in others:
                p = by.at[v, "p_value"] if v in by.index else float("nan")
                cells.append("" if np.isnan(p) else f"{p:.3g}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
