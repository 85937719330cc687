"""Seconds per training epoch of LLMRec vs plain LightGCN on ML-100K-sized data (a measurement, not a test).

Synthetic (default): 943 users x 1682 items, 80k distinct random train pairs, batch 2048 (~40 batches/epoch),
random full-rank features: item_text plus three item_attr_* fields and a user_profile, each `dim` wide (384 = the
local embedder, 1536 = OpenAI ada) -- the worst case for the principal-basis reduction. With `--run-dir` (the output
folder of an `llmrec run`, whose config.json names its split and feature artifacts): the real split and the real
embedded features of that run. Every model trains through the real `fit` loop (fused Adam); the evaluation pass is
excluded from the timing. Prints the median s/epoch of each setting (timings on a shared machine are noisy:
compare ratios within one run).

    python bench/llmrec_epoch.py --epochs 5 --threads 2 --dims 384 1536
    python bench/llmrec_epoch.py --run-dir runs/llmrec --energies 1.0 0.99 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from recsys.config import EvalConfig, LLMRecConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.models.factory import build_model
from recsys.models.llmrec import build_llmrec
from recsys.train.augmented import AugmentedEdges
from recsys.train.trainer import fit

N_USERS, N_ITEMS, N_TRAIN = 943, 1682, 80_000


def synthetic_data(seed: int = 0) -> DenseSplit:
    """80k distinct random (user, item) train pairs, plus one valid and one test item per user."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(N_USERS * N_ITEMS, size=N_TRAIN + 2 * N_USERS, replace=False)
    pairs = np.stack([flat // N_ITEMS, flat % N_ITEMS], axis=1).astype(np.int64)
    train, rest = pairs[:N_TRAIN], pairs[N_TRAIN:]
    users = np.arange(N_USERS)
    valid = np.stack([users, rest[: N_USERS, 1]], axis=1)
    test = np.stack([users, rest[N_USERS:, 1]], axis=1)
    return DenseSplit(N_USERS, N_ITEMS, train, valid, test)


def synthetic_features(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {"item_text": torch.randn(N_ITEMS, dim, generator=g),
             "user_profile": torch.randn(N_USERS, dim, generator=g)}
    for name in ("genre", "director", "country"):
        feats[f"item_attr_{name}"] = torch.randn(N_ITEMS, dim, generator=g)
    return feats


def synthetic_augmented(seed: int = 0) -> AugmentedEdges:
    """One LLM (user, liked, disliked) triplet per user, as the official augmentation produces."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, N_ITEMS, N_USERS)
    neg = (pos + rng.integers(1, N_ITEMS, N_USERS)) % N_ITEMS
    return AugmentedEdges(np.stack([np.arange(N_USERS), pos, neg], axis=1), N_USERS, N_ITEMS)


def seconds_per_epoch(model: torch.nn.Module, data: DenseSplit, epochs: int, threads: int) -> tuple[float, float]:
    """(median wall seconds of a training epoch, CPU seconds of the process per epoch, evaluation included). With
    one thread the CPU time is what the epoch costs, whatever else the machine runs."""
    train = TrainConfig(max_epochs=epochs, eval_every=epochs, batch_size=2048, lr=1e-3, reg_weight=1e-4,
                        patience=epochs, device="cpu", num_threads=threads)
    cpu = time.process_time()
    result = fit(model, data, train, EvalConfig(ks=(10,)))  # type: ignore[arg-type]
    cpu = (time.process_time() - cpu) / len(result.history)
    times = [row["seconds"] for row in result.history]
    return statistics.median(times[1:] if len(times) > 2 else times), cpu  # the first epoch warms up allocators


def real_inputs(run_dir: Path) -> tuple[DenseSplit, dict[str, dict[str, torch.Tensor]], AugmentedEdges]:
    """The split, the embedded features (as one setting, "real") and the augmented edges of an `llmrec run`."""
    import pandas as pd

    from storage.store import ArtifactStore
    from tasks.common import read_dense_split
    from tasks.llmrec import read_features

    doc = json.loads((run_dir / "config.json").read_text())
    store = ArtifactStore(doc["store"])
    data, ids = read_dense_split(store, doc["artifacts"]["split"])
    feats, _ = read_features(store, doc["artifacts"]["features"], ids)
    edges = pd.read_parquet(run_dir / "augment" / "augmented_edges.parquet")
    return data, {"real": feats}, AugmentedEdges.from_frame(edges, ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1536], help="synthetic feature widths")
    ap.add_argument("--run-dir", type=Path, help="an `llmrec run` output folder: its split and features instead")
    ap.add_argument("--energies", type=float, nargs="+", default=[LLMRecConfig().feature_energy],
                    help="LLMRecConfig.feature_energy values to time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run_dir:
        data, feature_sets, aug = real_inputs(args.run_dir)
    else:
        data, aug = synthetic_data(), synthetic_augmented()
        feature_sets = {f"d={dim}": synthetic_features(dim) for dim in args.dims}
    rows: list[tuple[str, tuple[float, float]]] = []
    t0 = time.perf_counter()
    lgcn = build_model(ModelConfig(name="lightgcn", embedding_dim=64, n_layers=3), data, seed=0)
    rows.append(("lightgcn", seconds_per_epoch(lgcn, data, args.epochs, args.threads)))
    print(f"{rows[-1][0]:<50} {rows[-1][1][0]:.3f} s/epoch", flush=True)
    for label, feats in feature_sets.items():
        for energy in args.energies:
            settings = {
                f"llmrec {label} energy {energy:g} (no aug, no MAE)":
                    (LLMRecConfig(mae=False, omega3=0.0, prune=False, feature_energy=energy), None),
                f"llmrec {label} energy {energy:g} (full: aug+prune+MAE)": (LLMRecConfig(feature_energy=energy), aug),
            }
            for name, (cfg, augmented) in settings.items():
                model = build_llmrec(cfg, data, feats, augmented=augmented, seed=0)
                rows.append((name, seconds_per_epoch(model, data, args.epochs, args.threads)))
                print(f"{name:<50} {rows[-1][1][0]:.3f} s/epoch ({rows[-1][1][0] / rows[0][1][0]:.1f}x lightgcn)",
                      flush=True)
    (wall0, cpu0) = rows[0][1]
    print("\n| setting | median wall s/epoch | x LightGCN | CPU s/epoch | x LightGCN |\n|---|---|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.3f} | {wall / wall0:.1f} | {cpu:.3f} | {cpu / cpu0:.1f} |")
    print(f"\n(threads={args.threads}, epochs={args.epochs}, torch {torch.__version__}, "
          f"total {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
