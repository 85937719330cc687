"""Adaptive aggregation of the backbone's and the LLM's rankings (Luo et al., arXiv 2401.13870 [L4R] §4.4;
reference notes B.4).

- Long-tail coefficient: l_u = log(N(u) + 1), N(u) the user's training interactions. The extracted [L4R] text lost
  this formula; this form is the one a reimplementation citing the published version uses (reference notes B.4).
- Adaptive weight (Eq. 7), a reconstruction (reference notes B.4: "verify against the arXiv v2 PDF"):
  alpha_u = alpha1 * max(alpha2, (l_max - l_u) / (l_max - l_min)), l_max and l_min over all users. The further in
  the tail (small N(u)), the larger alpha_u, the more weight on the LLM.
- Utilities (§4.4.2): U = -position (C = 1) for both rankings; U_final = alpha_u * U_LLM + (1 - alpha_u) * U_conv
  (Eq. 6), sorted descending; ties keep the backbone's order.

Rankings are held relative to the backbone's list: column j is the backbone's item at position j + 1, and
`llm_position[u, j]` is where the LLM put that item (1-based).
"""

from __future__ import annotations

import numpy as np


def long_tail(n_interactions: np.ndarray) -> np.ndarray:
    """l_u = log(N(u) + 1) (natural log) per user; float64 [U]. Raises ValueError for a negative count."""
    n = np.asarray(n_interactions, dtype=np.float64)
    if (n < 0).any():
        raise ValueError("interaction counts must be >= 0")
    return np.log(n + 1.0)


def adaptive_alpha(n_interactions: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """alpha_u = alpha1 * max(alpha2, (l_max - l_u) / (l_max - l_min)) for every user of `n_interactions` (all
    users: l_max and l_min are taken over them); float64 [U] in [0, alpha1]. When every user has the same
    count the ratio is 0 for all (nobody is further in the tail than anybody else), so alpha_u = alpha1 * alpha2."""
    if not 0.0 <= alpha1 <= 1.0 or not 0.0 <= alpha2 <= 1.0:
        raise ValueError(f"alpha1 and alpha2 must lie in [0, 1], got {alpha1}, {alpha2}")
    ell = long_tail(n_interactions)
    if ell.size == 0:
        return ell
    spread = float(ell.max() - ell.min())
    ratio = (ell.max() - ell) / spread if spread > 0 else np.zeros_like(ell)
    return alpha1 * np.maximum(alpha2, ratio)


def aggregate(llm_position: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The final order of each user's list: [U, k] backbone columns, best first.

    llm_position: [U, k] 1-based position the LLM gave the backbone's item in column j (the backbone's own
    position is j + 1). alpha: [U] (or a scalar) weight of the LLM. U_final[u, j] = -(alpha_u * llm_position[u, j]
    + (1 - alpha_u) * (j + 1)); sorted descending, ties in the backbone's order (a stable sort over columns).
    """
    llm_position = np.asarray(llm_position, dtype=np.float64)
    if llm_position.ndim != 2:
        raise ValueError(f"llm_position must be [U, k], got shape {llm_position.shape}")
    weight = np.broadcast_to(np.asarray(alpha, dtype=np.float64).reshape(-1, 1) if np.ndim(alpha) else
                             np.float64(alpha), (llm_position.shape[0], 1))
    conv_position = np.arange(1, llm_position.shape[1] + 1, dtype=np.float64)
    utility = -(weight * llm_position + (1.0 - weight) * conv_position)
    return np.argsort(-utility, axis=1, kind="stable")
