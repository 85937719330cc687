"""LLMRec's recommender (Wei et al., WSDM 2024, Stage 2): ID embeddings plus graph-propagated side features,
trained with BPR over original + LLM-augmented triplets, noise pruning and a feature-masked auto-encoder.

Feature sources are named "<side>_<kind>[_<suffix>]" with side "user" or "item"; the kind sets the group whose
scale the official fusion uses: "text" / "image" / "visual" / "modal" -> modal, "profile" -> profile,
"attr" -> attribute. E.g. "item_text", "item_image", "user_profile", "item_attr_director".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import LLMRecConfig
from recsys.data.dataset import DenseSplit
from recsys.models.base import LossParts, Recommender, init_embedding
from recsys.models.graph import normalized_adjacency, symmetric_spmm
from recsys.models.mae import FeatureMAE
from recsys.train.augmented import AugmentedEdges, pruned_bpr, sample_augmented
from recsys.train.losses import l2_reg

Side = Literal["user", "item"]
Group = Literal["modal", "profile", "attribute"]
_NAME = re.compile(r"^(user|item)_([a-z0-9]+)(_[a-z0-9_]+)?$")
_KINDS: dict[str, Group] = {"text": "modal", "image": "modal", "visual": "modal", "modal": "modal",
                            "profile": "profile", "attr": "attribute"}


@dataclass(frozen=True)
class FeatureSource:
    """One side-feature source: its name, which nodes it describes, its fusion group and scale."""

    name: str
    side: Side
    group: Group
    dim: int
    scale: float


def feature_group(name: str) -> tuple[Side, Group]:
    """(side, group) from a source name such as "item_attr_director"; ValueError for an unknown form."""
    m = _NAME.match(name)
    if m is None or m.group(2) not in _KINDS:
        raise ValueError(
            f"feature name {name!r} must look like '<user|item>_<kind>[_suffix]' with kind in {sorted(_KINDS)}"
        )
    return m.group(1), _KINDS[m.group(2)]  # type: ignore[return-value]


EXACT_RTOL = 1e-6  # singular values below this fraction of the largest are zero (a float64 SVD of float32 data)


def principal_basis(x: Tensor, energy: float) -> Tensor | None:
    """An orthonormal basis B [r, raw] of the top right-singular directions of x [n, raw] that hold `energy` of
    its squared singular values (every direction above float noise when energy is 1.0); None when that takes all
    raw directions, i.e. nothing is saved.

    x B^T B is then the rank-r approximation of x (exactly x when x has rank r): LLM attributes take few distinct
    values, so their embeddings have low rank, and the projection can multiply [N, r] instead of [N, raw].
    """
    if x.shape[0] == 0 or x.shape[1] < 2:
        return None
    _, sv, vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
    if float(sv[0]) == 0.0:
        return None
    share = torch.cumsum(sv**2, 0) / (sv**2).sum()
    rank = min(int((sv > sv[0] * EXACT_RTOL).sum()), int((share < energy - 1e-12).sum()) + 1)
    return vh[:rank].to(torch.float32).contiguous() if rank < x.shape[1] else None


class LLMRec(Recommender):
    """h = e + sum_k w_k * f_k / ||f_k||_2 (paper §3.2.2), scores h_u . h_i.

    e: ID embeddings through the backbone (LightGCN mean over layers, or MF). f_k: source k projected by its own
    Linear(raw -> d) + dropout, then propagated over the same normalised user-item graph ("collaborative context";
    [REPO] Models.py: an item feature reaches users after 1 hop and items after 2, a user feature the reverse).
    w_k: omega1 for all ("paper") or the official modal / profile / attribute scales ("official").

    features: name -> float tensor [n_users or n_items, raw_dim]. They are non-persistent buffers: they move with
    .to(device) but stay out of state_dict (checkpoints hold weights only); load_state_dict works on a model built
    with the same feature names and dims. The caller's tensors are never modified.
    augmented: LLM triplets joined to each training batch (omega3 * B of them, Eq. 6); None for none.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        features: Mapping[str, Tensor],
        train_pairs: np.ndarray,
        cfg: LLMRecConfig,
        *,
        augmented: AugmentedEdges | None = None,
    ) -> None:
        super().__init__(n_users, n_items)
        self.cfg = cfg
        self.user_emb = nn.Parameter(init_embedding(n_users, cfg.embedding_dim, cfg.init))
        self.item_emb = nn.Parameter(init_embedding(n_items, cfg.embedding_dim, cfg.init))
        # Non-persistent like LightGCN's: rebuilt from the train pairs, never checkpointed.
        self.register_buffer("adj", normalized_adjacency(train_pairs, n_users, n_items), persistent=False)
        self.sources: list[FeatureSource] = []
        self.proj = nn.ModuleDict()
        for name in sorted(features):
            self._add_source(name, features[name])
        self.dropout = nn.Dropout(cfg.feature_dropout)
        self._precompute_propagated_raw()
        masked = {s.name: (s.side, s.dim) for s in self.sources if s.group in cfg.mae_groups}
        self.mae = (FeatureMAE(masked, cfg.embedding_dim, mask_rate=cfg.mask_rate, gamma=cfg.gamma,
                               token=cfg.mask_token) if cfg.mae and masked else None)
        if augmented is not None and (augmented.n_users != n_users or augmented.n_items != n_items):
            raise ValueError("augmented edges were validated for a different n_users / n_items")
        aug = augmented.triplets if augmented is not None else torch.zeros((0, 3), dtype=torch.long)
        self.register_buffer("aug_triplets", aug.clone(), persistent=False)

    def _add_source(self, name: str, feature: Tensor) -> None:
        """Check one feature source, keep a float32 copy as a buffer and give it its projection Linear(raw -> d)."""
        side, group = feature_group(name)
        x = torch.as_tensor(feature)
        n = self.n_users if side == "user" else self.n_items
        if x.dim() != 2 or x.shape[0] != n:
            raise ValueError(f"feature {name!r} must have shape [{n}, dim] ({side}s), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"feature {name!r} holds NaN or inf")
        cfg = self.cfg
        self.sources.append(FeatureSource(name, side, group, int(x.shape[1]), cfg.scale_of(group)))
        # A float32 copy (detach().clone()), so nothing done here can reach the caller's tensor; reduced to its
        # principal directions (`principal_basis`), so that every path (and the MAE's targets) sees the same X.
        x = x.detach().to(torch.float32).clone()
        basis = principal_basis(x, cfg.feature_energy)
        if basis is not None:
            self.register_buffer(f"basis_{name}", basis, persistent=False)
            x = (x @ basis.t()) @ basis
        self.register_buffer(f"feat_{name}", x, persistent=False)
        lin = nn.Linear(int(x.shape[1]), cfg.embedding_dim)
        nn.init.xavier_uniform_(lin.weight)  # [REPO]: xavier_uniform_ on every *_trans layer
        self.proj[name] = lin

    # ---- features ---------------------------------------------------------------------------------------------

    def raw_feature(self, name: str) -> Tensor:
        """The stored (unmasked) raw feature tensor of a source."""
        return getattr(self, f"feat_{name}")

    def _propagate(self, h: Tensor) -> Tensor:
        """P h = sum over the feature hops of A^k h (A^0 = I too when feature_include_self), for [N, c] h."""
        total = h if self.cfg.feature_include_self else None
        for _ in range(self.cfg.feature_hops):
            h = symmetric_spmm(self.adj, h)
            total = h if total is None else total + h
        assert total is not None
        return total

    def _side_rows(self, side: Side) -> slice:
        return slice(0, self.n_users) if side == "user" else slice(self.n_users, self.n_users + self.n_items)

    @torch.no_grad()
    def _precompute_propagated_raw(self) -> None:
        """Buffers coords_<name> = X B^T ([n_side, r]), prop_<name> = P [0; X B^T] ([N, r]) and prop_ones_<side>
        = P 1_side ([N, 1]), with B the source's principal basis (buffer basis_<name>, [r, raw]; the identity when
        it has none, so X itself). Non-persistent: derived from the features and the graph, never checkpointed.

        Propagation is linear and X = (X B^T) B, so P (X W^T + 1 b^T) = (P X B^T)(W B^T)^T + (P 1) b^T with P the
        sum of the feature hops' powers of A: each step costs one dense [N, r] x [r, d] product per source instead
        of sparse propagation of the projected features forward and backward. Exact whenever dropout is inactive.
        """
        n = self.n_users + self.n_items
        cols = []
        for side in ("user", "item"):
            ones = torch.zeros(n, 1)
            ones[self._side_rows(side)] = 1.0
            cols.append(ones)
        for s in self.sources:
            x = self.raw_feature(s.name)
            basis = getattr(self, f"basis_{s.name}", None)
            if basis is not None:
                x = x @ basis.t()
            self.register_buffer(f"coords_{s.name}", x, persistent=False)  # X_c: X = X_c B
            padded = x.new_zeros(n, x.shape[1])
            padded[self._side_rows(s.side)] = x
            cols.append(padded)
        # All sources at once: one sparse matmul per hop (init-time only).
        prop = self._propagate(torch.cat(cols, dim=1)) if self.sources else torch.zeros(n, 2)
        parts = prop.split([c.shape[1] for c in cols], dim=1)
        self.register_buffer("prop_ones_user", parts[0].contiguous(), persistent=False)
        self.register_buffer("prop_ones_item", parts[1].contiguous(), persistent=False)
        for s, p in zip(self.sources, parts[2:], strict=True):
            self.register_buffer(f"prop_{s.name}", p.contiguous(), persistent=False)

    def _fast_path(self) -> bool:
        return not (self.training and self.dropout.p > 0.0)

    def propagated_features(self, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Per source, the projected feature propagated over the graph: [n_users + n_items, d] (users first).

        masks: side -> bool node mask; masked nodes' raw features are replaced by the MAE mask token first.

        While dropout is inactive (p = 0, or eval mode) this is P (X' W^T + 1 b^T) = (P X) W^T + (P 1) b^T +
        P E_M ((t - X_M) W^T), X' being X with the masked rows M replaced by the token t: P X and P 1 are
        precomputed, and the masked rows' corrections E_M ((t - X_M) W^T) (zero but for |M| rows) of every masked
        source are propagated together, one sparse matmul per hop. With dropout active it projects, drops out,
        then propagates (`_propagated_features_reference`).
        """
        if not self.sources:
            return {}
        if not self._fast_path():
            return self._propagated_features_reference(masks)
        out = {}
        for s in self.sources:
            lin = self.proj[s.name]
            basis = getattr(self, f"basis_{s.name}", None)
            weight = lin.weight if basis is None else lin.weight @ basis.t()  # [d, r]: W B^T
            out[s.name] = torch.addmm(getattr(self, f"prop_ones_{s.side}") * lin.bias,
                                      getattr(self, f"prop_{s.name}"), weight.t())
        if masks is not None and self.mae is not None:
            for name, correction in self._mask_corrections(masks).items():
                out[name] = out[name] + correction
        return out

    def _mask_corrections(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per masked source, P E_M ((t - X_M) W^T) ([N, d]): what replacing the masked rows of X by the token t
        changes in the propagated feature. With X = X_c B (X_c: the coordinates in the source's principal basis,
        `coords_<name>`) this is (P m)(t W^T) - P (m * X_c) (W B^T)^T, m the side's mask as a column: the
        propagated parts depend on the masks alone, so one no-grad propagation of [N, 2 + sum r] serves every
        source, however many nodes are masked."""
        assert self.mae is not None
        sources = [s for s in self.sources if s.name in self.mae.sources and s.side in masks]
        if not sources:
            return {}
        n = self.n_users + self.n_items
        with torch.no_grad():
            blocks = []
            for side in ("user", "item"):
                m = self.prop_ones_user.new_zeros(n, 1)
                if side in masks:
                    m[self._side_rows(side), 0] = masks[side].to(m.dtype)
                blocks.append(m)
            for s in sources:
                xc = getattr(self, f"coords_{s.name}")
                z = xc.new_zeros(n, xc.shape[1])
                z[self._side_rows(s.side)] = xc * masks[s.side].unsqueeze(1).to(xc.dtype)
                blocks.append(z)
            prop = self._propagate(torch.cat(blocks, dim=1)).split([b.shape[1] for b in blocks], dim=1)
        masked_share = {"user": prop[0], "item": prop[1]}
        out = {}
        for s, pmx in zip(sources, prop[2:], strict=True):
            lin = self.proj[s.name]
            basis = getattr(self, f"basis_{s.name}", None)
            weight = lin.weight if basis is None else lin.weight @ basis.t()
            token = F.linear(self.mae.token(s.name, self.raw_feature(s.name)), lin.weight)  # t W^T: [d]
            out[s.name] = torch.addmm(masked_share[s.side] * token, pmx, weight.t(), alpha=-1.0)
        return out

    def _propagated_features_reference(self, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The straightforward computation: mask, project, dropout, then propagate all sources together as one
        [N, K*d] matrix (K sources cost one sparse matmul per hop). Used when dropout is active."""
        if not self.sources:
            return {}
        d = self.cfg.embedding_dim
        blocks = []
        for s in self.sources:
            x = self.raw_feature(s.name)
            if masks is not None and self.mae is not None and s.side in masks and s.name in self.mae.sources:
                x = self.mae.mask_input(s.name, x, masks[s.side])  # new tensor; the buffer is untouched
            z = self.dropout(self.proj[s.name](x))
            other = z.new_zeros(self.n_items if s.side == "user" else self.n_users, d)
            blocks.append(torch.cat([z, other]) if s.side == "user" else torch.cat([other, z]))
        total = self._propagate(torch.cat(blocks, dim=1))
        return dict(zip([s.name for s in self.sources], total.split(d, dim=1), strict=True))

    # ---- embeddings -------------------------------------------------------------------------------------------

    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb

    def id_embeddings(self) -> Tensor:
        """Backbone output for all nodes [n_users + n_items, d]: LightGCN mean over layers, or MF's ego table."""
        ego = torch.cat([self.user_emb, self.item_emb])
        if self.cfg.backbone == "mf":
            return ego
        total, h = ego, ego
        for _ in range(self.cfg.n_layers):
            h = symmetric_spmm(self.adj, h)
            total = total + h
        return total / (self.cfg.n_layers + 1)

    def fuse(self, ids: Tensor, feats: Mapping[str, Tensor]) -> Tensor:
        """h = e + sum_k w_k * f_k / ||f_k||_2, row-wise (paper §3.2.2; [REPO] F.normalize on every added term).
        A node the feature never reaches (zero row) adds nothing."""
        used = [s for s in self.sources if s.scale != 0.0]
        if not used:
            return ids
        # All sources at once ([S, N, d]): a few large elementwise ops instead of a few per source.
        stacked = torch.stack([feats[s.name] for s in used])
        scales = stacked.new_tensor([s.scale for s in used]).view(-1, 1, 1)
        norms = stacked.norm(p=2, dim=2, keepdim=True).clamp_min(1e-12)  # as F.normalize
        return ids + (stacked * (scales / norms)).sum(0)

    def _forward(self, masks: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        feats = self.propagated_features(masks)
        h = self.fuse(self.id_embeddings(), feats)
        return h[: self.n_users], h[self.n_users :], feats

    def embeddings(self) -> tuple[Tensor, Tensor]:
        user_h, item_h, _ = self._forward()
        return user_h, item_h

    # ---- training ---------------------------------------------------------------------------------------------

    def reconstruction_loss(self, masks: Mapping[str, Tensor], feats: Mapping[str, Tensor] | None = None) -> Tensor:
        """Eq. 9 on the masked nodes; feats: propagated features computed WITH these masks (computed if None)."""
        if self.mae is None:
            return self.user_emb.new_zeros(())
        if feats is None:
            feats = self.propagated_features(masks)
        encoded = {}
        for s in self.sources:
            if s.name in self.mae.sources:
                f = feats[s.name]
                encoded[s.name] = f[: self.n_users] if s.side == "user" else f[self.n_users :]
        raw = {name: self.raw_feature(name) for name in self.mae.sources}
        return self.mae.loss(encoded, raw, masks)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, *, reg_weight: float = 0.0) -> tuple[Tensor, LossParts]:
        """BPR over the batch plus omega3 * B augmented triplets (Eq. 6), pruned per Eq. 7, + L2 + MAE (Eq. 9).

        In training mode with the MAE on, one forward pass runs on the masked features and serves both the BPR
        and the restoration loss ([REPO] also ranks with the masked features). Augmented triplets and masks come
        from torch's global RNG, which `fit` seeds.
        """
        cfg = self.cfg
        masks = (self.mae.sample_masks(self.n_users, self.n_items, self.user_emb.device)
                 if self.training and self.mae is not None else None)
        user_h, item_h, feats = self._forward(masks)
        b = users.shape[0]
        aug = self.aug_triplets[:0]
        if self.training and cfg.omega3 > 0:
            aug = sample_augmented(self.aug_triplets, users, self.n_users, int(cfg.omega3 * b))  # official int()

        u = user_h.index_select(0, users)
        pos_s = (u * item_h.index_select(0, pos)).sum(-1)
        if neg.dim() == 2:
            neg_s = (u.unsqueeze(1) * item_h.index_select(0, neg.reshape(-1)).reshape(*neg.shape, -1)).sum(-1)
            diff = (pos_s.unsqueeze(1) - neg_s).reshape(-1)
        else:
            diff = pos_s - (u * item_h.index_select(0, neg)).sum(-1)
        if aug.shape[0]:
            au = user_h.index_select(0, aug[:, 0])
            diff = torch.cat([diff, (au * (item_h.index_select(0, aug[:, 1]) - item_h.index_select(0, aug[:, 2])))
                              .sum(-1)])
        bpr = pruned_bpr(F.logsigmoid(diff), cfg.omega4, cfg.prune_keep, prune=cfg.prune)

        # LightGCN-style L2 on the layer-0 rows used, augmented rows included.
        all_users = torch.cat([users, aug[:, 0]])
        all_items = torch.cat([pos, aug[:, 1]])
        all_neg = torch.cat([neg.reshape(-1), aug[:, 2]])
        reg = l2_reg(self.user_emb.index_select(0, all_users), self.item_emb.index_select(0, all_items),
                     self.item_emb.index_select(0, all_neg), batch_size=b + aug.shape[0])

        total = bpr + reg_weight * reg
        parts: LossParts = {"bpr": bpr.detach(), "reg": reg.detach()}
        if masks is not None:
            mae = self.reconstruction_loss(masks, feats)
            total = total + cfg.mae_weight * mae
            parts["mae"] = mae.detach()
        return total, parts


def build_llmrec(
    cfg: LLMRecConfig,
    data: DenseSplit,
    features: Mapping[str, Tensor],
    *,
    augmented: AugmentedEdges | None = None,
    seed: int | None = None,
) -> LLMRec:
    """A freshly initialised LLMRec on data.train (as `build_model`: seed gives weights that depend only on it)."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return LLMRec(data.n_users, data.n_items, features, data.train, cfg, augmented=augmented)
