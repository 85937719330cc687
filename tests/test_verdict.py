"""The verdict sentence and the user-group table: chosen from the numbers, including "no"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.config import LLMRecConfig
from recsys.eval.report import metrics_frame, metrics_rows
from recsys.eval.verdict import (
    augmentation_name,
    group_frame,
    group_markdown,
    group_rows,
    one_group_note,
    quartile_groups,
    verdict_sentence,
)


def frame_of(base: list[float], other: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (b, o) in enumerate(zip(base, other, strict=True)):
        rows += metrics_rows("lightgcn", seed, {"test": {"recall@20": b}})
        rows += metrics_rows("llmrec", seed, {"test": {"recall@20": o}})
    return metrics_frame(rows)


def test_verdict_says_improved_worse_or_no_change_from_the_paired_test() -> None:
    base = [0.30, 0.31, 0.29, 0.30, 0.32]
    better = verdict_sentence(frame_of(base, [b + 0.03 for b in base]), "lightgcn", "llmrec", cost_usd=0.59)
    assert better.startswith("LLM augmentation improved test Recall@20 (+") and "5 seeds; cost $0.59" in better
    worse = verdict_sentence(frame_of(base, [b - 0.02 + 0.001 * i for i, b in enumerate(base)]), "lightgcn", "llmrec")
    assert worse.startswith("LLM augmentation made test Recall@20 worse (-")
    noisy = verdict_sentence(frame_of(base, [0.31, 0.28, 0.30, 0.33, 0.29]), "lightgcn", "llmrec")
    assert noisy.startswith("LLM augmentation did not measurably change test Recall@20 (")
    assert "p = " in noisy and "5 seeds" in noisy
    single = verdict_sentence(frame_of([0.3], [0.4]), "lightgcn", "llmrec")
    assert "single seed" in single and "no verdict" in single


def test_quartile_groups_label_sparse_to_dense_and_merge_equal_edges() -> None:
    counts = pd.Series(np.arange(1, 101), index=np.arange(100) + 1000)
    labels = quartile_groups(counts)
    assert labels.nunique() == 4 and labels.loc[1000].startswith("Q1 (1-") and labels.loc[1099].startswith("Q4")
    assert quartile_groups(pd.Series([5] * 10)).nunique() == 1  # a capped split: one group
    assert one_group_note(pd.Series([5] * 10)).startswith("One group: every user has 5 training interactions")
    assert one_group_note(counts) is None


def test_group_table_pairs_seeds_within_each_group() -> None:
    users = pd.DataFrame({"user_id": [1, 2, 3, 4]})
    groups = pd.Series(["Q1", "Q1", "Q2", "Q2"], index=[1, 2, 3, 4], dtype="string")
    rows = []
    for seed in range(3):
        rows += group_rows("lightgcn", seed, users.assign(**{"recall@20": [0.1, 0.1, 0.5, 0.5]}), groups)
        rows += group_rows("llmrec", seed, users.assign(**{"recall@20": [0.3 + 0.01 * seed, 0.3, 0.5, 0.5]}), groups)
    frame = group_frame(rows)
    assert set(frame["group"]) == {"Q1", "Q2"} and frame["users"].max() == 2
    lines = group_markdown(frame, "lightgcn", metrics=(("recall", 20),))
    q1 = next(line for line in lines if line.startswith("| Q1 | 2 | llmrec"))
    assert "+" in q1.split("|")[5]  # Q1 improves (0.1 -> ~0.3)
    q2 = next(line for line in lines if line.startswith("| Q2 | 2 | llmrec"))
    assert "+0.0%" in q2


def test_verdict_subject_names_the_llm_inputs_in_use() -> None:
    assert augmentation_name(LLMRecConfig()) == "LLM augmentation"
    edges_only = LLMRecConfig(profile_scale=0.0, attribute_scale=0.0)
    assert augmentation_name(edges_only) == "LLM augmentation (augmented edges only)"
    text_only = LLMRecConfig(omega3=0.0, profile_scale=0.0, attribute_scale=0.0, modal_scale=0.8)
    assert "no LLM-made input" in augmentation_name(text_only)
    assert augmentation_name(text_only.model_copy(update={"modal_scale": 0.0})) == "LLMRec with every augmentation off"


def test_verdict_says_when_the_baseline_scored_zero() -> None:
    zero = verdict_sentence(frame_of([0.0, 0.0], [0.1, 0.2]), "lightgcn", "llmrec")
    assert "lightgcn has test Recall@20 0 and llmrec 0.1500" in zero and "2 seeds" in zero
