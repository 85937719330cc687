"""The report on a small synthetic metrics frame: the Table-3 summary, the bar chart (a real PNG) and the cost per
strategy with its cost/improvement rate (Table 7) from a real ledger."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from recsys.eval.cost_rate import cost_improvement, cost_markdown, stage_costs
from recsys.eval.plot import ablation_png
from recsys.eval.report import OFFICIAL_NDCG_NOTE, ablation_table, metrics_frame, metrics_rows, report_markdown
from storage.ledger import LedgerWriter, read_ledger

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# test R@20 per seed (2020, 2021); every other metric is R@20 scaled, so each column differs
R20 = {"lightgcn": (0.30, 0.32), "llmrec": (0.40, 0.40), "w/o-u-i": (0.30, 0.34), "w/o-u": (0.42, 0.42)}


def synthetic_frame() -> pd.DataFrame:
    rows = []
    for variant, values in R20.items():
        for seed, r20 in zip((2020, 2021), values, strict=True):
            test = {"recall@10": r20 / 2, "ndcg@10": r20 / 3, "recall@20": r20, "ndcg@20": r20 / 2.5,
                    "recall@50": r20 * 1.5, "ndcg@50": r20 / 2, "precision@20": r20 / 10,
                    "ndcg_official@20": r20 / 2}
            rows += metrics_rows(variant, seed, {"test": test, "valid": {"ndcg@10": r20 / 3}})
    return metrics_frame(rows)


def test_table3_means_stds_and_p_values() -> None:
    frame = synthetic_frame()
    table = ablation_table(frame).set_index("variant")
    assert list(table.index) == ["lightgcn", "llmrec", "w/o-u-i", "w/o-u"]
    assert table.at["w/o-u-i", "R@20"] == pytest.approx(0.32)
    assert table.at["w/o-u-i", "R@20 std"] == pytest.approx(np.std([0.30, 0.34], ddof=1))
    assert table.at["llmrec", "P@20"] == pytest.approx(0.04)
    assert table.at["llmrec", "N@10"] == pytest.approx(0.40 / 3)
    expected_p = ttest_rel([0.30, 0.34], [0.30, 0.32]).pvalue
    assert table.at["w/o-u-i", "p R@20"] == pytest.approx(expected_p)
    assert np.isnan(table.at["lightgcn", "p R@20"])
    md = report_markdown(frame, extra=["## extra section", ""], png="report.png")
    assert "| w/o-u-i | 0.1600 ± 0.0141 | 0.1067 ± 0.0094 | 0.3200 ± 0.0283 |" in md
    assert "![test R@20 and N@20 per variant](report.png)" in md and "## extra section" in md
    assert OFFICIAL_NDCG_NOTE in md and "| ndcg_official@20 |" in md
    assert md.index("Ablation (paper Table 3)") < md.index("## extra section") < md.index("## test")


def test_png_is_a_real_image() -> None:
    png = ablation_png(synthetic_frame())
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    from io import BytesIO

    import matplotlib.image as mpimg

    pixels = mpimg.imread(BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0  # decodes, and is not blank
    with pytest.raises(ValueError, match="no test metrics"):
        ablation_png(synthetic_frame().query("split == 'valid'"))


def test_cost_per_strategy_and_rate(tmp_path) -> None:
    with LedgerWriter(tmp_path, "run-a", "edges") as w:
        w.append({"stage": "edges", "model": "m", "cached": False, "outcome": "ok", "cost_usd": 0.25})
        w.append({"stage": "edges", "model": "m", "cached": False, "outcome": "error", "cost_usd": 0.05})
        w.append({"stage": "edges", "model": "m", "cached": True, "outcome": "ok", "cost_usd": 9.0})  # free
        w.append({"stage": "profiles", "model": "m", "cached": False, "outcome": "ok", "cost_usd": 0.10})
    with LedgerWriter(tmp_path, "run-b", "attributes") as w:
        w.append({"stage": "attributes", "model": "m", "cached": False, "outcome": "ok", "cost_usd": 0.02})
    costs = stage_costs(read_ledger(tmp_path))
    assert costs == pytest.approx({"edges": 0.30, "profiles": 0.10, "attributes": 0.02})

    table = cost_improvement(synthetic_frame(), costs).set_index("strategy")
    # u-i edges: full 0.40 vs w/o-u-i 0.32 -> +25 %, 0.30 USD / 25 = 0.012 USD per 1 %
    assert table.at["u-i edges", "improvement_pct"] == pytest.approx(25.0)
    assert table.at["u-i edges", "rate"] == pytest.approx(0.012)
    # user profiling: w/o-u scores higher than the full model -> no rate
    assert table.at["user profiling", "improvement_pct"] == pytest.approx((0.40 / 0.42 - 1) * 100)
    assert np.isnan(table.at["user profiling", "rate"]) and "<= 0" in table.at["user profiling", "note"]
    # item attributes: w/o-i was not trained
    assert np.isnan(table.at["item attributes", "rate"]) and "w/o-i" in table.at["item attributes", "note"]
    md = "\n".join(cost_markdown(table.reset_index(), "a ledger", {"embed": 0.5}))
    assert "| u-i edges | 0.300000 | 0.4000 | w/o-u-i | 0.3200 | +25.00 % | 0.012 |" in md
    assert "| total | 0.420000 |" in md and "| (embed) | 0.500000 |" in md and "undefined" in md
