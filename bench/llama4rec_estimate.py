"""`llmrec llama4rec --estimate` against what the run then sends (a measurement, not a test).

On a random sample of ML-100K users (seed 0, all their ratings), the flow `llama4rec-estimate` builds and counts
every prompt with nothing sent; then the flow `llama4rec` of the same configuration runs against the local server.
Per stage: the estimated prompts and input tokens beside the ledger's HTTP calls that were answered (prompts sent)
and their prompt tokens, and the ratio. The pairwise prompts are known before the run; the ranking prompts of the
backbone on D' and of later seeds are not (their lists come after training), so the first seed's backbone on D
stands in for them.

    LLMREC_DATA_DIR=../shared/data python bench/llama4rec_estimate.py --users 100 --seeds 2 \
        --work /tmp/l4r-estimate --out bench/results/llama4rec-estimate.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

from bench.llama4rec_ml100k import user_sample  # noqa: E402
from flows.llama4rec import llama4rec_estimate_flow, llama4rec_flow  # noqa: E402
from llmsim import MODEL_ID  # noqa: E402
from llmsim.launch import start_llm_server  # noqa: E402
from recsys.config import (  # noqa: E402
    AugmentConfig,
    DataConfig,
    Llama4RecRunConfig,
    ModelConfig,
    RankingLLMConfig,
    TrainConfig,
)
from storage.ledger import read_ledger  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="a random sample of this many users (0: all 943)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--backbone", default="mf")
    parser.add_argument("--work", type=Path, default=Path("/tmp/l4r-estimate"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/llama4rec-estimate.md"))
    args = parser.parse_args()
    dataset = user_sample(args.work, args.users)
    store = str(args.work / "store")
    with start_llm_server() as server:
        config = Llama4RecRunConfig(
            data=DataConfig(dataset=dataset), model=ModelConfig(name=args.backbone), train=TrainConfig(device="cpu"),
            llm=RankingLLMConfig(model=MODEL_ID, base_url=server.base_url, rpm=None, tpm=None),
            augment=AugmentConfig(users_per_batch=50), seeds=tuple(2020 + i for i in range(args.seeds)))
        started = time.monotonic()
        rows = llama4rec_estimate_flow(config=config, store_root=store)
        estimate_s = time.monotonic() - started
        assert server.stats()["requests"] == 0, "the estimate sent a request"
        started = time.monotonic()
        result = llama4rec_flow(config=config, store_root=store, out_dir=str(args.work / "out"))
        run_s = time.monotonic() - started
    ledger = read_ledger(result["ledger"])
    sent = ledger[(ledger["outcome"] == "ok") & ~ledger["cached"]]
    every_call = ledger[~ledger["cached"]]
    lines = [
        "# Llama4Rec: the cost estimate against what was sent", "",
        f"Command: `LLMREC_DATA_DIR=../shared/data python bench/llama4rec_estimate.py --users {args.users} "
        f"--seeds {args.seeds} --backbone {args.backbone}` (from an empty --work). "
        + (f"{args.users} ML-100K users drawn at random (seed 0)" if args.users else "All 943 ML-100K users")
        + f", leave-one-out, k' = 10, backbone {args.backbone}, seeds "
        f"{', '.join(map(str, config.seeds))}; the local server (NOT a language model) answers. Estimate "
        f"{estimate_s:.0f} s (it trains the first seed's backbone), run {run_s:.0f} s, on 2 shared cores.", "",
        "| stage | prompts estimated | prompts sent | input tokens estimated | prompt tokens sent | estimate / sent |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    groups = {"pairwise": ["pairwise"], "ranking": [r["stage"] for r in rows if r["stage"].startswith("ranking")]}
    by_stage = {r["stage"]: r for r in rows}
    for stage, labels in groups.items():
        prompts = sum(by_stage[label]["prompts"] - by_stage[label]["cached"] for label in labels)
        tokens = sum(by_stage[label]["input_tokens"] for label in labels)
        part = sent[sent["stage"] == stage]
        sent_tokens = int(part["prompt_tokens"].sum())
        lines.append(f"| {stage} | {prompts:,} | {len(part):,} | {tokens:,} | {sent_tokens:,} | "
                     f"{tokens / sent_tokens:.3f} |")
    lines += ["", "Prompts sent: the ledger's answered HTTP calls (answers from the response cache cost nothing and "
                  "are not counted). Every HTTP call, failed attempts and re-asks included: "
                  f"{len(every_call):,} calls, {int(every_call['prompt_tokens'].sum()):,} prompt tokens.",
              "The estimate's own rows:", "",
              "| row | items | prompts | cached | input tokens |", "|---|---:|---:|---:|---:|",
              *(f"| {r['stage']} | {r['items']:,} | {r['prompts']:,} | {r['cached']:,} | {r['input_tokens']:,} |"
                for r in rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
