"""Feature-masked auto-encoder of LLMRec (paper §3.3.2, Eqs. 8-9): mask, encode over the graph, restore.

The encoder is the LLMRec feature branch itself; this module only owns the mask tokens, the masks and the
decoders. Differences from the official code (reference notes A.4, A.8.3), all deliberate:
- the decoders are trained: they are submodules, so their parameters are in the model's optimizer (the official
  Decoder has its own optimizer that is never stepped);
- masking never writes to the stored features: masked inputs are new tensors (`torch.where`), so evaluation and
  later batches always see the original features (the official code overwrites them in place);
- the decoder is a plain Linear (the official LeakyReLU(True) has slope 1.0, i.e. is the identity anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_cosine_error(pred: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Eq. 9: mean over rows of (1 - cos(pred, target))^gamma ([REPO] sce_loss with alpha_l = gamma)."""
    cos = F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    return (1.0 - cos).clamp_min(0.0).pow(gamma).mean()


class FeatureMAE(nn.Module):
    """Mask tokens and decoders for the masked feature sources.

    sources: name -> (side, raw feature dim) with side "user" or "item". One node mask is drawn per side and
    shared by that side's sources: Eq. 8 masks a node's augmented features.
    """

    def __init__(
        self,
        sources: Mapping[str, tuple[str, int]],
        embedding_dim: int,
        *,
        mask_rate: float,
        gamma: float,
        token: Literal["learnable", "mean"] = "learnable",
    ) -> None:
        super().__init__()
        self.sources = dict(sources)
        self.mask_rate = float(mask_rate)
        self.gamma = float(gamma)
        self.token_kind = token
        # Eq. 8: a learnable mask vector per source, in the raw feature space (zeros to start, as in GraphMAE).
        self.tokens = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(dim)) for name, (_, dim) in self.sources.items()}
            if token == "learnable" else {}
        )
        self.decoders = nn.ModuleDict({name: nn.Linear(embedding_dim, dim) for name, (_, dim) in self.sources.items()})
        for dec in self.decoders.values():
            nn.init.xavier_uniform_(dec.weight)
            nn.init.zeros_(dec.bias)

    def sample_masks(self, n_users: int, n_items: int, device: torch.device) -> dict[str, Tensor]:
        """Bool node masks per side ({"user": [n_users], "item": [n_items]}) from torch's global RNG.

        int(mask_rate * n) nodes per side; a side with no masked source, or rate 0, gets no entry.
        """
        masks: dict[str, Tensor] = {}
        for side, n in (("user", n_users), ("item", n_items)):
            k = int(self.mask_rate * n)
            if k == 0 or not any(s == side for s, _ in self.sources.values()):
                continue
            mask = torch.zeros(n, dtype=torch.bool, device=device)
            mask[torch.randperm(n, device=device)[:k]] = True
            masks[side] = mask
        return masks

    def token(self, name: str, x: Tensor) -> Tensor:
        """The mask token [raw dim] of source `name` with unmasked raw feature x: learnable, or x's column mean."""
        return (self.tokens[name] if self.token_kind == "learnable" else x.mean(0)).to(x.dtype)

    def mask_input(self, name: str, x: Tensor, mask: Tensor) -> Tensor:
        """A NEW tensor: x with the masked rows replaced by the mask token (learnable, or the column mean)."""
        return torch.where(mask.unsqueeze(1), self.token(name, x).unsqueeze(0), x)

    def loss(self, encoded: Mapping[str, Tensor], raw: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """Eq. 9 averaged over the masked sources: decode each masked node's encoded feature [n_side, d] and
        compare it with its original raw feature. A constant zero when nothing is masked."""
        terms = []
        for name, (side, _) in self.sources.items():
            mask = masks.get(side)
            if mask is None or not bool(mask.any()):
                continue
            idx = torch.nonzero(mask).squeeze(1)
            pred = self.decoders[name](encoded[name].index_select(0, idx))
            terms.append(scaled_cosine_error(pred, raw[name].index_select(0, idx), self.gamma))
        if not terms:
            return next(self.decoders.parameters()).new_zeros(())
        return torch.stack(terms).mean()
