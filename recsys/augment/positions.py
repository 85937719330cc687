"""Position bias of the edge augmentation: where the liked and disliked candidates sit in the base model's order.

LLM rankers favour the first candidates listed (position bias; Hou et al., "Large Language Models are Zero-Shot
Rankers for Recommender Systems", ECIR 2024). Listed best first, a biased model's "liked" edge copies the base
model's top pick; shuffled per user, the bias spreads over all ranks. The table counts, per base-model rank
(1 = its best), how often the picked liked / disliked candidate had that rank: flat when the picks do not follow
the base model, piled at rank 1 when they copy it.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import chisquare


def position_table(edges: pd.DataFrame, n_candidates: int) -> pd.DataFrame:
    """rank (1..n_candidates), liked, disliked: how many augmented edges picked the candidate of that base-model
    rank (`pos_rank`, `neg_rank` of augmented_edges)."""
    ranks = pd.RangeIndex(1, n_candidates + 1, name="rank")
    liked = edges["pos_rank"].value_counts().reindex(ranks, fill_value=0)
    disliked = edges["neg_rank"].value_counts().reindex(ranks, fill_value=0)
    return pd.DataFrame({"rank": ranks, "liked": liked.to_numpy(), "disliked": disliked.to_numpy()})


def uniform_p(counts: pd.Series) -> float:
    """The chi-square test's p-value of `counts` against equal counts over the ranks (1.0 with no counts)."""
    total = float(counts.sum())
    return 1.0 if total == 0 else float(chisquare(counts.to_numpy(dtype=float)).pvalue)


def position_markdown(table: pd.DataFrame) -> list[str]:
    """Markdown lines: the table, the share of liked picks at rank 1, and the uniformity p-values."""
    n = int(table["liked"].sum())
    if n == 0:
        return []
    top = table.loc[table["rank"] == 1, "liked"].sum() / n
    lines = ["## Picked candidates by base-model rank", "",
             f"{n} augmented edges; rank 1 is the base model's best candidate. {top:.1%} of the liked picks are "
             f"its best (uniform: {1 / len(table):.1%}); chi-square p against a uniform spread: liked "
             f"{uniform_p(table['liked']):.3g}, disliked {uniform_p(table['disliked']):.3g}.", "",
             "| rank | " + " | ".join(str(r) for r in table["rank"]) + " |",
             "|---|" + "---|" * len(table)]
    for column in ("liked", "disliked"):
        lines.append(f"| {column} | " + " | ".join(str(int(v)) for v in table[column]) + " |")
    return [*lines, ""]
