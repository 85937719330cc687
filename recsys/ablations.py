"""The ablation variants of LLMRec (paper Table 3), as data: what each one trains on and what it switches off.

A variant names the feature groups it drops (user profile, item attributes), whether it uses the LLM's augmented
u-i edges, and the LLMRecConfig fields it overrides. Everything else equals the full model, so a variant with no
change ("llmrec") has exactly the full model's inputs and therefore its cache key: the full model trained by
`llmrec run` and by `llmrec ablate` is one artifact.

Names follow the paper (w/o-u-i, w/o-u, w/o-i, w/o-u&i, w/o-prune, w/o-QC), plus w/o-MAE (the QC mechanism's
other half alone), prune-highest (Eq. 7 as written keeps the highest-loss terms, "lowest" in LLMRecConfig, as the
official code; prune-highest keeps the lowest-loss ones, so a report shows both ends of the pruning rule) and
w/o-all, every augmentation off: the consistency check that LLMRec without augmentation is its backbone.
This module imports no torch and no prefect (the CLI reads it to check names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from recsys.config import LLMRecConfig

FULL = "llmrec"
# Which feature sources belong to which LLM strategy (source names as produced by the embedding stage).
PROFILE_PREFIX = "user_profile"
ATTRIBUTE_PREFIX = "item_attr_"
FEATURE_GROUPS = ("profile", "attribute", "other")


def source_group(source: str) -> str:
    """"profile", "attribute" or "other" (e.g. item_text, the dataset's own text) for a feature source name."""
    if source.startswith(PROFILE_PREFIX):
        return "profile"
    if source.startswith(ATTRIBUTE_PREFIX):
        return "attribute"
    return "other"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table: the full model minus some inputs or mechanisms."""

    name: str
    description: str
    use_edges: bool = True  # train on the LLM's augmented u-i edges (Eq. 6)
    drop_features: tuple[str, ...] = ()  # feature groups left out: "profile", "attribute", "other" (item text)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # LLMRecConfig fields set by this variant

    def __post_init__(self) -> None:
        unknown = set(self.drop_features) - set(FEATURE_GROUPS)
        if unknown:
            raise ValueError(f"variant {self.name!r}: unknown feature groups {sorted(unknown)}")
        bad = set(self.overrides) - set(LLMRecConfig.model_fields)
        if bad:
            raise ValueError(f"variant {self.name!r}: {sorted(bad)} are not LLMRecConfig fields")
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def llmrec_config(self, base: LLMRecConfig) -> LLMRecConfig:
        """`base` with this variant's overrides (the same object when there are none, so keys stay equal)."""
        return base.model_copy(update=dict(self.overrides)) if self.overrides else base

    def feature_refs(self, features: Mapping[str, str]) -> dict[str, str]:
        """The feature sources (name -> ref) this variant trains on."""
        return {name: ref for name, ref in features.items() if source_group(name) not in self.drop_features}

    def edge_refs(self, edges: list[str] | None) -> list[str] | None:
        """The augmented-edge batch refs this variant trains on (None: no augmented edges)."""
        return list(edges) if self.use_edges and edges is not None else None


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(FULL, "full LLMRec: augmented u-i edges, user profiles, item attributes, pruning and MAE"),
    Variant("w/o-u-i", "no augmented u-i edges (Eq. 6 off)", use_edges=False),
    Variant("w/o-u", "no user-profile feature", drop_features=("profile",)),
    Variant("w/o-i", "no item-attribute features", drop_features=("attribute",)),
    Variant("w/o-u&i", "neither user-profile nor item-attribute features", drop_features=("profile", "attribute")),
    Variant("w/o-prune", "no noise pruning of the BPR terms (Eq. 7 off)", overrides={"prune": False}),
    Variant("w/o-MAE", "no feature-masked auto-encoder (Eqs. 8-9 off)", overrides={"mae": False}),
    Variant("w/o-QC", "no quality constraint: neither pruning nor MAE", overrides={"prune": False, "mae": False}),
    Variant("prune-highest", "pruning keeps the lowest-loss terms (the other end of Eq. 7)",
            overrides={"prune_keep": "highest"}),
    Variant("w/o-all", "every augmentation off (no edges, no feature, no pruning, no MAE): LLMRec reduced to its "
            "backbone, which must score exactly as the baseline", use_edges=False,
            drop_features=FEATURE_GROUPS, overrides={"prune": False, "mae": False}),
)}


def get_variant(name: str) -> Variant:
    """The variant called `name`; ValueError listing the known names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}") from None


def parse_variants(names: str | Iterable[str] | None, default: Iterable[str] = (FULL,)) -> list[str]:
    """Variant names from a comma-separated string or a list, checked, duplicates dropped, order kept;
    None or empty gives `default`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    wanted = [n for n in (names or []) if n] or list(default)
    for n in wanted:
        get_variant(n)
    return list(dict.fromkeys(wanted))
