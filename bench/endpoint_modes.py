"""The cost estimate against what is sent, the Batch API mode killed and resumed, and the cost per 1,000 users in
normal and batch mode (a measurement, not a test), all against the local server priced as gpt-4o-mini.

1. `estimate`: the `estimate` flow on ML-100K (every prompt of edges, profiles and attributes built and counted with
   the model's tokenizer, nothing sent), then the `augment` flow of the same configuration in normal mode; per
   stage, the estimated input tokens beside the prompt tokens the ledger recorded as sent (every HTTP call,
   re-asks included), and their ratio (goal: within +-10 %).
2. `batch`: the first `--batch-users` users of ML-100K (and the movies they rated) in batch mode, the flow run in
   a child process that is killed with SIGKILL while it polls its first batch; the re-run must create no second
   batch for that stage (the server's `batches_created` counter) and lose no item (rows per stage against the
   number of users and items). The same users in normal mode give the price comparison.
3. Cost per 1,000 users (edges and profiles: one prompt per user) and per 1,000 items (attributes) from the
   ledgers of both runs of part 2 and of the full run of part 1, at gpt-4o-mini's prices.

    python bench/endpoint_modes.py                      # about 10 minutes on 2 busy cores
    python bench/endpoint_modes.py --skip-full          # part 2 and its costs only
    python bench/endpoint_modes.py --json bench/results/endpoint-modes.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from flows.augment import augment_flow, estimate_flow  # noqa: E402
from flows.runners import prefect_api_url  # noqa: E402
from llmsim.launch import LLMServer, start_llm_server  # noqa: E402
from recsys.config import (  # noqa: E402
    AugmentConfig,
    AugmentRunConfig,
    DataConfig,
    LLMConfig,
    ModelConfig,
    TrainConfig,
)
from recsys.data.movielens import load_ml100k  # noqa: E402

MODEL = "gpt-4o-mini"
STAGES = ("edges", "profiles", "attributes")
CHILD = ("import sys; from flows.augment import augment_flow; from recsys.config import AugmentRunConfig; "
         "augment_flow(config=AugmentRunConfig.model_validate_json(sys.argv[1]), store_root=sys.argv[2], "
         "out_dir=sys.argv[3])")


def run_config(dataset: str, server: LLMServer, temperature: float, **augment: Any) -> AugmentRunConfig:
    """MF base model (2 epochs: the candidates' quality does not matter here), no client rate limit."""
    return AugmentRunConfig(
        data=DataConfig(dataset=dataset), model=ModelConfig(name="mf", embedding_dim=32),
        train=TrainConfig(max_epochs=2, device="cpu"),
        llm=LLMConfig(model=MODEL, base_url=server.base_url, rpm=None, tpm=None, temperature=temperature),
        augment=AugmentConfig(stages=STAGES, **augment))


def slice_of_ml100k(ml100k: Path, n_users: int, folder: Path) -> Path:
    """The first `n_users` users of ML-100K and the movies they rated, as interactions/items Parquet."""
    ds = load_ml100k(ml100k)
    users = sorted(ds.interactions["user_id"].unique())[:n_users]
    inter = ds.interactions[ds.interactions["user_id"].isin(users)]
    folder.mkdir(parents=True, exist_ok=True)
    inter.to_parquet(folder / "interactions.parquet", index=False)
    ds.items[ds.items["item_id"].isin(inter["item_id"])].to_parquet(folder / "items.parquet", index=False)
    return folder


def sent(ledger: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows of requests that reached the model (not cache hits)."""
    return ledger[~ledger["cached"]]


def costs(ledger: pd.DataFrame, n_users: int, n_items: int) -> dict[str, float]:
    """USD per 1,000 users (edges, profiles) or items (attributes), per stage, from the ledger's cost_usd."""
    per_stage = sent(ledger).groupby("stage")["cost_usd"].sum()
    return {s: float(per_stage.get(s, 0.0)) * 1000 / (n_items if s == "attributes" else n_users) for s in STAGES}


def part_estimate(server: LLMServer, ml100k: Path, store: str, out: Path) -> dict[str, Any]:
    cfg = run_config(str(ml100k), server, 0.6)
    t0 = time.perf_counter()
    estimate = {r["stage"]: r for r in estimate_flow(config=cfg, store_root=store)}
    t_estimate = time.perf_counter() - t0
    requests_after_estimate = server.stats()["requests"]
    t0 = time.perf_counter()
    result = augment_flow(config=cfg, store_root=store, out_dir=str(out))
    t_run = time.perf_counter() - t0
    ledger = pd.read_parquet(out / "ledger.parquet")
    tokens = sent(ledger).groupby("stage")["prompt_tokens"].sum()
    calls = sent(ledger).groupby("stage").size()
    rows = []
    for stage in STAGES:
        est, real = estimate[stage]["input_tokens"], int(tokens.get(stage, 0))
        rows.append({"stage": stage, "prompts": estimate[stage]["prompts"], "http_calls": int(calls.get(stage, 0)),
                     "estimated_input_tokens": est, "sent_input_tokens": real, "ratio": est / real if real else None,
                     "estimated_usd": estimate[stage]["usd"], "estimated_usd_batch": estimate[stage]["usd_batch"],
                     "ledger_usd": float(sent(ledger)[sent(ledger)["stage"] == stage]["cost_usd"].sum())})
    ds = load_ml100k(ml100k)
    return {"requests_during_estimate": requests_after_estimate, "estimate_s": t_estimate, "run_s": t_run,
            "failed": result["failed"], "rows": rows,
            "users": int(ds.interactions["user_id"].nunique()), "items": int(ds.items["item_id"].nunique()),
            "ledger": ledger}


def part_batch(server: LLMServer, data: Path, store: str, out: Path, duration_s: float) -> dict[str, Any]:
    """Batch mode killed while polling its first batch, then re-run; then the same users in normal mode."""
    server.set_faults(batch_duration_s=duration_s)
    server.reset()
    cfg = run_config(str(data), server, 0.61, mode="batch", batch_poll_s=0.5, batch_poll_max_s=2.0)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, cfg.model_dump_json(), store, str(out / "batch")],
                            cwd=REPO, env={**os.environ, "PREFECT_API_URL": prefect_api_url()},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while server.stats()["batches_created"] == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(min(2.0, duration_s / 2))  # polling now
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = server.stats()
    t0 = time.perf_counter()
    result = augment_flow(config=cfg, store_root=store, out_dir=str(out / "batch"))
    resumed_s = time.perf_counter() - t0
    after = server.stats()
    batch_ledger = pd.read_parquet(out / "batch" / "ledger.parquet")

    server.set_faults()
    normal_cfg = run_config(str(data), server, 0.61)
    normal_store = tempfile.mkdtemp(prefix="endpoint-modes-normal-")  # no answer of the batch run is reused
    normal = augment_flow(config=normal_cfg, store_root=normal_store, out_dir=str(out / "normal"))
    normal_ledger = pd.read_parquet(out / "normal" / "ledger.parquet")
    return {"killed_while_polling": alive, "batches_created_before_kill": before["batches_created"],
            "batches_created_after_rerun": after["batches_created"], "stages": len(STAGES),
            "normal_requests_in_batch_run": after["requests"], "rerun_s": resumed_s,
            "rows_batch": result["rows"], "failed_batch": result["failed"],
            "rows_normal": normal["rows"], "failed_normal": normal["failed"],
            "batch_ledger": batch_ledger, "normal_ledger": normal_ledger}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ml100k", type=Path, default=Path(os.environ.get("LLMREC_DATA_DIR", REPO.parent / "shared"
                                                                           / "data")) / "ml-100k")
    parser.add_argument("--batch-users", type=int, default=100)
    parser.add_argument("--batch-duration-s", type=float, default=8.0, help="How long the server takes per batch.")
    parser.add_argument("--skip-full", action="store_true", help="Leave out part 1 (the full ML-100K run).")
    parser.add_argument("--json", type=Path, help="Write the numbers here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="endpoint-modes-"))
    report: dict[str, Any] = {"model": MODEL, "machine": "2 shared CPU cores, other work running"}
    with start_llm_server() as server:
        if not args.skip_full:
            full = part_estimate(server, args.ml100k, str(work / "store-full"), work / "full")
            ledger = full.pop("ledger")
            full["usd_per_1000"] = costs(ledger, full["users"], full["items"])
            report["estimate"] = full
            print(f"\n## --estimate against the ledger, ML-100K ({full['users']} users, {full['items']} items), "
                  f"{MODEL} prices; HTTP requests during the estimate: {full['requests_during_estimate']}\n")
            print("| stage | prompts | HTTP calls | estimated input tokens | sent input tokens | estimate / sent | "
                  "estimated USD | estimated USD batch | ledger USD |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in full["rows"]:
                print(f"| {r['stage']} | {r['prompts']:,} | {r['http_calls']:,} | {r['estimated_input_tokens']:,} | "
                      f"{r['sent_input_tokens']:,} | {r['ratio']:.3f} | {r['estimated_usd']:.4f} | "
                      f"{r['estimated_usd_batch']:.4f} | {r['ledger_usd']:.4f} |")
            print(f"\nestimate {full['estimate_s']:.0f} s, run {full['run_s']:.0f} s, failed items {full['failed']}")

        data = slice_of_ml100k(args.ml100k, args.batch_users, work / "slice")
        n_items = int(pd.read_parquet(data / "items.parquet")["item_id"].nunique())
        batch = part_batch(server, data, str(work / "store-batch"), work / "slice-out", args.batch_duration_s)
        b_ledger, n_ledger = batch.pop("batch_ledger"), batch.pop("normal_ledger")
        batch["usd_per_1000_batch"] = costs(b_ledger, args.batch_users, n_items)
        batch["usd_per_1000_normal"] = costs(n_ledger, args.batch_users, n_items)
        batch["ledger_modes_batch_run"] = sent(b_ledger).groupby("mode").size().to_dict()
        report["batch"] = batch
        print(f"\n## Batch mode, {args.batch_users} users ({n_items} items), SIGKILL while polling, re-run\n")
        print(f"killed while polling: {batch['killed_while_polling']}; batches created before the kill: "
              f"{batch['batches_created_before_kill']}; after the re-run: {batch['batches_created_after_rerun']} "
              f"(one per stage: {batch['stages']}); normal requests: {batch['normal_requests_in_batch_run']}")
        print(f"rows after the re-run: {batch['rows_batch']} (failed {batch['failed_batch']}); normal mode: "
              f"{batch['rows_normal']} (failed {batch['failed_normal']}); re-run took {batch['rerun_s']:.0f} s")
        print(f"\n## USD per 1,000 users (edges, profiles) or items (attributes), {MODEL} prices, from the ledger\n")
        print("| stage | normal | batch | batch / normal |" + (" ML-100K normal |" if "estimate" in report else ""))
        print("|---|---:|---:|---:|" + ("---:|" if "estimate" in report else ""))
        for s in STAGES:
            nrm, bat = batch["usd_per_1000_normal"][s], batch["usd_per_1000_batch"][s]
            full_cell = f" {report['estimate']['usd_per_1000'][s]:.4f} |" if "estimate" in report else ""
            print(f"| {s} | {nrm:.4f} | {bat:.4f} | {bat / nrm if nrm else float('nan'):.3f} |{full_cell}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
