"""One table from several `llmrec tune` / `llmrec run` output folders: test R@20 and N@20 (mean ± std over seeds)
of each variant, its change against the folder's baseline and the paired t-test p-value, plus the wall time and
trial budget of the studies where the folder has them.

The sparse-data protocol of the README: the same reference split, training capped at K interactions per user::

    for K in 3 5 10; do
      llmrec tune --split-dir ../shared/bench/ml100k-split --max-train-per-user $K --trials 30 --seeds 5 \
          --out runs/sparse/K$K
    done
    llmrec tune --split-dir ../shared/bench/ml100k-split --trials 15 --seeds 5 --out runs/sparse/Kall
    python bench/sparse_summary.py runs/sparse/K3 runs/sparse/K5 runs/sparse/K10 runs/sparse/Kall

Prints Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from recsys.eval.verdict import compare


def mean_std(frame: pd.DataFrame, variant: str, metric: str, k: int) -> str:
    part = frame[(frame["split"] == "test") & (frame["variant"] == variant) & (frame["metric"] == metric)
                 & (frame["k"] == k)]
    per_seed = part.groupby("seed")["value"].mean()
    return f"{per_seed.mean():.4f} ± {per_seed.std(ddof=1):.4f}" if len(per_seed) > 1 else f"{per_seed.mean():.4f}"


def study_line(folder: Path) -> str:
    """Per model: trials by state, the summed trial time and the best valid NDCG@10, from its best_config.json."""
    parts = []
    for summary_file in sorted((folder / "tuning").glob("*/best_config.json")):
        summary = json.loads(summary_file.read_text())
        states = ", ".join(f"{n} {s.lower()}" for s, n in summary["trials"].items())
        parts.append(f"{summary_file.parent.name}: {states}, {summary['trial_seconds'] / 60:.0f} min of trials, "
                     f"best valid N@10 {summary['best_value']:.4f}")
    return "; ".join(parts)


def folder_rows(folder: Path) -> list[str]:
    frame = pd.read_parquet(folder / "metrics.parquet")
    if "group" in frame:
        frame = frame[frame["group"].isna()]
    config = json.loads((folder / "config.json").read_text())["config"]
    baseline = config["llmrec"]["backbone"]
    cap = config.get("split", {}).get("max_train_per_user")
    label = f"K = {cap}" if cap else "K = all"
    rows = []
    for variant in dict.fromkeys(frame["variant"]):
        r, n = mean_std(frame, variant, "recall", 20), mean_std(frame, variant, "ndcg", 20)
        if variant == baseline:
            rows.append(f"| {label} | {variant} | {r} | {n} | | | |")
            continue
        cr, cn = compare(frame, baseline, variant, "recall", 20), compare(frame, baseline, variant, "ndcg", 20)
        rows.append(f"| {label} | {variant} | {r} | {n} | {cr['rel'] * 100:+.1f} % | {cr['p']:.2g} | {cn['p']:.2g} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    print("| setting | variant | test R@20 | test N@20 | R@20 vs baseline | p R@20 | p N@20 |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        print("\n".join(folder_rows(folder)))
    print()
    for folder in args.folders:
        line = study_line(folder)
        if line:
            print(f"- {folder.name}: {line}")


if __name__ == "__main__":
    main()
