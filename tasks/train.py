"""Prefect tasks for training a base recommender and evaluating it with full ranking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger
from prefect.runtime import task_run

from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.eval.ranking import evaluate
from recsys.models.base import Recommender
from recsys.models.factory import build_model
from recsys.train.trainer import EpochReport, FitResult, fit, resolve_device
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_dense_split, stage_ref, stage_task
from tasks.progress import PhaseProgress


@stage_task("train", name="train")
def train_model(store_root: str, split_ref: str, model: ModelConfig, train: TrainConfig, eval: EvalConfig) -> str:
    """Train with early stopping on VALID; store the best checkpoint, the per-epoch history and a summary."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "model": model, "train": train, "eval": eval}
    ref = stage_ref("train", params)
    data, _ = read_dense_split(store, split_ref)
    net = build_model(model, data, seed=train.seed)
    fit_and_store(store, ref, params, net, data, train.tuned_for(model.name), eval, {"model": model.name})
    return str(ref)


def fit_and_store(store: ArtifactStore, ref: ArtifactRef, params: dict[str, Any], net: Recommender,
                  data: DenseSplit, train: TrainConfig, eval: EvalConfig, summary: dict[str, Any],
                  on_epoch: Callable[[EpochReport], None] | None = None) -> FitResult:
    """Fit with early stopping on VALID, logging each epoch and showing the epochs' progress (tasks/progress.py);
    store checkpoint, history and fit.json (`summary` first, then the fit's numbers). `on_epoch` is called after
    those, with each epoch's report."""
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

        result = fit(net, data, train, eval, on_epoch=each_epoch)
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
    return result


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
                  data: DenseSplit, eval: EvalConfig) -> None:
    """Write full-ranking metrics on VALID (train masked) and TEST (train and valid masked) as `metrics`."""
    metrics = {part: evaluate(net, data, part, eval.ks, eval.batch_users) for part in ("valid", "test")}
    with store.write(ref.stage, ref.key, params) as w:
        w.json("metrics", metrics)
    get_run_logger().info("%s: test %s", ref.stage, _fmt(metrics["test"]))


@stage_task("evaluate", name="evaluate")
def evaluate_model(store_root: str, split_ref: str, train_ref: str, model: ModelConfig, eval: EvalConfig,
                   device: str = "auto") -> str:
    """Full-ranking metrics on VALID (train masked) and TEST (train and valid masked)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "train_ref": train_ref, "model": model, "eval": eval, "device": device}
    ref = stage_ref("evaluate", params)
    data, _ = read_dense_split(store, split_ref)
    store_metrics(store, ref, params, load_trained(store, train_ref, model, data, device), data, eval)
    return str(ref)
