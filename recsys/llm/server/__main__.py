"""`python -m recsys.llm.server`: serve the local OpenAI-compatible server (not a language model) until
SIGTERM/SIGINT. Every fault flag can also be given as an environment variable `LLMREC_SERVER_<NAME>`
(e.g. LLMREC_SERVER_ERROR_RATE=0.1); a flag wins over the environment."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from pydantic import ValidationError

from recsys.llm.server.app import serve
from recsys.llm.server.faults import ENV_PREFIX, FaultConfig, faults_from_env

_FAULT_FLAGS: dict[str, tuple[type, str]] = {
    "rpm_limit": (int, "requests per 60 s sliding window; excess requests get 429 with Retry-After"),
    "error_rate": (float, "share of requests answered with HTTP 500"),
    "latency_ms": (float, "milliseconds added to every answer"),
    "hang_rate": (float, "share of requests that sleep --hang-s seconds before answering"),
    "hang_s": (float, "how long a hanging request sleeps (default 30)"),
    "malformed_rate": (float, "share of chat answers that are prose instead of JSON (HTTP 200)"),
    "out_of_candidates_rate": (float, "share of edge answers naming an index outside the candidate list"),
    "drop_rate": (float, "share of requests whose TCP connection is closed without an answer"),
    "fail_match": (str, "a substring: every request whose messages contain it gets HTTP 500"),
    "seed": (int, "seed of the fault RNG"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the server CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m recsys.llm.server",
        description="Local OpenAI-compatible server for offline runs and tests. It is not a language model: it "
                    "answers with transparent heuristics.")
    parser.add_argument("--host", default=os.environ.get(ENV_PREFIX + "HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get(ENV_PREFIX + "PORT", "8000")),
                        help="0 picks a free port (printed in the startup line)")
    for name, (kind, help_text) in _FAULT_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=f"{help_text} [env {ENV_PREFIX}{name.upper()}]")
    parser.add_argument("--preload", action="store_true",
                        help="load the embedding model in the background at startup (default: on first use)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when the process with this id ends (test harnesses: no orphaned servers)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def fault_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> FaultConfig:
    """Fault settings from the environment, overridden by the flags that were given."""
    settings: dict[str, object] = dict(faults_from_env(environ))
    settings.update({name: getattr(args, name) for name in _FAULT_FLAGS if getattr(args, name) is not None})
    return FaultConfig(**settings)


def _exit_with_parent(pid: int, interval_s: float = 1.0) -> None:
    """A daemon thread that sends this process SIGTERM (a graceful stop) once process `pid` is gone."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # exists, owned by someone else
                continue

    threading.Thread(target=watch, name="llmrec-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) and serve until SIGTERM/SIGINT; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = fault_config(args)
    except ValidationError as exc:
        parser.error(f"invalid fault settings: {exc}")
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    try:
        serve(args.host, args.port, faults, preload=args.preload, log_level=args.log_level)
    except OSError as exc:  # e.g. address already in use
        print(f"llmrec-llm-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
