"""The one generic training loop: BPR mini-batches, validation every `eval_every` epochs, early stopping.

Model selection reads only data.train and data.valid; data.test is never touched here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recsys.config import EvalConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.data.degenerate import warn_skipped
from recsys.data.errors import DataError
from recsys.eval.ranking import RankingEvaluator
from recsys.models.base import Recommender
from recsys.train.augmented import AugmentedEdges
from recsys.train.errors import DeviceUnavailable
from recsys.train.sampling import NegativeSampler, epoch_triplets


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an `on_epoch` callback to abandon a fit with no result (e.g. a tuning trial that the pruner or a
    time limit stops); `fit` lets it through like any other exception of the callback."""


@dataclass(frozen=True)
class EpochReport:
    """What happened in one epoch; handed to the `on_epoch` callback (e.g. for logging or progress)."""

    epoch: int  # 1-based
    loss: float  # mean total loss over the epoch's triplets
    parts: dict[str, float]  # mean of each loss part ("bpr", "reg", ...)
    seconds: float  # training time of the epoch, evaluation excluded
    eval_seconds: float | None
    valid: dict[str, float] | None  # None when this epoch was not evaluated
    best_epoch: int  # best so far (0 before the first evaluation)
    best_value: float  # best monitored valid value so far (-inf before the first evaluation)
    is_best: bool
    epochs_without_improvement: int

    def describe(self) -> str:
        """One log line, e.g. 'epoch 12 loss 0.2104 (bpr 0.2012, reg 9.21) 0.15s | valid ndcg@10 0.2410 *'."""
        parts = ", ".join(f"{k} {v:.4g}" for k, v in self.parts.items())
        line = f"epoch {self.epoch} loss {self.loss:.4f} ({parts}) {self.seconds:.2f}s"
        if self.valid is not None:
            shown = {k: v for k, v in self.valid.items() if k.startswith(("recall@", "ndcg@"))}
            line += " | valid " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
            line += " *" if self.is_best else f" (best {self.best_value:.4f} @ {self.best_epoch})"
        return line


@dataclass
class FitResult:
    """Outcome of `fit`. The model passed to `fit` holds best_state when it returns."""

    best_epoch: int  # 1-based
    best_valid: dict[str, float]
    history: list[dict[str, Any]]  # per epoch: epoch, loss, parts, seconds, eval_seconds, valid_<metric>...
    seconds_per_epoch: float  # median training-only epoch time
    epochs_run: int
    best_state: dict[str, torch.Tensor]  # CPU copy of the best model's state_dict
    device: str
    monitor: str
    stopped_early: bool
    total_seconds: float = 0.0  # wall time of the whole fit, evaluation included
    eval_seconds: float = field(default=float("nan"))  # median time of one validation pass


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' fails clearly when there is no GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def _check_pairs(pairs: np.ndarray, data: DenseSplit, what: str) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (
        pairs[:, 0].min() < 0 or pairs[:, 0].max() >= data.n_users
        or pairs[:, 1].min() < 0 or pairs[:, 1].max() >= data.n_items
    ):
        raise ValueError(f"{what} pairs hold ids outside 0..n_users-1 / 0..n_items-1")
    return pairs


def fit(
    model: Recommender,
    data: DenseSplit,
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    augmented: AugmentedEdges | None = None,
) -> FitResult:
    """Train `model` with BPR on data.train, select the best epoch by valid `train_cfg.monitor`, restore it.

    `augmented`: extra (user, pos, neg) triplets that join every epoch's BPR triplets, shuffled in with them
    (Llama4Rec's D' = D + augmented, [L4R] §4.2 Eq. 3); without them the run is exactly the plain one.

    Per epoch, as RecBole's Trainer.fit: `train_epoch`; every `eval_every` epochs and the last, `validate`,
    `early_stopping` (stop after `patience` evaluations without a strictly better value) and, on a new best,
    `checkpoint`; then `on_epoch`, whose exceptions propagate. Seeds torch and the numpy sampling Generator from
    train_cfg.seed (weights are initialised by the caller).
    """
    start = time.perf_counter()
    if train_cfg.num_threads is not None:
        torch.set_num_threads(train_cfg.num_threads)
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    model.to(device)
    train, evaluator, sampler, optimizer = _prepare(model, data, train_cfg, eval_cfg, device)
    if augmented is not None and (augmented.n_users, augmented.n_items) != (data.n_users, data.n_items):
        raise ValueError("augmented triplets were validated for a different n_users / n_items")
    extra = augmented.triplets.numpy() if augmented is not None and len(augmented) else None

    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_valid, bad, stop = -math.inf, 0, {}, 0, False
    best_state = checkpoint(model)
    model.train()
    for epoch in range(1, train_cfg.max_epochs + 1):
        t0 = time.perf_counter()
        loss, parts = train_epoch(model, optimizer, train, sampler, rng, train_cfg, device, extra)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} in epoch {epoch}; try a smaller lr")
        seconds = time.perf_counter() - t0
        valid, eval_s, is_best = None, None, False
        if epoch % train_cfg.eval_every == 0 or epoch == train_cfg.max_epochs:
            valid, eval_s = validate(model, evaluator)
            best_value, bad, stop, is_best = early_stopping(valid[train_cfg.monitor], best_value, bad,
                                                            train_cfg.patience)
            if is_best:
                best_epoch, best_valid, best_state = epoch, valid, checkpoint(model)
        history.append({"epoch": epoch, "loss": loss, **parts, "seconds": seconds, "eval_seconds": eval_s,
                        **{f"valid_{m}": v for m, v in (valid or {}).items()}})
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, loss, parts, seconds, eval_s, valid, best_epoch, best_value, is_best, bad))
        if stop:
            break

    model.load_state_dict(best_state)
    eval_times = [h["eval_seconds"] for h in history if h["eval_seconds"] is not None]
    return FitResult(best_epoch=best_epoch, best_valid=best_valid, history=history,
                     seconds_per_epoch=float(np.median([h["seconds"] for h in history])), epochs_run=len(history),
                     best_state=best_state, device=str(device), monitor=train_cfg.monitor, stopped_early=stop,
                     total_seconds=time.perf_counter() - start,
                     eval_seconds=float(np.median(eval_times)) if eval_times else float("nan"))


def _prepare(model: Recommender, data: DenseSplit, train_cfg: TrainConfig, eval_cfg: EvalConfig,
             device: torch.device) -> tuple[np.ndarray, RankingEvaluator, NegativeSampler, torch.optim.Optimizer]:
    """The checked train pairs, the VALID evaluator (the monitored cutoff added to eval_cfg.ks), the negative
    sampler and the optimizer."""
    train = _check_pairs(data.train, data, "train")
    _check_pairs(data.valid, data, "valid")
    if len(train) == 0:
        raise DataError("no train pairs", path=data.source)
    sampler = NegativeSampler(train, data.n_users, data.n_items)
    train = without_unsampleable(train, sampler, data)
    _, _, k = train_cfg.monitor.partition("@")
    evaluator = RankingEvaluator(data, "valid", tuple(sorted(set(eval_cfg.ks) | {int(k)})), eval_cfg.batch_users,
                                 cold_users=eval_cfg.cold_users)
    if evaluator.users.size == 0:
        raise DataError("no user has a valid item and a training item; early stopping needs a validation split",
                        path=data.source)
    if train_cfg.lr is None or train_cfg.reg_weight is None:
        raise ValueError("lr and reg_weight are unset: pass TrainConfig.tuned_for(model_name) or set them")
    opt_cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel updates each table in one pass (about 2x faster per step on CPU than the default loop).
    optimizer = opt_cls(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                        fused=device.type in ("cpu", "cuda"))
    return train, evaluator, sampler, optimizer


def without_unsampleable(train: np.ndarray, sampler: NegativeSampler, data: DenseSplit) -> np.ndarray:
    """The train pairs of users that have a negative item: a user whose training items are the whole catalogue has
    none, so BPR cannot contrast anything for them; their pairs are left out with one warning
    (recsys/data/degenerate.py), and a DataError when no pair is left."""
    if sampler.full_users.size == 0:
        return train
    warn_skipped("sampling", data.raw_users(sampler.full_users),
                 "from BPR sampling: every item is one of their training items, so no negative exists", data.source)
    kept = train[~np.isin(train[:, 0], sampler.full_users)]
    if len(kept) == 0:
        raise DataError("no user has an item outside their training items, so BPR has no negative to sample",
                        path=data.source)
    return kept


def train_epoch(model: Recommender, optimizer: torch.optim.Optimizer, train: np.ndarray, sampler: NegativeSampler,
                rng: np.random.Generator, cfg: TrainConfig, device: torch.device,
                extra: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
    """One pass over freshly shuffled train pairs with new negatives, in mini-batches of cfg.batch_size: the mean
    total loss over the epoch's triplets and the mean of each loss part ("bpr", "reg", ...). `extra` [m, 3]
    (user, pos, neg) triplets are shuffled in with them (each one's negative repeated for n_negatives > 1, so it
    weighs as one train pair)."""
    users, pos, neg = epoch_triplets(train, sampler, cfg.n_negatives, rng)
    if extra is not None:
        order = rng.permutation(len(users) + len(extra))
        users = np.concatenate([users, extra[:, 0]])[order]
        pos = np.concatenate([pos, extra[:, 1]])[order]
        neg = np.concatenate([neg, np.repeat(extra[:, 2:3], cfg.n_negatives, axis=1)])[order]
    # One host-to-device copy per epoch; batches are then views.
    users_t = torch.from_numpy(users).to(device)
    pos_t = torch.from_numpy(pos).to(device)
    neg_t = torch.from_numpy(neg if cfg.n_negatives > 1 else neg[:, 0]).to(device)
    loss_sum = torch.zeros((), device=device)
    part_sums: dict[str, torch.Tensor] = {}
    bs = cfg.batch_size
    for s in range(0, len(users), bs):
        b_users, b_pos, b_neg = users_t[s : s + bs], pos_t[s : s + bs], neg_t[s : s + bs]
        optimizer.zero_grad(set_to_none=True)
        loss, parts = model.loss(b_users, b_pos, b_neg, reg_weight=cfg.reg_weight)
        loss.backward()
        optimizer.step()
        n = b_users.shape[0]
        # Accumulate on the device; a float() per batch would force a GPU sync each step.
        loss_sum += loss.detach() * n
        for name, v in parts.items():
            part_sums[name] = part_sums.get(name, 0) + torch.as_tensor(v).detach() * n
    return float(loss_sum) / len(users), {name: float(v) / len(users) for name, v in part_sums.items()}


def validate(model: Recommender, evaluator: RankingEvaluator) -> tuple[dict[str, float], float]:
    """The VALID metrics of the model as it is now, and the seconds they took."""
    t0 = time.perf_counter()
    valid = evaluator(model)
    return valid, time.perf_counter() - t0


def early_stopping(value: float, best: float, bad: int, patience: int) -> tuple[float, int, bool, bool]:
    """RecBole's rule (recbole/utils/utils.py: early_stopping), bigger is better: a strictly better `value`
    resets the count of evaluations without improvement. Returns (best, that count, stop now, improved)."""
    if value > best:
        return value, 0, False, True
    return best, bad + 1, bad + 1 >= patience, False


def checkpoint(model: Recommender) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state_dict: the best state so far."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
