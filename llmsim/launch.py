"""The one launcher of server processes: the local LLM server for `llmrec run` and the tests (`start_llm_server`),
and any other server a test needs (the Prefect server and its workers in tests/prefect_server.py).

A `Process` runs in its own process group with stdout+stderr in a log file. `stop()` ends the whole group (SIGTERM,
then SIGKILL), so nothing it started outlives it; whatever is still running when the interpreter exits is stopped
then, newest first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from llmsim.cli import LISTENING

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

_LIVE: list[Process] = []
_LIVE_LOCK = threading.Lock()


class LaunchError(RuntimeError):
    """A process ended, or did not get ready in time, during its startup."""


class Process:
    """A subprocess in its own process group whose stdout+stderr go to `log_path` (a temporary file, deleted by
    `stop()`, when none is given)."""

    def __init__(self, cmd: list[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 log_path: str | Path | None = None, name: str | None = None) -> None:
        self.name = name or Path(cmd[0]).name
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=cwd, env=None if env is None else dict(env), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def log(self) -> str:
        """Its stdout+stderr so far (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, text: str, timeout_s: float) -> str:
        """The first log line that contains `text`, once there is one; LaunchError (with the log) when the process
        ends first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = next((line for line in self.log().splitlines() if text in line), None)
            if line is not None:
                return line
            if not self.alive() or time.monotonic() > deadline:
                what = "exited" if not self.alive() else f"did not print {text!r} within {timeout_s:.0f} s"
                raise LaunchError(f"{self.name} {what} during startup:\n{self.log()[-6000:]}")
            time.sleep(0.05)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL after `grace_s`, then whatever of the group is left; idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=grace_s)
        # Children that outlived their leader (e.g. a flow run started by a worker): same group, same fate.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pid={self.pid})"


class LLMServer(Process):
    """The local server as a subprocess, ready once it printed its address: its URLs and admin calls."""

    def __init__(self, cmd: list[str], *, env: Mapping[str, str], timeout_s: float) -> None:
        super().__init__(cmd, env=env, name="llmrec-llm-server")
        try:
            self.root_url = self.wait_for(LISTENING, timeout_s).rsplit(" ", 1)[1]
        except BaseException:
            self.stop()
            raise
        self.base_url = f"{self.root_url}/v1"  # what `openai.OpenAI(base_url=...)` takes
        self._http = httpx.Client(base_url=self.root_url, timeout=30.0)

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

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if hasattr(self, "_http"):
            self._http.close()
        super().stop(grace_s)


def start_llm_server(*, env: Mapping[str, str] | None = None, timeout_s: float = STARTUP_TIMEOUT_S,
                     **faults: Any) -> LLMServer:
    """`python -m llmsim` on a free 127.0.0.1 port with the given fault settings (`error_rate=0.5` becomes
    `--error-rate=0.5`, `fine_tune_fail=True` becomes `--fine-tune-fail`; None and False are left out) and `env`
    added to this process's environment. It stops itself when this process ends. Use it as a context manager or
    call `.stop()`."""
    flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}")
             for name, value in faults.items() if value is not None and value is not False]
    cmd = [sys.executable, "-m", "llmsim", "--host", "127.0.0.1", "--port", "0", "--parent-pid", str(os.getpid()),
           *flags]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    package_root = str(Path(__file__).resolve().parents[1])  # so `-m llmsim` is found from any folder
    full_env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [full_env.get("PYTHONPATH")])])
    return LLMServer(cmd, env=full_env, timeout_s=timeout_s)


@atexit.register
def _stop_all() -> None:
    """Stop whatever is still running when the interpreter exits (newest first: workers before their server)."""
    with _LIVE_LOCK:
        processes = list(reversed(_LIVE))
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop()
