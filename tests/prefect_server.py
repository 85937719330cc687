"""Start a real `prefect server start` (and process workers) as subprocesses, for tests.

Not a test module: tests/conftest.py registers it as a plugin, so any test may take the module-scoped fixture
`prefect_server` (one server, and one SQLite DB, per test module), or use the context manager
`running_prefect_server()` directly, e.g.

    def test_something(prefect_server):
        prefect_server.cli("work-pool", "create", "llmrec-process", "--type", "process")
        worker = prefect_server.start_worker("llmrec-process")   # stopped with the server at the latest
        with prefect_server.api():                  # this process's Prefect client now talks to that server
            ...
        subprocess.run([...], env=prefect_server.env)  # a child process that talks to it too

Every server gets its own temporary PREFECT_HOME (database, profiles, default result storage), listens on a free
127.0.0.1 port and runs its scheduler every second, so a deployment schedule fires within seconds; workers poll
every second. Processes are started by the project's one launcher (`llmsim.launch.Process`) and stopped with their
process groups (which also ends the flow-run processes a worker started) in order: workers first, then the
server — when the `with` block ends, when the fixture is torn down after a failing test, and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from llmsim.launch import Process

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
STARTUP_TIMEOUT_S = 90.0  # a fresh SQLite DB runs every migration: 13-16 s idle on 2 cores, more under load
CLI_TIMEOUT_S = 120.0

# Settings for fast, quiet, offline runs, plus loops short enough for tests.
FAST_SETTINGS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
}


def deliver_queued_events(timeout_s: float = 60.0) -> None:
    """Wait (at most `timeout_s` per service) until Prefect's background services have sent what this process
    queued: task-run events and API logs. Run while their server is still up: an event left for a server that has
    stopped is retried at interpreter exit, reconnecting for about a minute per event."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=timeout_s)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """A running `prefect server start`: its URLs, the env for child processes, CLI calls, workers and `stop()`."""

    def __init__(self, home: Path, port: int, settings: Mapping[str, str]) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(FAST_SETTINGS)
        env.update(settings)
        env.update({"PREFECT_HOME": str(home), "PREFECT_API_URL": self.api_url})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.env: dict[str, str] = env
        self.workers: list[Process] = []
        self.server: Process | None = None

    # --- clients -------------------------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `prefect ARGS` against this server; with `check`, a non-zero exit raises with its output."""
        return self.run([PREFECT, *args], check=check, cwd=cwd, timeout=timeout, env=env)

    def run(self, cmd: list[str], check: bool = True, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run any command with this server's env (plus `env`), capturing its output."""
        done = subprocess.run(cmd, cwd=cwd or REPO, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        """Point this process's Prefect client (`get_client()`) at the server while the block runs. At its end the
        events and API logs the block's runs queued are delivered (`deliver_queued_events`), while the server is up."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            try:
                yield
            finally:
                deliver_queued_events()

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.api_url}/health", timeout=2.0)
            return response.status_code == 200 and response.json() is True
        except (httpx.HTTPError, ValueError):
            return False

    # --- processes -----------------------------------------------------------------------------------------------
    def start_worker(self, pool: str, *, cwd: Path | None = None, limit: int | None = None,
                     env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> Process:
        """`prefect worker start --pool POOL` (polling every second); returns once it reports that it started."""
        cmd = [PREFECT, "worker", "start", "--pool", pool, "--type", "process",
               "--name", f"{pool}-worker-{len(self.workers)}"]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        name = f"worker-{len(self.workers)}"
        worker = Process(cmd, env={**self.env, **(env or {})}, cwd=cwd or REPO, log_path=self.home / f"{name}.log",
                         name=name)
        self.workers.append(worker)
        worker.wait_for("started!", timeout_s)
        return worker

    def start(self) -> None:
        """Start the server and wait for /api/health (at most 90 s)."""
        cmd = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.server = Process(cmd, env=self.env, cwd=REPO, log_path=self.home / "server.log", name="server")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.healthy():
            if not self.server.alive():
                raise RuntimeError(f"prefect server exited during startup:\n{self.server.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy within {STARTUP_TIMEOUT_S:.0f} s:\n"
                                   f"{self.server.log()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """Server and worker logs (for assertion messages)."""
        parts = [(self.server.name, self.server.log())] if self.server else []
        parts += [(w.name, w.log()) for w in self.workers]
        return "\n".join(f"--- {name} ---\n{text[-6000:]}" for name, text in parts)

    def stop(self) -> None:
        """Workers first (a server that vanishes under a worker can leave it hanging), then the server."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()

    def __repr__(self) -> str:
        return f"PrefectServer(api_url={self.api_url!r}, home={str(self.home)!r})"


@contextlib.contextmanager
def running_prefect_server(**settings: str) -> Iterator[PrefectServer]:
    """A real Prefect server on a free port with a temporary PREFECT_HOME; `settings` are extra environment
    variables for it and its children (e.g. PREFECT_SERVER_DATABASE_CONNECTION_URL). Stops everything it started
    and deletes the home on exit."""
    home = Path(tempfile.mkdtemp(prefix="llmrec-prefect-server-"))
    server = None
    try:
        for _ in range(3):  # the free port can be taken before the server binds it: try another one
            server = PrefectServer(home, _free_port(), settings)
            try:
                server.start()
                break
            except RuntimeError:
                log = server.server.log() if server.server else ""
                server.stop()
                if "address already in use" not in log.lower():
                    raise
        else:
            raise RuntimeError("no free port for the Prefect server after 3 attempts")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[PrefectServer]:
    """One real Prefect server per test module."""
    with running_prefect_server() as server:
        yield server
