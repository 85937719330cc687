"""LLM4IDRec's hosted backend end to end against the local OpenAI-compatible server: the fine-tuning job through
/v1/files and /v1/fine_tuning/jobs, the fine-tuned model's answers through /v1/chat/completions in batches, costs in
the ledger at the price table's prices for the named base model, then MF and LightGCN on original against augmented
data over several seeds. A benchmark, not a test.

    python bench/llm4idrec_hosted.py --users 943 --seeds 3 --max-cost-usd 40

The local server is not a language model: its "fine-tuned model" is an item co-occurrence model learned from the
uploaded training file (llmsim/idrec.py), so the numbers measure the pipeline and what such a model adds, not what
OpenAI's fine-tuned model would add. The USD are what the ledger records at `--base-model`'s list prices (training
and fine-tuned inference), i.e. what the same tokens would cost at OpenAI. Writes
bench/results/llm4idrec_hosted_ml-100k[_rank<N>].md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from llm4idrec_smollm2 import REPO, generation_lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=943, help="users whose ID sequences fine-tune and generate")
    ap.add_argument("--base-model", default="gpt-4o-mini-2024-07-18")
    ap.add_argument("--max-cost-usd", type=float, default=40.0)
    ap.add_argument("--max-base-rank", type=int, default=None, help="keep generated items the base model ranks in "
                                                                    "the user's top this many")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--store", type=Path, default=None)
    args = ap.parse_args()

    from flows.llm4idrec import llm4idrec_flow
    from llmsim.launch import start_llm_server
    from recsys.config import DataConfig, EndpointConfig, LLM4IDRecConfig, LLM4IDRecRunConfig, TrainConfig

    work = Path(tempfile.mkdtemp(prefix="llm4idrec-hosted-"))
    with start_llm_server() as server:
        server.set_faults(fine_tune_duration_s=2.0)
        config = LLM4IDRecRunConfig(
            data=DataConfig(dataset="ml-100k"), train=TrainConfig(max_epochs=args.epochs),
            endpoint=EndpointConfig(base_url=server.base_url, rpm=None, tpm=None),
            llm4idrec=LLM4IDRecConfig(backend="hosted", base_model=args.base_model, sample_users=args.users,
                                      poll_s=1.0, max_base_rank=args.max_base_rank),
            seeds=tuple(range(2020, 2020 + args.seeds)),
        )
        start = time.perf_counter()
        result = llm4idrec_flow(config=config, store_root=str(args.store or work / "store"), out_dir=str(work / "out"),
                                max_cost_usd=args.max_cost_usd)
        elapsed = time.perf_counter() - start
        stats = server.stats()
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    lines = [f"# LLM4IDRec, hosted backend against the local server, on ml-100k ({args.users} users)", "",
             f"Command: python bench/llm4idrec_hosted.py {options}",
             f"Wall time {elapsed:.0f} s on {os.cpu_count()} CPU cores. This run spent ${result['cost_usd']:.4f} "
             f"at {args.base_model} list prices (budget ${args.max_cost_usd:g}); the local server counted "
             f"{stats['fine_tuning_jobs_created']} fine-tuning job, {stats['files_created']} files, "
             f"{stats['chat_ok']} answered chat requests.", "",
             *generation_lines(result), "", result["report"]]
    text = "\n".join(lines)
    print(text)
    suffix = f"_rank{args.max_base_rank}" if args.max_base_rank else ""
    out = REPO / "bench" / "results" / f"llm4idrec_hosted_ml-100k{suffix}.md"
    out.write_text(text + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
