"""The report's bar chart: test Recall@20 and NDCG@20 per variant, mean over seeds with std error bars.

Rendered with matplotlib's Agg backend to PNG bytes in memory (no display needed, nothing written here: the
caller writes the bytes atomically through storage/)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

PLOTTED = (("recall", 20, "Recall@20"), ("ndcg", 20, "NDCG@20"))


def ablation_png(frame: pd.DataFrame, baseline: str = "lightgcn", split: str = "test") -> bytes:
    """PNG bytes of a grouped bar chart: one group per variant (baseline first), one bar per plotted metric."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: a headless backend, also where no display exists
    import matplotlib.pyplot as plt

    part = frame[frame["split"] == split]
    variants = list(dict.fromkeys([v for v in [baseline, *part["variant"]] if (part["variant"] == v).any()]))
    if not variants:
        raise ValueError(f"no {split} metrics to plot")
    x = np.arange(len(variants))
    width = 0.8 / len(PLOTTED)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) + 2), 3.8), dpi=100)
    try:
        for i, (metric, k, label) in enumerate(PLOTTED):
            sel = part[(part["metric"] == metric) & (part["k"] == k)].groupby("variant")["value"]
            means = sel.mean().reindex(variants)
            stds = sel.std(ddof=1).reindex(variants).fillna(0.0)  # one seed: no spread to show
            ax.bar(x + (i - (len(PLOTTED) - 1) / 2) * width, means.to_numpy(), width, yerr=stds.to_numpy(),
                   capsize=3, label=label)
        ax.set_xticks(x, variants, rotation=30, ha="right")
        n_seeds = part["seed"].nunique()
        ax.set_ylabel(f"{split} (mean ± std, {n_seeds} seed{'s' if n_seeds != 1 else ''})")
        ax.set_title("LLMRec ablation")
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
