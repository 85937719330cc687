"""Llama4Rec's direct recommendation on ML-100K against the local server (a measurement, not a test).

Runs the Prefect flow `llama4rec` (leave-one-out split, k' = 10, HR/NDCG@3/5) for the MF and the LightGCN
backbones over the given seeds, in one artifact store and against one local server (NOT a language model: its
rankings and preferences are transparent heuristics, llmsim/ranking.py), then writes to --out:
report.md (both backbones' table overall and for head and tail users, the paper's ML-100K rows, the alpha
settings and the cost per stage from the ledger), metrics.parquet, selection.parquet and each backbone's own
report (<backbone>-report.md, with the LLM's answers). The pairwise answers are shared by both backbones (asked
once); a repeated command recomputes nothing.

    LLMREC_DATA_DIR=../shared/data python bench/llama4rec_ml100k.py --seeds 3 --work /tmp/llama4rec-bench \
        --out bench/results/llama4rec-ml100k

--work holds the artifact store and each flow's own outputs (instructions.jsonl is several MB); --out gets only
the summary files. `--users N` keeps N ML-100K users drawn at random (seed 0) with all their rows (0: all 943; every
user costs 8 ranking prompts per backbone and seed: 9 min for both backbones and 3 seeds on 2 shared cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.llama4rec import llama4rec_flow
from llmsim import MODEL_ID
from llmsim.launch import start_llm_server
from recsys.config import AugmentConfig, DataConfig, Llama4RecRunConfig, ModelConfig, RankingLLMConfig, TrainConfig
from recsys.data.loading import load_dataset
from recsys.llama4rec.report import cost_markdown, cost_rows, paper_markdown, selection_markdown, table_markdown
from recsys.llm.pricing import load_price_table
from storage.ledger import read_ledger

PRICED_AS = "gpt-4o-mini"  # what the same prompts and answers would cost at a small current model's list price


def user_sample(work: Path, users: int) -> str:
    """The dataset to run on: "ml-100k", or a folder with `users` of its users (seed 0) and all their rows."""
    if not users:
        return "ml-100k"
    ds = load_dataset(DataConfig(dataset="ml-100k"))
    ids = np.random.default_rng(0).choice(ds.interactions["user_id"].unique(), size=users, replace=False)
    inter = ds.interactions[ds.interactions["user_id"].isin(ids)]
    folder = work / f"ml-100k-{users}-users"
    folder.mkdir(parents=True, exist_ok=True)
    inter.to_parquet(folder / "interactions.parquet", index=False)
    ds.items[ds.items["item_id"].isin(inter["item_id"])].to_parquet(folder / "items.parquet", index=False)
    return str(folder)


def run(backbone: str, dataset: str, seeds: int, users_per_batch: int, base_url: str, work: Path) -> dict:
    config = Llama4RecRunConfig(
        data=DataConfig(dataset=dataset),
        model=ModelConfig(name=backbone),
        train=TrainConfig(device="cpu"),
        llm=RankingLLMConfig(model=MODEL_ID, base_url=base_url, rpm=None, tpm=None),
        augment=AugmentConfig(users_per_batch=users_per_batch),
        seeds=tuple(2020 + i for i in range(seeds)),
    )
    started = time.monotonic()
    result = llama4rec_flow(config=config, store_root=str(work / "store"), out_dir=str(work / backbone))
    result["seconds"] = time.monotonic() - started
    return result


def priced(costs: pd.DataFrame, ledger: pd.DataFrame) -> list[str]:
    """The ledger's tokens per stage priced at PRICED_AS's list price (the local server itself is free)."""
    table = load_price_table()
    http = ledger[~ledger["cached"] & (ledger["outcome"] == "ok")]
    usd = {stage: sum(table.cost(PRICED_AS, int(r.prompt_tokens), int(r.completion_tokens)) or 0.0
                      for r in part.itertuples()) for stage, part in http.groupby("stage")}
    return [f"At {PRICED_AS}'s list price these calls would cost: "
            + ", ".join(f"{stage} ${value:.4f}" for stage, value in sorted(usd.items()))
            + f"; total ${sum(usd.values()):.4f}."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["mf", "lightgcn"])
    parser.add_argument("--users-per-batch", type=int, default=100)
    parser.add_argument("--users", type=int, default=0, help="a random sample of this many users (0: all 943)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llama4rec-bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/llama4rec-ml100k"))
    args = parser.parse_args()
    results = {}
    dataset = user_sample(args.work, args.users)
    with start_llm_server() as server:
        for backbone in args.backbones:
            results[backbone] = run(backbone, dataset, args.seeds, args.users_per_batch, server.base_url, args.work)
            print(f"{backbone}: {results[backbone]['seconds']:.0f} s", flush=True)
        requests = server.stats()["requests"]
    minutes = ", ".join(f"{b} {r['seconds'] / 60:.1f} min" for b, r in results.items())
    frame = pd.concat([r["metrics"] for r in results.values()], ignore_index=True)
    selection = pd.concat([r["selection"] for r in results.values()], ignore_index=True)
    ledger = read_ledger(next(iter(results.values()))["ledger"])
    ledger = ledger[ledger["model"] == MODEL_ID]
    costs = cost_rows(ledger)
    lines = [
        "# Llama4Rec on ML-100K against the local server", "",
        f"Command: `LLMREC_DATA_DIR=../shared/data python bench/llama4rec_ml100k.py --seeds {args.seeds} --users "
        f"{args.users} --work WORK --out {args.out}` (from an empty WORK). "
        + (f"{args.users} of ML-100K's 943 users drawn at random (seed 0) with all their ratings. " if args.users
           else "All of ML-100K. ")
        + "Leave-one-out split by time, the backbone's top-10 list "
        f"re-ranked, seeds {', '.join(str(2020 + i) for i in range(args.seeds))}. The LLM is the local server "
        "(NOT a language model: transparent heuristics, llmsim/ranking.py), so these numbers measure the pipeline, "
        "not an LLM. "
        f"Wall time: {minutes} (a 2-core machine shared with other work); {requests:,} HTTP requests to the "
        "server.", "",
        "## Test: H@K (hit rate) and N@K (NDCG), mean ± std over seeds", "", *table_markdown(frame), "",
        "Tail users: N(u) (training items) in the lowest quartile over all users; head: the others.", "",
        "## The paper's ML-100K rows ([L4R] Table 2: LLaMA-2-7B fine-tuned, 5 runs)", "", *paper_markdown(), "",
        "## Alpha chosen on VALID", "", *selection_markdown(selection), "",
        "## Cost per stage, from the ledger (every call of both runs)", "", *cost_markdown(costs), "",
        *priced(costs, ledger), "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out / "metrics.parquet", index=False)
    selection.to_parquet(args.out / "selection.parquet", index=False)
    (args.out / "report.md").write_text("\n".join(lines))
    for backbone in results:
        (args.out / f"{backbone}-report.md").write_text((args.work / backbone / "report.md").read_text())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
