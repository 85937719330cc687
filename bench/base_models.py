"""Benchmark of the base recommenders on the reference ML-100K split (a measurement, not a test).

For each model and seed: train with early stopping on valid NDCG@10, then report test metrics (full ranking,
train+valid masked), training seconds per epoch, epochs to the best valid epoch, wall time, evaluation time for
all users, and peak RSS. Prints medians over seeds as a markdown table; --json writes every run and the medians.

    python bench/base_models.py --models mf lightgcn --seeds 2020 2021 2022 --json /tmp/base.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit, IdMap, Split
from recsys.eval.ranking import RankingEvaluator
from recsys.models.factory import build_model
from recsys.train.trainer import fit

SPLIT_DIR = Path("/work/shared/bench/ml100k-split")
ITEM_FILE = Path("/work/shared/data/ml-100k/u.item")
COLUMNS = [  # (key in a run's record, table header, format)
    ("test_recall@20", "test R@20", "{:.4f}"),
    ("test_ndcg@20", "test N@20", "{:.4f}"),
    ("test_recall@10", "test R@10", "{:.4f}"),
    ("test_ndcg@10", "test N@10", "{:.4f}"),
    ("test_precision@20", "test P@20", "{:.4f}"),
    ("valid_ndcg@10", "valid N@10", "{:.4f}"),
    ("best_epoch", "epochs to best", "{:.0f}"),
    ("epochs_run", "epochs run", "{:.0f}"),
    ("seconds_per_epoch", "s/epoch (train)", "{:.3f}"),
    ("wall_seconds", "wall s", "{:.1f}"),
    ("eval_seconds_all_users", "eval s (all users)", "{:.4f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
]


def load_reference(split_dir: Path, item_file: Path) -> DenseSplit:
    """DenseSplit of the reference split: users from the split files, items 1..1682 from u.item."""
    parts = {name: pd.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "valid", "test")}
    split = Split(parts["train"], parts["valid"], parts["test"])
    items = pd.read_csv(item_file, sep="|", header=None, usecols=[0], encoding="latin-1")[0].to_numpy()
    users = np.concatenate([df["user_id"].to_numpy() for df in parts.values()])
    return DenseSplit.from_split(split, IdMap.build(users, items))


def time_eval(model: torch.nn.Module, evaluator: RankingEvaluator, repeats: int = 5) -> float:
    """Median seconds of one full-ranking evaluation of every evaluated user."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluator(model)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_one(data: DenseSplit, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvalConfig) -> dict[str, Any]:
    """Train one model with one seed and measure it."""
    t0 = time.perf_counter()
    model = build_model(model_cfg, data, seed=train_cfg.seed)
    result = fit(model, data, train_cfg, eval_cfg)
    wall = time.perf_counter() - t0
    test_eval = RankingEvaluator(data, "test", eval_cfg.ks, eval_cfg.batch_users)
    test = test_eval(model)
    return {
        "model": model_cfg.name,
        "seed": train_cfg.seed,
        **{f"test_{k}": v for k, v in test.items()},
        **{f"valid_{k}": v for k, v in result.best_valid.items()},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds_per_epoch": result.seconds_per_epoch,
        "wall_seconds": wall,
        "eval_seconds_all_users": time_eval(model, test_eval),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": result.device,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|---" * (len(COLUMNS) + 1) + "|"
    body = ["| " + r["model"] + " | " + " | ".join(f.format(r[k]) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mf", "lightgcn"], choices=["mf", "lightgcn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    p.add_argument("--max-epochs", type=int, default=TrainConfig().max_epochs)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--lr", type=float, default=None, help="override the model's tuned lr")
    p.add_argument("--reg-weight", type=float, default=None, help="override the model's tuned reg_weight")
    p.add_argument("--init", default=None, choices=["normal", "xavier"], help="override ModelConfig.init")
    p.add_argument("--split-dir", type=Path, default=SPLIT_DIR)
    p.add_argument("--item-file", type=Path, default=ITEM_FILE)
    p.add_argument("--json", type=Path, default=None, help="write all runs and the medians here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_reference(args.split_dir, args.item_file)
    overrides = {k: v for k, v in {"lr": args.lr, "reg_weight": args.reg_weight}.items() if v is not None}
    eval_cfg = EvalConfig()
    runs: list[dict[str, Any]] = []
    medians: list[dict[str, Any]] = []
    for name in args.models:
        model_cfg = ModelConfig(name=name, **({"init": args.init} if args.init else {}))
        per_model = []
        for seed in args.seeds:
            train_cfg = TrainConfig.for_model(name, max_epochs=args.max_epochs, seed=seed,
                                              num_threads=args.threads, device=args.device, **overrides)
            r = run_one(data, model_cfg, train_cfg, eval_cfg)
            print(f"{name} seed {seed}: " + ", ".join(
                f"{h} {f.format(r[k])}" for k, h, f in COLUMNS), file=sys.stderr, flush=True)
            per_model.append(r)
        runs.extend(per_model)
        med: dict[str, Any] = {"model": name, "n_seeds": len(per_model)}
        for key in per_model[0]:
            if key not in ("model", "seed", "device"):
                med[key] = statistics.median(r[key] for r in per_model)
        medians.append(med)
    print(f"medians over seeds {args.seeds}, torch threads {args.threads}, device {runs[0]['device']}")
    print(markdown(medians))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
