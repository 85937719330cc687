"""Does a Dask worker freeze when its statistical profiler samples threads while tasks start and end threads?

Reproduces, on this machine's Python, the deadlock that `flows/dask_workers.py` avoids (python/cpython#106883):
a LocalCluster of 2 worker processes runs batches that, like llmrec's LLM batches, each run their work on short
thread pools, while the work leaves cyclic garbage whose finalizers run Python code. Each trial either finishes
or is declared frozen when no task has finished for `--stall-s` seconds; a frozen worker's stacks are written
to `--dump-dir` with py-spy when it is on PATH. The profiler is sampled every 1 ms (default 10 ms) and the GIL
switch interval is 0.2 ms (default 5 ms), both to make the race likelier than in a real run.

    python bench/dask_worker_freeze.py --profiler on --trials 10    # distributed's default
    python bench/dask_worker_freeze.py --profiler off --trials 10   # with llmrec's NoWorkerProfiler plugin
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import psutil
from distributed import Client, LocalCluster

from flows.dask_workers import NoWorkerProfiler, profiler_running

BATCHES = 40  # per trial
POOLS_PER_BATCH = 40  # thread pools started and shut down by each batch
THREADS_PER_POOL = 8  # as recsys/augment/runner.py runs one batch's requests


class Garbage:
    """A reference cycle with a finalizer: only the collector frees it, and its __del__ runs Python code."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        total = 0
        for i in range(50):
            total += i


def work(item: int) -> int:
    for _ in range(5):
        [Garbage() for _ in range(50)]
    return item


def batch(index: int) -> int:
    done = 0
    for _ in range(POOLS_PER_BATCH):
        with ThreadPoolExecutor(THREADS_PER_POOL) as pool:
            done += sum(1 for _ in pool.map(work, range(THREADS_PER_POOL)))
    return done


def dump_stacks(pids: list[int], dump_dir: Path, trial: int) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        return
    dump_dir.mkdir(parents=True, exist_ok=True)
    for pid in pids:
        out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        (dump_dir / f"trial{trial}-worker{pid}.txt").write_text(out.stdout + out.stderr)


def trial(profiler: bool, stall_s: float, dump_dir: Path, index: int) -> tuple[bool, float]:
    """(finished, seconds) of one cluster running BATCHES batches."""
    t0 = time.monotonic()
    with dask.config.set({"distributed.worker.profile.interval": "1ms"}), \
            LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        if not profiler:
            client.register_plugin(NoWorkerProfiler())
        assert all(client.run(profiler_running).values()) == profiler
        client.run(sys.setswitchinterval, 0.0002)
        futures = client.map(batch, range(BATCHES))
        finished, last_progress = 0, time.monotonic()
        while finished < len(futures):
            time.sleep(0.5)
            now_finished = sum(f.done() for f in futures)
            if now_finished > finished:
                finished, last_progress = now_finished, time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                workers = [p.pid for p in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(
                    p.cmdline())]
                dump_stacks(workers, dump_dir, index)
                for pid in workers:  # a frozen process cannot run its SIGTERM handler
                    psutil.Process(pid).kill()
                return False, time.monotonic() - t0
    return True, time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiler", choices=("on", "off"), required=True)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--stall-s", type=float, default=60.0, help="no task finished this long: frozen")
    parser.add_argument("--dump-dir", type=Path, default=Path("runs/dask-freeze-dumps"))
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, profiler {args.profiler}, {args.trials} trials", flush=True)
    frozen = 0
    for index in range(args.trials):
        ok, seconds = trial(args.profiler == "on", args.stall_s, args.dump_dir, index)
        frozen += not ok
        print(f"trial {index}: {'finished' if ok else 'FROZEN'} in {seconds:.1f} s", flush=True)
    print(f"profiler {args.profiler}: {frozen} of {args.trials} trials froze", flush=True)


if __name__ == "__main__":
    main()
