"""The normalised user-item graph that LightGCN-style models propagate embeddings over."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def normalized_adjacency(train: np.ndarray, n_users: int, n_items: int) -> Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph on n_users + n_items nodes, as a float32 sparse CSR tensor.

    Node ids: users 0..n_users-1, then items n_users..n_users+n_items-1. A has a 1 for every distinct train pair
    in both directions (duplicate pairs count once). Nodes without edges (e.g. items never in train) get an empty
    row, so their propagated embedding is zero beyond layer 0.
    """
    pairs = np.unique(np.asarray(train, dtype=np.int64).reshape(-1, 2), axis=0)
    n = n_users + n_items
    u = pairs[:, 0]
    i = pairs[:, 1] + n_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    d_inv_sqrt = np.zeros(n, dtype=np.float64)
    np.divide(1.0, np.sqrt(deg), out=d_inv_sqrt, where=deg > 0)
    values = (d_inv_sqrt[rows] * d_inv_sqrt[cols]).astype(np.float32)
    # Sort by (row, col) so the CSR arrays can be built directly, without a COO coalesce.
    order = np.lexsort((cols, rows))
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg.astype(np.int64), out=crow[1:])
    with warnings.catch_warnings():  # torch flags sparse CSR as "beta" on every construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(cols[order]),
            torch.from_numpy(values[order]),
            size=(n, n),
            check_invariants=False,  # built sorted and in range above
        )


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; the backward pass is A^T g = A g, so no transposed copy is ever built."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, adj: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj = adj  # type: ignore[attr-defined]
        return adj @ x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, ctx.adj @ grad  # type: ignore[attr-defined]


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    """A @ x for a symmetric sparse A (such as `normalized_adjacency`), differentiable in x."""
    return _SymmetricSpMM.apply(adj, x)
