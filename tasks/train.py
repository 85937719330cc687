"""Prefect tasks for training a base recommender and evaluating it with full ranking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger
from prefect.runtime import task_run
from prefect.states import Cancelled, State

from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit, IdMap
from recsys.data.degenerate import warn_skipped
from recsys.eval.metrics import user_means
from recsys.eval.ranking import RankingEvaluator
from recsys.models.base import Recommender
from recsys.models.factory import build_model
from recsys.train.augmented import AugmentedEdges
from recsys.train.trainer import EpochReport, StopTraining, fit, resolve_device
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_dense_split, stage_ref, stage_task
from tasks.progress import PhaseProgress

OnEpoch = Callable[[EpochReport], None]


@stage_task("train", name="train")
def train_model(store_root: str, split_ref: str, model: ModelConfig, train: TrainConfig, eval: EvalConfig,
                on_epoch: OnEpoch | None = None) -> str | State:
    """Train with early stopping on VALID; store the best checkpoint, the per-epoch history and a summary.
    `on_epoch` (not part of the key) watches every epoch; if it raises StopTraining, the run ends Cancelled with
    nothing written."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "model": model, "train": train, "eval": eval}
    ref = stage_ref("train", params)
    data, _ = read_dense_split(store, split_ref)
    net = build_model(model, data, seed=train.seed)
    return fit_and_store(store, ref, params, net, data, train.tuned_for(model.name), eval, {"model": model.name},
                         on_epoch)


def fit_and_store(store: ArtifactStore, ref: ArtifactRef, params: dict[str, Any], net: Recommender,
                  data: DenseSplit, train: TrainConfig, eval: EvalConfig, summary: dict[str, Any],
                  on_epoch: OnEpoch | None = None, augmented: AugmentedEdges | None = None) -> str | State:
    """Fit with early stopping on VALID (with `augmented` triplets joining the BPR ones, see `fit`), logging each
    epoch and showing the epochs' progress (tasks/progress.py); store checkpoint, history and fit.json (`summary`
    first, then the fit's numbers) and return the ref. `on_epoch` is called with each epoch's report; a Cancelled
    state when it stops the fit (StopTraining)."""
    logger = get_run_logger()
    name = str(task_run.name or summary.get("model", "train"))
    # Keyed on the artifact being trained: the same card on a re-run, one card per model in an ablation.
    with PhaseProgress(f"epochs-{ref.stage}-{ref.key[:12]}", f"{name}: training epochs", train.max_epochs,
                       "epochs", at_most=True) as progress:

        def each_epoch(report: EpochReport) -> None:
            logger.info("%s", report.describe())
            progress.update(report.epoch, epoch_detail(report, train))
            if on_epoch is not None:
                on_epoch(report)

        try:
            result = fit(net, data, train, eval, on_epoch=each_epoch, augmented=augmented)
        except StopTraining as stop:
            progress.close(f"stopped: {stop}", complete=False)
            return Cancelled(message=f"stopped: {stop}")
        progress.close(f"best epoch {result.best_epoch}" + (", stopped early" if result.stopped_early else ""))
    with store.write(ref.stage, ref.key, params) as w:
        w.tensors("checkpoint", result.best_state)
        w.table("history", pd.DataFrame(result.history))  # one row per epoch: loss, its parts, valid metrics
        w.json("fit", {
            **summary,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds_per_epoch": result.seconds_per_epoch,
            "valid": result.best_valid,
            "device": result.device,
        })
    logger.info("%s: best epoch %d of %d; valid %s", summary.get("model"), result.best_epoch, result.epochs_run,
                _fmt(result.best_valid))
    return str(ref)


def epoch_detail(report: EpochReport, train: TrainConfig) -> str:
    """The early-stopping state after an epoch: 'best epoch 12 (ndcg@10 0.2410), 3 of 10 evaluations without
    improvement'."""
    if report.best_epoch == 0:
        return "not evaluated yet"
    return (f"best epoch {report.best_epoch} ({train.monitor} {report.best_value:.4f}), "
            f"{report.epochs_without_improvement} of {train.patience} evaluations without improvement")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def restore(store: ArtifactStore, train_ref: str, net: Recommender, device: str = "auto") -> Recommender:
    """`net` with the weights of a `train` or `llmrec` checkpoint, on `device`, in eval mode."""
    arrays = store.read_tensors(train_ref, "checkpoint")
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return net.to(resolve_device(device)).eval()


def load_trained(store: ArtifactStore, train_ref: str, model: ModelConfig, data: DenseSplit,
                 device: str = "auto") -> Recommender:
    """Rebuild a trained model from its checkpoint, on `device`, in eval mode."""
    return restore(store, train_ref, build_model(model, data), device)


def store_metrics(store: ArtifactStore, ref: ArtifactRef, params: dict[str, Any], net: Recommender,
                  data: DenseSplit, ids: IdMap, eval: EvalConfig) -> None:
    """Write full-ranking metrics on VALID (train masked) and TEST (train and valid masked) as `metrics` (means over
    users), each test user's metrics as the table `per_user_test` (raw user_id, one column per metric@k), and per
    part how many users were evaluated and how many cold users (no train item) were left out or kept as `users`."""
    logger = get_run_logger()
    evaluators = {part: RankingEvaluator(data, part, eval.ks, eval.batch_users, eval.cold_users)
                  for part in ("valid", "test")}
    per_user = {part: evaluator.per_user(net) for part, evaluator in evaluators.items()}
    metrics = {part: user_means(values) for part, values in per_user.items()}
    users = {part: {"evaluated": int(e.users.size), "cold": int(e.cold_users.size),
                    "cold_excluded": int(e.cold_users.size) if eval.cold_users == "exclude" else 0}
             for part, e in evaluators.items()}
    if eval.cold_users == "exclude":
        for part, e in evaluators.items():
            warn_skipped("evaluation", data.raw_users(e.cold_users), f"from the {part} metrics: no training "
                         "interaction (cold users; cold_users='keep' ranks for them too)", data.source, logger)
    test_users = ids.user_ids[evaluators["test"].users]
    with store.write(ref.stage, ref.key, params) as w:
        w.json("metrics", metrics)
        w.json("users", users)
        w.table("per_user_test", pd.DataFrame({"user_id": test_users, **per_user["test"]}))
    logger.info("%s: test %s", ref.stage, _fmt(metrics["test"]))


@stage_task("evaluate", name="evaluate")
def evaluate_model(store_root: str, split_ref: str, train_ref: str, model: ModelConfig, eval: EvalConfig,
                   device: str = "auto") -> str:
    """Full-ranking metrics on VALID (train masked) and TEST (train and valid masked)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "train_ref": train_ref, "model": model, "eval": eval, "device": device}
    ref = stage_ref("evaluate", params)
    data, ids = read_dense_split(store, split_ref)
    store_metrics(store, ref, params, load_trained(store, train_ref, model, data, device), data, ids, eval)
    return str(ref)
