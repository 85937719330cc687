"""LLMRec's recommender: fusion, pruning (Eq. 7), augmented triplets, the feature MAE (Eq. 9), equivalence to
LightGCN, and end-to-end training on a planted checkerboard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recsys.config import EvalConfig, LLMRecConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit, IdMap
from recsys.eval.ranking import evaluate
from recsys.models.factory import build_model
from recsys.models.llmrec import build_llmrec, feature_group, principal_basis
from recsys.train.augmented import AugmentedEdges, n_kept, prune_log_sigmoid, pruned_bpr, sample_augmented
from recsys.train.trainer import fit

N_USERS, N_ITEMS, GROUP = 40, 20, 10
EVAL = EvalConfig(ks=(1, 2, 5))


def checkerboard(n_train: int = 8, seed: int = 0) -> DenseSplit:
    """Users 0..19 like items 0..9, users 20..39 like items 10..19; n_train train, 1 valid, 1 test item each."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for u in range(N_USERS):
        liked = rng.permutation(GROUP) + (0 if u < N_USERS // 2 else GROUP)
        train += [(u, i) for i in liked[:n_train]]
        valid.append((u, liked[n_train]))
        test.append((u, liked[n_train + 1]))
    return DenseSplit(N_USERS, N_ITEMS, np.array(train), np.array(valid), np.array(test))


def group_features(dim: int = 16, noise: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Features that reveal each user's / item's group: a group direction plus small noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(2, dim, generator=g)
    user_group = (torch.arange(N_USERS) >= N_USERS // 2).long()
    item_group = (torch.arange(N_ITEMS) >= GROUP).long()
    return {
        "user_profile": dirs[user_group] + noise * torch.randn(N_USERS, dim, generator=g),
        "item_attr_genre": dirs[item_group] + noise * torch.randn(N_ITEMS, dim, generator=g),
        "item_text": torch.randn(N_ITEMS, dim + 3, generator=g),  # uninformative modal feature
    }


def cfg(**kw: object) -> LLMRecConfig:
    base: dict[str, object] = {"embedding_dim": 8, "n_layers": 2}
    return LLMRecConfig(**{**base, **kw})  # type: ignore[arg-type]


# ---- fusion ---------------------------------------------------------------------------------------------------


def test_feature_names_map_to_groups() -> None:
    assert feature_group("item_text") == ("item", "modal")
    assert feature_group("item_image") == ("item", "modal")
    assert feature_group("user_profile") == ("user", "profile")
    assert feature_group("item_attr_director") == ("item", "attribute")
    for bad in ("profile", "items_text", "item_colour", "item_attr-x"):
        with pytest.raises(ValueError, match="must look like"):
            feature_group(bad)


@pytest.mark.parametrize("fusion", ["paper", "official"])
def test_projection_and_fusion_by_hand(fusion: str) -> None:
    data = checkerboard()
    feats = group_features()
    c = cfg(fusion=fusion, omega1=0.7)
    model = build_llmrec(c, data, feats, seed=0).eval()
    user_h, item_h = model.embeddings()
    assert user_h.shape == (N_USERS, 8) and item_h.shape == (N_ITEMS, 8)
    prop = model.propagated_features()
    assert set(prop) == set(feats) and all(p.shape == (N_USERS + N_ITEMS, 8) for p in prop.values())
    want = {"paper": {"user_profile": 0.7, "item_attr_genre": 0.7, "item_text": 0.7},
            "official": {"user_profile": 2.8, "item_attr_genre": 0.005, "item_text": 0.02}}[fusion]
    assert {s.name: s.scale for s in model.sources} == want
    # h = e + sum_k w_k f_k / ||f_k|| with e the LightGCN output
    expected = model.id_embeddings() + sum(w * F.normalize(prop[k], dim=1) for k, w in want.items())
    torch.testing.assert_close(torch.cat([user_h, item_h]), expected)
    # the feature branch really contributes (scale 0 would make them equal)
    assert not torch.allclose(torch.cat([user_h, item_h]), model.id_embeddings())


def test_feature_propagation_follows_official_hops() -> None:
    """Item feature: users get 1 hop (A x), items 2 hops (A A x); a node's own hop-0 feature is not added."""
    data = checkerboard()
    x = torch.randn(N_ITEMS, 5)
    model = build_llmrec(cfg(), data, {"item_text": x}, seed=0).eval()
    z = model.proj["item_text"](x)
    node = torch.cat([torch.zeros(N_USERS, 8), z])
    a = model.adj.to_dense()
    torch.testing.assert_close(model.propagated_features()["item_text"], a @ node + a @ (a @ node))
    assert torch.all(((a @ node)[N_USERS:]) == 0) and torch.all((a @ (a @ node))[:N_USERS] == 0)


def test_bad_feature_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="user_profile"):
        build_llmrec(cfg(), checkerboard(), {"user_profile": torch.randn(N_USERS - 1, 4)})


# ---- pruning (Eq. 7) ------------------------------------------------------------------------------------------


LOG_SIG = torch.tensor([-0.1, -3.0, -0.5, -2.0, -0.01, -1.0, -4.0, -0.2, -0.3, -0.05])


def test_pruning_keeps_exactly_n_of_the_lowest_end() -> None:
    # N = int((1 - 0.71) * 10) = 2: the two most negative log sigma terms (highest loss) survive
    assert n_kept(10, 0.71) == 2
    values, idx = prune_log_sigmoid(LOG_SIG, 0.71, "lowest")
    assert sorted(idx.tolist()) == [1, 6]
    assert pruned_bpr(LOG_SIG, 0.71, "lowest").item() == pytest.approx(3.5)


def test_pruning_keeps_exactly_n_of_the_highest_end() -> None:
    values, idx = prune_log_sigmoid(LOG_SIG, 0.71, "highest")
    assert sorted(idx.tolist()) == [4, 9]
    assert pruned_bpr(LOG_SIG, 0.71, "highest").item() == pytest.approx(0.03)
    # omega4 = 0.5 keeps 5; prune off or omega4 = 0 keeps all
    assert sorted(prune_log_sigmoid(LOG_SIG, 0.5, "highest")[1].tolist()) == [0, 4, 7, 8, 9]
    assert pruned_bpr(LOG_SIG, 0.71, prune=False).item() == pytest.approx(-LOG_SIG.mean().item())
    assert pruned_bpr(LOG_SIG, 0.0).item() == pytest.approx(-LOG_SIG.mean().item())
    assert n_kept(1, 0.71) == 1 and n_kept(0, 0.71) == 0


# ---- augmented triplets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[0, 1, 2], [N_USERS, 1, 2]], r"row 1 .*user id outside"),
        ([[0, 1, 2], [3, 4, 5], [-1, 1, 2]], r"row 2 .*user id outside"),
        ([[0, N_ITEMS, 2]], r"row 0 .*pos item id outside"),
        ([[0, 1, 2], [5, 1, -3]], r"row 1 .*neg item id outside"),
        ([[0, 1, 2], [5, 7, 7]], r"row 1 .*pos item equals neg item"),
        ([[0.0, 1.5, 2.0]], r"row 0 .*non-integer"),
    ],
)
def test_bad_augmented_triplets_are_rejected_at_load(rows: list[list[float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentedEdges(np.array(rows), N_USERS, N_ITEMS)


def test_augmented_edges_from_raw_frame() -> None:
    ids = IdMap.build(np.array([10, 20, 30]), np.array([100, 200, 300]))
    ok = AugmentedEdges.from_frame(
        pd.DataFrame({"user_id": [30, 10], "pos_item_id": [100, 300], "neg_item_id": [200, 100]}), ids)
    assert ok.triplets.tolist() == [[2, 0, 1], [0, 2, 0]]
    bad = pd.DataFrame({"user_id": [10, 20], "pos_item_id": [100, 200], "neg_item_id": [300, 999]})
    with pytest.raises(ValueError, match=r"neg_item_id.*999.*row 1"):
        AugmentedEdges.from_frame(bad, ids)
    with pytest.raises(ValueError, match="shape"):
        AugmentedEdges(np.zeros((2, 2), dtype=np.int64), 3, 3)


def test_augmented_sampling_takes_omega3_b_of_the_batch_users() -> None:
    trip = AugmentedEdges(np.array([[u, u % 5, 5 + u % 5] for u in range(N_USERS)]), N_USERS, N_ITEMS).triplets
    batch = torch.arange(0, N_USERS, 2)  # even users only
    torch.manual_seed(0)
    got = sample_augmented(trip, batch, N_USERS, 7)
    assert got.shape == (7, 3) and torch.all(got[:, 0] % 2 == 0) and got[:, 0].unique().numel() == 7
    assert sample_augmented(trip, batch, N_USERS, 100).shape == (20, 3)  # only 20 batch users hold triplets
    assert sample_augmented(trip, batch, N_USERS, 0).shape == (0, 3)


def test_loss_uses_augmented_triplets() -> None:
    data = checkerboard()
    aug = AugmentedEdges(np.array([[u, (u + 1) % N_ITEMS, (u + 2) % N_ITEMS] for u in range(N_USERS)]),
                         N_USERS, N_ITEMS)
    users, pos, neg = (torch.from_numpy(data.train[:20, 0]), torch.from_numpy(data.train[:20, 1]),
                       torch.from_numpy(data.train[20:40, 1]))
    losses = {}
    for omega3 in (0.0, 0.5):
        model = build_llmrec(cfg(omega3=omega3, prune=False, mae=False), data, {}, augmented=aug, seed=0).train()
        losses[omega3] = model.loss(users, pos, neg)[0].item()
    assert losses[0.0] != pytest.approx(losses[0.5])


# ---- MAE (Eq. 9) ----------------------------------------------------------------------------------------------


def test_masking_never_mutates_stored_features() -> None:
    data = checkerboard()
    feats = group_features()
    originals = {k: v.clone() for k, v in feats.items()}
    model = build_llmrec(cfg(mask_rate=0.5, mae_weight=1.0), data, feats, seed=0).train()
    stored = {s.name: model.raw_feature(s.name).clone() for s in model.sources}
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    users, pos, neg = (torch.from_numpy(data.train[:, i]) for i in (0, 1, 1))
    for _ in range(3):
        opt.zero_grad()
        loss, parts = model.loss(users, pos, neg.roll(7))
        loss.backward()
        opt.step()
        assert parts["mae"] > 0
    for name, before in stored.items():
        assert torch.equal(model.raw_feature(name), before), name
        assert torch.equal(feats[name], originals[name]), name
    # ...while the masked forward really differs from the unmasked one
    masks = model.mae.sample_masks(N_USERS, N_ITEMS, torch.device("cpu"))
    assert masks["user"].sum() == N_USERS // 2 and masks["item"].sum() == N_ITEMS // 2
    model.eval()
    assert not torch.allclose(model.propagated_features(masks)["user_profile"],
                              model.propagated_features()["user_profile"])


@pytest.mark.parametrize("token", ["learnable", "mean"])
def test_mae_loss_decreases_and_decoder_trains(token: str) -> None:
    data = checkerboard()
    model = build_llmrec(cfg(mask_rate=0.3, mask_token=token), data, group_features(noise=0.05), seed=0).train()
    assert model.mae is not None and set(model.mae.sources) == {"user_profile", "item_attr_genre"}
    params = list(model.parameters())
    decoder_before = {k: v.detach().clone() for k, v in model.mae.decoders.state_dict().items()}
    assert all(any(p is q for q in params) for p in model.mae.decoders.parameters())  # in the optimizer

    def mae_at(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return model.reconstruction_loss(model.mae.sample_masks(N_USERS, N_ITEMS, torch.device("cpu")))

    with torch.no_grad():
        start = float(np.mean([mae_at(s).item() for s in range(5)]))
    opt = torch.optim.Adam(params, lr=0.02)
    for step in range(150):
        opt.zero_grad()
        mae_at(100 + step).backward()
        opt.step()
    with torch.no_grad():
        end = float(np.mean([mae_at(s).item() for s in range(5)]))
    assert end < 0.3 * start, (start, end)
    for k, v in model.mae.decoders.state_dict().items():
        assert not torch.equal(v, decoder_before[k]), k


# ---- equivalence and end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["lightgcn", "mf"])
def test_no_features_no_augmentation_equals_the_plain_backbone(backbone: str) -> None:
    data = checkerboard()
    base = build_model(ModelConfig(name=backbone, embedding_dim=8, n_layers=2), data, seed=1)
    model = build_llmrec(cfg(backbone=backbone, omega3=0.0, prune=False), data, {}, seed=2)
    model.load_state_dict(base.state_dict())  # strict: same parameter names, no feature weights
    users = torch.arange(N_USERS)
    torch.testing.assert_close(model.full_scores(users), base.full_scores(users))
    u, p = torch.from_numpy(data.train[:, 0]), torch.from_numpy(data.train[:, 1])
    n = p.roll(5)
    for neg in (n, torch.stack([n, n.roll(3)], dim=1)):
        want, want_parts = base.loss(u, p, neg, reg_weight=1e-2)
        got, got_parts = model.train().loss(u, p, neg, reg_weight=1e-2)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_parts["reg"], want_parts["reg"])


def test_checkpoint_round_trip_excludes_features() -> None:
    data = checkerboard()
    feats = group_features()
    a = build_llmrec(cfg(), data, feats, seed=0)
    state = a.state_dict()
    assert not any(k.startswith(("feat_", "adj", "aug_")) for k in state)
    assert {"proj.user_profile.weight", "mae.decoders.item_attr_genre.weight", "mae.tokens.user_profile"} <= set(state)
    b = build_llmrec(cfg(), data, feats, seed=1)
    b.load_state_dict(state)
    users = torch.arange(N_USERS)
    torch.testing.assert_close(a.eval().full_scores(users), b.eval().full_scores(users))


def quick_train(**kw: object) -> TrainConfig:
    base = {"max_epochs": 40, "batch_size": 64, "lr": 0.05, "reg_weight": 1e-2, "patience": 10, "device": "cpu"}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_fit_end_to_end_with_augmentation_pruning_and_mae() -> None:
    data = checkerboard()
    # LLM triplets consistent with the groups: liked = a same-group item, disliked = other group
    aug = AugmentedEdges(np.array([[u, (u % GROUP) + (0 if u < 20 else GROUP), (u % GROUP) + (GROUP if u < 20 else 0)]
                                   for u in range(N_USERS)]), N_USERS, N_ITEMS)
    model = build_llmrec(cfg(mae_weight=0.1, mask_rate=0.2), data, group_features(), augmented=aug, seed=0)
    decoder_before = model.mae.decoders["user_profile"].weight.detach().clone()
    result = fit(model, data, quick_train(), EVAL)
    assert result.best_valid["recall@2"] == 1.0
    assert evaluate(model, data, "test", (1,))["hit@1"] == 1.0
    assert {"bpr", "reg", "mae"} <= set(result.history[0])
    assert result.history[0]["mae"] > result.history[-1]["mae"]
    assert not torch.equal(model.mae.decoders["user_profile"].weight, decoder_before)


def test_informative_features_beat_ids_alone_on_a_sparse_checkerboard() -> None:
    """Two train items per user: IDs alone separate the two groups poorly; group-revealing features do it.

    recall@8 on valid: each user has exactly 8 unseen same-group items, so 1.0 means every valid item is ranked
    inside its own group's block. Same seeds (mean of 3), same training config; only the features differ.
    """
    data = checkerboard(n_train=2)
    train = quick_train(max_epochs=20, lr=0.01, patience=10)
    scores: dict[str, float] = {}
    for name, feats in (("ids", {}), ("features", group_features())):
        runs = []
        for seed in range(3):
            model = build_llmrec(cfg(fusion="paper", omega1=1.0, mae=False), data, feats, seed=seed)
            fit(model, data, train, EVAL)
            runs.append(evaluate(model, data, "valid", (8,))["recall@8"])
        scores[name] = float(np.mean(runs))
    # seen: ids ~0.67, features ~0.96 (seeds 0-2)
    assert scores["features"] >= 0.85 and scores["features"] > scores["ids"] + 0.15, scores


@pytest.mark.parametrize("keep", ["lowest", "highest"])
def test_model_loss_prunes_the_batch_per_eq7(keep: str) -> None:
    data = checkerboard()
    model = build_llmrec(cfg(omega3=0.0, prune_keep=keep, mae=False), data, {}, seed=0).train()
    u, p = torch.from_numpy(data.train[:50, 0]), torch.from_numpy(data.train[:50, 1])
    n = torch.from_numpy(data.train[50:100, 1])
    _, parts = model.loss(u, p, n)
    scores = model.full_scores(torch.arange(N_USERS)).detach()
    log_sig = F.logsigmoid(scores[u, p] - scores[u, n]).sort().values  # ascending
    kept = log_sig[:14] if keep == "lowest" else log_sig[-14:]  # N = int(0.29 * 50) = 14
    torch.testing.assert_close(parts["bpr"], -kept.mean())


# ---- fast (precomputed P X) path == straightforward mask / project / propagate ------------------------------------


def _reference(model: torch.nn.Module) -> torch.nn.Module:
    """The same model forced onto the straightforward path (mask the raw rows, project, dropout, propagate)."""
    model._fast_path = lambda: False  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize(("hops", "include_self", "token"),
                         [(2, False, "learnable"), (1, True, "mean"), (3, False, "mean"), (3, True, "learnable")])
def test_precomputed_propagation_equals_project_then_propagate(hops: int, include_self: bool, token: str) -> None:
    data = checkerboard()
    c = cfg(feature_hops=hops, feature_include_self=include_self, mask_token=token, mask_rate=0.3)
    fast = build_llmrec(c, data, group_features(), seed=0).train()
    with torch.no_grad():  # a non-zero learnable token and bias, so the correction terms are really exercised
        for p in fast.mae.tokens.values():
            p.normal_()
        for lin in fast.proj.values():
            lin.bias.normal_()
    ref = _reference(build_llmrec(c, data, group_features(), seed=0).train())
    ref.load_state_dict(fast.state_dict())
    torch.manual_seed(3)
    masks = fast.mae.sample_masks(N_USERS, N_ITEMS, torch.device("cpu"))
    for m in (None, masks, {"item": masks["item"]}):
        got, want = fast.propagated_features(m), ref.propagated_features(m)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
    # by hand, with a dense A: P = sum_k A^k over the hops, masked rows replaced by the token before projecting
    a = fast.adj.to_dense()
    p = sum(torch.linalg.matrix_power(a, k) for k in range(0 if include_self else 1, hops + 1))
    x = fast.raw_feature("user_profile")
    x = torch.where(masks["user"].unsqueeze(1), fast.mae.token("user_profile", x), x)
    node = torch.cat([fast.proj["user_profile"](x), torch.zeros(N_ITEMS, 8)])
    torch.testing.assert_close(fast.propagated_features(masks)["user_profile"], p @ node, rtol=1e-5, atol=1e-5)


def test_fast_loss_and_gradients_equal_the_reference() -> None:
    data = checkerboard()
    aug = AugmentedEdges(np.array([[u, (u + 1) % N_ITEMS, (u + 2) % N_ITEMS] for u in range(N_USERS)]),
                         N_USERS, N_ITEMS)
    c = cfg(mask_rate=0.25, mae_weight=0.5, omega3=0.5)
    fast = build_llmrec(c, data, group_features(), augmented=aug, seed=0).train()
    with torch.no_grad():
        for p in fast.mae.tokens.values():
            p.normal_()
    ref = _reference(build_llmrec(c, data, group_features(), augmented=aug, seed=0).train())
    ref.load_state_dict(fast.state_dict())
    u, p = torch.from_numpy(data.train[:, 0]), torch.from_numpy(data.train[:, 1])
    results = []
    for model in (fast, ref):
        torch.manual_seed(11)  # same masks and augmented triplets for both
        loss, parts = model.loss(u, p, p.roll(7), reg_weight=1e-2)
        loss.backward()
        results.append((loss, parts, {k: v.grad.clone() for k, v in model.named_parameters()}))
    (l1, p1, g1), (l2, p2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    assert set(p1) == set(p2) == {"bpr", "reg", "mae"}
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-5, atol=1e-5)
    assert set(g1) == set(g2)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-6, msg=k)
    assert g1["mae.tokens.user_profile"].abs().sum() > 0  # the learnable token gets its gradient


def test_active_dropout_takes_the_reference_path_and_eval_the_fast_one() -> None:
    data = checkerboard()
    model = build_llmrec(cfg(feature_dropout=0.5), data, group_features(), seed=0)
    assert not model.train()._fast_path() and model.eval()._fast_path()
    torch.manual_seed(0)
    a = model.train().propagated_features()["item_text"]
    b = model.propagated_features()["item_text"]
    assert not torch.allclose(a, b)  # dropout really acts in training
    ref = _reference(build_llmrec(cfg(feature_dropout=0.5), data, group_features(), seed=0)).eval()
    for name, f in ref.propagated_features().items():
        torch.testing.assert_close(model.eval().propagated_features()[name], f, rtol=1e-5, atol=1e-5)


def test_low_rank_features_are_factored_exactly() -> None:
    """An attribute with few distinct values (rank 2 of 24 dims) trains on [N, 2] products, with the same
    features, loss and gradients as the straightforward path; a full-rank source is left as it is (energy 1.0)."""
    data = checkerboard()
    g = torch.Generator().manual_seed(5)
    values = torch.randn(2, 24, generator=g)  # e.g. two countries
    feats = {"item_attr_country": values[(torch.arange(N_ITEMS) % 3 == 0).long()],
             "item_text": torch.randn(N_ITEMS, 16, generator=g)}  # full rank 16
    c = cfg(mask_rate=0.3, mae_weight=0.5, feature_energy=1.0)
    fast = build_llmrec(c, data, feats, seed=0).train()
    assert fast.prop_item_attr_country.shape == (N_USERS + N_ITEMS, 2)
    assert fast.basis_item_attr_country.shape == (2, 24) and not hasattr(fast, "basis_item_text")
    torch.testing.assert_close(fast.raw_feature("item_attr_country"), feats["item_attr_country"])  # exact
    ref = _reference(build_llmrec(c, data, feats, seed=0).train())
    ref.load_state_dict(fast.state_dict())
    u, p = torch.from_numpy(data.train[:, 0]), torch.from_numpy(data.train[:, 1])
    grads = []
    for model in (fast, ref):
        torch.manual_seed(2)
        loss, _ = model.loss(u, p, p.roll(3), reg_weight=1e-2)
        loss.backward()
        grads.append((loss, {k: v.grad.clone() for k, v in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for k, g_fast in grads[0][1].items():
        torch.testing.assert_close(g_fast, grads[1][1][k], rtol=1e-4, atol=1e-6, msg=k)


def test_principal_basis_keeps_the_asked_energy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g) @ torch.randn(4, 32, generator=g) + 0.01 * torch.randn(200, 32, generator=g)
    for energy in (0.5, 0.9, 0.999):
        basis = principal_basis(x, energy)
        assert basis is not None and basis.shape[1] == 32
        torch.testing.assert_close(basis @ basis.t(), torch.eye(basis.shape[0]), rtol=1e-5, atol=1e-5)
        kept = float(((x @ basis.t()) ** 2).sum() / (x**2).sum())
        assert kept >= energy and basis.shape[0] <= 4 + (energy > 0.99)  # the noise floor is left out
    assert principal_basis(torch.randn(50, 8, generator=g), 1.0) is None  # full rank: nothing to save
