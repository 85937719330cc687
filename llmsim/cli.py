"""The server's one command line, `serve_command`: `llmrec llm-server` and `python -m llmsim` both run it. It serves
until SIGTERM/SIGINT. Every fault flag can also be given as an environment variable `LLMREC_SERVER_<NAME>` (e.g.
LLMREC_SERVER_ERROR_RATE=0.1); a flag wins over the environment."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum, StrEnum
from types import UnionType
from typing import Any, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from llmsim.faults import ENV_PREFIX, FaultConfig

LISTENING = "llmrec-llm-server listening on"  # the startup line: LISTENING http://HOST:PORT


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def _option_type(name: str, field: FieldInfo) -> Any:
    """The command-line type of FaultConfig field `name`: its type without None; a Literal becomes a choice
    (a StrEnum of its values)."""
    base = field.annotation
    if get_origin(base) in (Union, UnionType):  # `X | None`
        base = next(a for a in get_args(base) if a is not type(None))
    if get_origin(base) is Literal:
        return StrEnum(name.title().replace("_", ""), {str(v): str(v) for v in get_args(base)})
    return base


def fault_options(*, env: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command taking `**faults` one option per FaultConfig field (`--error-rate`, help from the field's
    description, None when not given), read from LLMREC_SERVER_<NAME> too with `env`. Every fault the server has is
    thus a flag of `llmrec llm-server` and of `llmrec llm-faults`."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        options = [inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[_option_type(name, field)],  # noqa: UP045 (typer)
            default=typer.Option(None, f"--{name.replace('_', '-')}", show_default=False, help=field.description,
                                 envvar=ENV_PREFIX + name.upper() if env else None))
            for name, field in FaultConfig.model_fields.items()]
        command.__signature__ = signature.replace(parameters=[*own, *options])  # type: ignore[attr-defined]
        return command

    return decorate


@fault_options(env=True)
def serve_command(
    host: str = typer.Option("127.0.0.1", envvar=ENV_PREFIX + "HOST", help="Address to listen on."),
    port: int = typer.Option(8000, envvar=ENV_PREFIX + "PORT", help="0 picks a free port (printed in the startup "
                                                                    "line)."),
    preload: bool = typer.Option(False, help="Load the embedding model in the background at startup (default: on "
                                             "first use)."),
    parent_pid: int | None = typer.Option(None, help="Exit when the process with this id ends (test harnesses: no "
                                                     "orphaned servers)."),
    log_level: LogLevel = typer.Option(LogLevel.warning, help="uvicorn's log level."),
    **faults: Any,
) -> None:
    """Serve the local OpenAI-compatible endpoint (NOT a language model: transparent heuristics for offline runs
    and tests), with the fault flags below switched on."""
    config = _fault_config(faults)
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    try:
        serve(host, port, config, preload=preload, log_level=log_level.value)
    except OSError as exc:  # e.g. address already in use
        typer.echo(f"llmrec-llm-server: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None


def _fault_config(options: dict[str, Any]) -> FaultConfig:
    """The FaultConfig of the fault flags among a command's `options` (None: not given; an Enum choice gives its
    value), or a usage error."""
    given = {k: v.value if isinstance(v, Enum) else v for k, v in options.items()
             if k in FaultConfig.model_fields and v is not None}
    try:
        return FaultConfig(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors())
        raise typer.BadParameter(f"invalid fault settings: {problems}") from None


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


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not 0): asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every keep-alive request waits ~40 ms (Nagle's algorithm against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, faults: FaultConfig | None = None, *, preload: bool = False,
          log_level: str = "warning") -> None:
    """Run the server in this process until SIGTERM/SIGINT. Prints `llmrec-llm-server listening on
    http://HOST:PORT` once the socket accepts connections (with the real port when `port` is 0)."""
    import uvicorn

    from llmsim.app import create_app

    sock = bind_socket(host, port)
    config = uvicorn.Config(create_app(faults, preload=preload), log_level=log_level, access_log=False,
                            lifespan="on", timeout_keep_alive=75, timeout_graceful_shutdown=3)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"{LISTENING} http://{shown_host}:{sock.getsockname()[1]}", flush=True)
    with contextlib.closing(sock):
        uvicorn.Server(config).run(sockets=[sock])


@fault_options(env=False)
def faults_command(
    url: str = typer.Option("http://127.0.0.1:8000", envvar="OPENAI_BASE_URL", help="The running local server: "
                            "its /v1 address (as in OPENAI_BASE_URL) or its root."),
    clear: bool = typer.Option(False, "--clear", help="Switch every fault off."),
    **faults: Any,
) -> None:
    """Show the fault settings of a running local server, switch them all off (--clear), or replace them with the
    fault flags given (those not given go back to off). Its request counters are not touched."""
    import httpx

    given = _fault_config(faults).model_dump(exclude_unset=True)
    if clear and given:
        raise typer.BadParameter("--clear switches every fault off: give it alone, or give only the faults to keep")
    root = url.rstrip("/").removesuffix("/v1")
    try:
        with httpx.Client(base_url=root, timeout=10.0) as http:
            response = http.post("/admin/faults", json=given) if clear or given else http.get("/admin/faults")
    except httpx.HTTPError as exc:
        typer.echo(f"error: no local LLM server answers at {root} ({exc}); is `llmrec llm-server` running there?",
                   err=True)
        raise typer.Exit(2) from None
    if response.status_code != 200:
        typer.echo(f"error: {root}/admin/faults answered HTTP {response.status_code}: {response.text[:300]} (is it "
                   "the local server, `llmrec llm-server`?)", err=True)
        raise typer.Exit(2)
    settings = response.json()
    defaults = FaultConfig().model_dump()  # server settings with a default of their own (e.g. structured_outputs)
    on = {k: v for k, v in settings.items() if v and v != defaults.get(k) and k not in ("hang_s", "seed")}
    if settings.get("hang_rate"):
        on["hang_s"] = settings["hang_s"]
    typer.echo(f"faults at {root}: " + (", ".join(f"{k}={v}" for k, v in on.items()) if on else "none (all off)"))
