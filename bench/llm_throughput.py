"""Throughput of the LLM client under a server-side rate limit (a measurement, not a test).

Starts the local OpenAI-compatible server with a sliding-window limit of `--server-rpm` requests per minute (default:
the same as the client's `--rpm`), sends `--n` short synthetic edge prompts through `LLMClient` from
`--max-in-flight` threads, and reports: achieved requests/min divided by the configured limit (goal >= 0.9), the
429s the server answered (from /admin/stats), p50/p95 HTTP latency, and the wall time of the same prompts again
with the response cache warm (goal: no HTTP at all). Prints a markdown table; --json writes the numbers.

    python bench/llm_throughput.py                       # 2,000 prompts at 600 RPM: about 3.5 minutes
    python bench/llm_throughput.py --n 300 --rpm 600     # a shorter run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

from llmsim.launch import start_llm_server  # noqa: E402
from recsys.config import LLMConfig  # noqa: E402
from recsys.llm.client import LLMClient, UsageEvent  # noqa: E402
from recsys.llm.limits import BURST_FRACTION, RATE_FACTOR  # noqa: E402

SYSTEM = ("You are a movie recommendation system. Based on the user's viewing history (title, year, genres), "
          "choose from the candidate list the movie the user will like most and the one the user will like least.")
GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Horror", "Animation", "Documentary"]
TEMPLATE_VERSION = "bench-edges-v1"


def item_pool(n: int, seed: int) -> list[str]:
    """`title | year | genres` lines; a small pool, so the server's embedding cache is warm after the warm-up."""
    rng = random.Random(seed)
    return [f"Film {i} | {rng.randint(1950, 2020)} | {', '.join(rng.sample(GENRES, 2))}" for i in range(n)]


def edge_prompt(i: int, pool: list[str], rng: random.Random, history: int = 5, k: int = 10) -> list[dict[str, str]]:
    """A short edge prompt in the project's format; `i` makes every prompt distinct (so nothing is cached)."""
    chosen = rng.sample(pool, history + k)
    lines = ["User history:", *(f"- {line}" for line in chosen[:history]), "Candidates:",
             *(f"[{j}] {line}" for j, line in enumerate(chosen[history:])),
             'Answer with JSON only, no reasoning: {"liked": <candidate index>, "disliked": <candidate index>}. '
             f"Both indices must come from the candidate list (0 to {k - 1}) and must differ. (request {i})"]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_all(client: LLMClient, prompts: list[list[dict[str, str]]], workers: int) -> tuple[float, list[Any]]:
    """Send every prompt from `workers` threads; (wall seconds, results)."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda m: client.chat(m, template_version=TEMPLATE_VERSION,
                                                      tags={"stage": "bench"}), prompts))
    return time.monotonic() - start, results


def bench(n: int, rpm: int, tpm: int | None, server_rpm: int, max_in_flight: int, max_tokens: int,
          seed: int) -> dict[str, Any]:
    """Run the benchmark and return its numbers."""
    rng = random.Random(seed)
    pool = item_pool(60, seed)  # a multiple of 15 (history + candidates) for the warm-up
    prompts = [edge_prompt(i, pool, rng) for i in range(n)]
    events: list[UsageEvent] = []
    lock = threading.Lock()

    def sink(event: UsageEvent) -> None:
        with lock:
            events.append(event)

    with start_llm_server(seed=seed) as server, tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        # Warm-up outside the measurement: the server loads its embedding model and embeds the item pool.
        warm = LLMClient(LLMConfig(model="llmrec-heuristic-warmup", base_url=server.base_url, rpm=None, tpm=None,
                                   max_tokens=max_tokens), cache_dir=Path(tmp) / "warm-cache")
        for j in range(0, len(pool), 15):
            msgs = edge_prompt(-1 - j, pool[j:j + 15], random.Random(0))
            if warm.chat(msgs, template_version="warmup").text is None:
                raise RuntimeError(f"warm-up request failed:\n{server.log()[-2000:]}")
        warm.close()
        server.set_faults(rpm_limit=server_rpm, seed=seed)  # a fresh, empty window
        server.reset()

        cfg = LLMConfig(model="llmrec-heuristic", base_url=server.base_url, rpm=rpm, tpm=tpm,
                        max_in_flight=max_in_flight, max_tokens=max_tokens, max_attempts=6,
                        backoff_initial_s=0.5, backoff_max_s=30.0, timeout_s=60.0)
        with LLMClient(cfg, cache_dir=Path(tmp) / "cache", usage_sink=sink) as client:
            cold_s, cold = run_all(client, prompts, max_in_flight)
            cold_stats = server.stats()
            warm_s, warm_results = run_all(client, prompts, max_in_flight)
            warm_stats = server.stats()

    http_ok = [e for e in events if not e.cached and e.outcome == "ok"]
    latencies = [e.latency_s for e in http_ok]
    achieved_rpm = len(http_ok) / cold_s * 60
    return {
        "n": n,
        "rpm_limit": rpm,
        "server_rpm_limit": server_rpm,
        "tpm_limit": tpm,
        "max_in_flight": max_in_flight,
        "rate_factor": RATE_FACTOR,
        "burst_fraction": BURST_FRACTION,
        "answered": sum(r.text is not None for r in cold),
        "failed": sum(r.text is None for r in cold),
        "http_attempts": sum(1 for e in events if not e.cached),
        "server_requests": cold_stats["requests"],
        "server_429": int(cold_stats["by_status"].get("429", 0)),
        "cold_wall_s": cold_s,
        "achieved_rpm": achieved_rpm,
        "achieved_over_limit": achieved_rpm / rpm,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "prompt_tokens": sum(e.prompt_tokens for e in http_ok),
        "completion_tokens": sum(e.completion_tokens for e in http_ok),
        "warm_wall_s": warm_s,
        "warm_cached": sum(r.cached for r in warm_results),
        "warm_http_requests": warm_stats["requests"] - cold_stats["requests"],
    }


def markdown(r: dict[str, Any]) -> str:
    """The results as a markdown table."""
    rows = [
        ("prompts", f"{r['n']}"),
        ("client limit (RPM / TPM / in flight)", f"{r['rpm_limit']} / {r['tpm_limit']} / {r['max_in_flight']}"),
        ("server sliding-window limit (RPM)", f"{r['server_rpm_limit']}"),
        ("answered / failed", f"{r['answered']} / {r['failed']}"),
        ("HTTP attempts (server saw)", f"{r['http_attempts']} ({r['server_requests']})"),
        ("429s from the server", f"{r['server_429']}"),
        ("wall time, cold cache", f"{r['cold_wall_s']:.1f} s"),
        ("achieved requests/min", f"{r['achieved_rpm']:.1f}"),
        ("achieved / limit (goal >= 0.9)", f"{r['achieved_over_limit']:.3f}"),
        ("HTTP latency p50 / p95", f"{r['latency_p50_s'] * 1000:.1f} ms / {r['latency_p95_s'] * 1000:.1f} ms"),
        ("tokens (prompt / completion)", f"{r['prompt_tokens']} / {r['completion_tokens']}"),
        ("wall time, warm cache", f"{r['warm_wall_s']:.2f} s"),
        ("warm: cached answers / HTTP requests", f"{r['warm_cached']} / {r['warm_http_requests']}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="prompts to send (default 2000)")
    parser.add_argument("--rpm", type=int, default=600, help="the client's requests/minute limit (default 600)")
    parser.add_argument("--tpm", type=int, default=400_000,
                        help="the client's tokens/minute limit (default 400000; 0: none)")
    parser.add_argument("--server-rpm", type=int, default=None, help="the server's limit (default: --rpm)")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = bench(args.n, args.rpm, args.tpm or None, args.server_rpm or args.rpm, args.max_in_flight,
                   args.max_tokens, args.seed)
    print(markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["achieved_over_limit"] >= 0.9 and result["server_429"] == 0 and result["warm_http_requests"] == 0
    print(f"\n{'PASS' if ok else 'MISS'}: achieved/limit {result['achieved_over_limit']:.3f}, "
          f"429s {result['server_429']}, warm-cache HTTP requests {result['warm_http_requests']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
