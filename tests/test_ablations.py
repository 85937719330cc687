"""The ablation variants (paper Table 3) as data: what each trains on, what it switches off, and name checks."""

from __future__ import annotations

import pytest

from recsys.ablations import FULL, VARIANTS, Variant, get_variant, parse_variants
from recsys.config import LLMRecConfig

FEATURES = {"item_text": "embed/a", "user_profile": "embed/b", "item_attr_director": "embed/c",
            "item_attr_country": "embed/d", "item_attr_language": "embed/e"}
EDGES = ["augment-edges/1", "augment-edges/2"]
ATTRS = {"item_attr_director", "item_attr_country", "item_attr_language"}


def test_paper_variants_and_what_they_use() -> None:
    assert set(VARIANTS) == {"llmrec", "w/o-u-i", "w/o-u", "w/o-i", "w/o-u&i", "w/o-prune", "w/o-MAE", "w/o-QC",
                             "prune-highest", "w/o-all"}
    base = LLMRecConfig()
    expected = {  # variant: (uses edges, feature sources, prune, mae, prune_keep)
        "llmrec": (True, set(FEATURES), True, True, "lowest"),
        "w/o-u-i": (False, set(FEATURES), True, True, "lowest"),
        "w/o-u": (True, set(FEATURES) - {"user_profile"}, True, True, "lowest"),
        "w/o-i": (True, set(FEATURES) - ATTRS, True, True, "lowest"),
        "w/o-u&i": (True, {"item_text"}, True, True, "lowest"),
        "w/o-prune": (True, set(FEATURES), False, True, "lowest"),
        "w/o-MAE": (True, set(FEATURES), True, False, "lowest"),
        "w/o-QC": (True, set(FEATURES), False, False, "lowest"),
        "prune-highest": (True, set(FEATURES), True, True, "highest"),
        "w/o-all": (False, set(), False, False, "lowest"),
    }
    for name, (edges, sources, prune, mae, keep) in expected.items():
        v = get_variant(name)
        assert (v.edge_refs(EDGES) == EDGES) is edges and (v.edge_refs(EDGES) is None) is (not edges), name
        assert set(v.feature_refs(FEATURES)) == sources, name
        cfg = v.llmrec_config(base)
        assert (cfg.prune, cfg.mae, cfg.prune_keep) == (prune, mae, keep), name
        # every other field is the full model's
        changed = {k for k in LLMRecConfig.model_fields if getattr(cfg, k) != getattr(base, k)}
        assert changed == set(v.overrides), name
    assert base.prune and base.mae  # the overrides never touch the shared config object
    assert get_variant(FULL).llmrec_config(base) is base  # same object -> same cache key as a plain run


def test_no_edges_at_all_stays_none() -> None:
    assert get_variant(FULL).edge_refs(None) is None


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown variant 'w/o-x'; known variants: llmrec, w/o-u-i, .*w/o-all"):
        get_variant("w/o-x")
    with pytest.raises(ValueError, match="w/o-x"):
        parse_variants("llmrec, w/o-x")
    assert parse_variants(" w/o-u , llmrec,w/o-u,") == ["w/o-u", "llmrec"]
    assert parse_variants(None) == [FULL] and parse_variants([]) == [FULL]


def test_bad_variant_definitions_fail() -> None:
    with pytest.raises(ValueError, match="not LLMRecConfig fields"):
        Variant("x", "bad", overrides={"omega9": 1})
    with pytest.raises(ValueError, match="unknown feature groups"):
        Variant("x", "bad", drop_features=("image",))
