"""The rows of the Llama4Rec table: which backbone list, which ranking prompt and which weighting each one uses.

backbone: "base" is the backbone trained on D, "augmented" the one retrained on D' = D + the LLM's pairwise
triplets ([L4R] §4.2). prompt: the LLM ranking the list with prompt augmentation ("augmented": the similar user's
history and the backbone's prediction, §4.3), without it ("plain"), or no LLM (None). weighting: "backbone"
(alpha = 0), "llm" (alpha = 1), "adaptive" (alpha_u, Eq. 7, alpha1 and alpha2 chosen on VALID) or "uniform" (one
alpha for every user, chosen on VALID: the paper's "w/o AA", Table 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backbone = Literal["base", "augmented"]
Prompt = Literal["plain", "augmented"]
Weighting = Literal["backbone", "llm", "adaptive", "uniform"]


@dataclass(frozen=True)
class Variant:
    """One row of the table."""

    name: str
    backbone: Backbone
    prompt: Prompt | None
    weighting: Weighting
    description: str


VARIANTS: tuple[Variant, ...] = (
    Variant("backbone", "base", None, "backbone", "the backbone's own top-k' order (trained on D)"),
    Variant("backbone-DA", "augmented", None, "backbone", "the backbone retrained on D' (data augmentation only)"),
    Variant("llm-rerank", "base", "plain", "llm", "the LLM's ranking alone of the D backbone's list, plain prompt"),
    Variant("llama4rec", "augmented", "augmented", "adaptive", "D' backbone, augmented prompt, adaptive weights"),
    Variant("w/o-DA", "base", "augmented", "adaptive", "as llama4rec on the D backbone"),
    Variant("w/o-PA", "augmented", "plain", "adaptive", "as llama4rec with the plain prompt"),
    Variant("w/o-AA", "augmented", "augmented", "uniform", "as llama4rec with one alpha for every user"),
)
BY_NAME = {v.name: v for v in VARIANTS}


def rankings_needed() -> list[tuple[Backbone, Prompt]]:
    """The (backbone, prompt) pairs whose lists the LLM must rank, in a fixed order."""
    return list(dict.fromkeys((v.backbone, v.prompt) for v in VARIANTS if v.prompt is not None))
