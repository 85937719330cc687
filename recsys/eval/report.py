"""The run report: one long metrics table (variant, seed, split, metric, k, value) and its Markdown summary,
mean ± std per variant and a paired t-test (over seeds) of each variant against the baseline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

COLUMNS = ("variant", "seed", "split", "metric", "k", "value")


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


def report_markdown(frame: pd.DataFrame, baseline: str = "lightgcn", title: str = "LLMRec run") -> str:
    """Markdown: per split a table of metric@k rows and one mean ± std column per variant, with Δ and p."""
    summary = summary_frame(frame, baseline)
    variants = list(dict.fromkeys(frame["variant"]))
    seeds = sorted(set(frame["seed"]))
    lines = [f"# {title}", "", f"Variants: {', '.join(variants)}. Seeds: {', '.join(map(str, seeds))} "
             f"(n = {len(seeds)}). Baseline: {baseline}.", ""]
    if len(seeds) < 2:
        lines += ["One seed: no standard deviation or t-test (run with more seeds for p-values).", ""]
    else:
        lines += ["p: two-sided paired t-test over seeds against the baseline (scipy.stats.ttest_rel).", ""]
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
