"""Start the local OpenAI-compatible server (`python -m recsys.llm.server`) as a real subprocess, for tests.

Not a test module: other test modules import `start_llm_server` or use the `llm_server` fixture, e.g.

    pytest_plugins = ["tests.llm_server"]  # registers the fixtures `llm_server` and `llm_server_factory`

    def test_something(llm_server):
        client = openai.OpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0)

    def test_faults(llm_server_factory):
        server = llm_server_factory(error_rate=0.5, seed=1)   # stopped when the test ends

    def test_by_hand():
        from tests.llm_server import start_llm_server
        with start_llm_server(error_rate=0.5, seed=1) as server:
            ...

(Importing this module at the top of a test module that also lists it in `pytest_plugins` only costs a harmless
PytestAssertRewriteWarning; `if TYPE_CHECKING: from tests.llm_server import RunningServer` avoids it.)

The server is NOT a language model: it answers with transparent heuristics (see recsys/llm/server/heuristics.py).
Every process started here is stopped when its `with` block or fixture ends, and again at interpreter exit, so a
failing test never leaves a server running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

# Every server still running, so that an atexit hook can stop those a crashed test forgot.
_RUNNING: set[RunningServer] = set()
_RUNNING_LOCK = threading.Lock()


def _free_port() -> int:
    """A port that was free a moment ago (the start loop retries if another process takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fault_args(faults: dict[str, Any]) -> list[str]:
    """`error_rate=0.5` -> `--error-rate 0.5`; None values are left out (the server's default)."""
    args: list[str] = []
    for name, value in faults.items():
        if value is None:
            continue
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


class RunningServer:
    """A handle on one server subprocess: its URLs, admin calls and `stop()`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.log_path = log_path
        self.root_url = f"http://{self.host}:{port}"
        self.base_url = f"{self.root_url}/v1"  # what `openai.OpenAI(base_url=...)` takes
        self._http = httpx.Client(base_url=self.root_url, timeout=30.0)

    # --- admin -------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """GET /admin/stats."""
        response = self._http.get("/admin/stats")
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """POST /admin/reset: zero the stats (the faults stay)."""
        self._http.post("/admin/reset").raise_for_status()

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """POST /admin/faults: REPLACE all fault settings (unnamed ones go back to off); returns the new settings."""
        response = self._http.post("/admin/faults", json=faults)
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        """The server's stdout+stderr so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether the subprocess is still running."""
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        with contextlib.suppress(Exception):
            self._http.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(timeout=STOP_GRACE_S)
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer(pid={self.process.pid}, base_url={self.base_url!r})"


def _wait_ready(server: RunningServer, deadline: float) -> bool:
    """Poll GET /v1/models until it answers 200 (True) or the process dies (False); raises after the deadline."""
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"LLM server did not answer /v1/models within {STARTUP_TIMEOUT_S:.0f} s:\n{server.log()}")


def start_llm_server(**faults: Any) -> RunningServer:
    """Start `python -m recsys.llm.server` on a free 127.0.0.1 port with the given fault settings
    (`rpm_limit`, `error_rate`, `latency_ms`, `hang_rate`, `hang_s`, `malformed_rate`, `out_of_candidates_rate`,
    `drop_rate`, `fail_match`, `seed`) and wait until `/v1/models` answers (at most 60 s). Use it as a context
    manager or call `.stop()`."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_log = ""
    for _ in range(5):  # a port can be taken between _free_port() and the server's bind: try another one
        port = _free_port()
        fd, log_name = tempfile.mkstemp(prefix="llmrec-llm-server-", suffix=".log")
        os.close(fd)
        log_path = Path(log_name)
        # --parent-pid: the server also stops itself if this process dies without running any cleanup (SIGKILL).
        cmd = [sys.executable, "-m", "recsys.llm.server", "--host", "127.0.0.1", "--port", str(port),
               "--parent-pid", str(os.getpid()), *_fault_args(faults)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        server = RunningServer(process, port, log_path)
        with _RUNNING_LOCK:
            _RUNNING.add(server)
        try:
            if _wait_ready(server, deadline):
                return server
        except BaseException:
            server.stop()
            raise
        last_log = server.log()
        server.stop()
        if "address already in use" not in last_log.lower():
            break
    raise RuntimeError(f"LLM server exited during startup:\n{last_log}")


@atexit.register
def _stop_all() -> None:
    """Stop whatever is still running when the interpreter exits (a test that crashed past its cleanup)."""
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="module")
def llm_server() -> Iterator[RunningServer]:
    """A fault-free server shared by one test module; stats are reset before the module's first test."""
    with start_llm_server() as server:
        yield server


@pytest.fixture()
def llm_server_factory() -> Iterator[Callable[..., RunningServer]]:
    """`llm_server_factory(**faults)` starts a server like `start_llm_server`; all are stopped when the test ends."""
    started: list[RunningServer] = []

    def start(**faults: Any) -> RunningServer:
        server = start_llm_server(**faults)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
