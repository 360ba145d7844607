"""Run services for the demo, the tests and the benchmark: ASGI apps under real uvicorn servers
in background threads, or `zerodefect` commands in their own processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Yield the base URL of `app` served by uvicorn (port 0: a free one); stop it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    started = threading.Event()
    original = server.startup

    async def startup(sockets=None):
        await original(sockets)
        started.set()

    server.startup = startup

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's way out when the app's startup fails (it logs why)
            server.run()

    thread = threading.Thread(target=run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    while not started.wait(0.1):
        if not thread.is_alive():
            raise RuntimeError("uvicorn failed to start")
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_zerodefect(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m zerodefect ARGS` in its own process group, its output appended to `log`.

    The one way the demo, the benchmark and the tests start a service in another process: its
    own session, so it can outlive its parent (the demo's record) or be stopped with its
    children (stop_process).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "zerodefect", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def answers_healthz(url: str) -> bool:
    """Whether a service at `url` answers GET /healthz with 200 (the edge's and the bench's)."""
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    proc: subprocess.Popen, ready: Callable[[], bool], what: str, log: Path, timeout: float = 120.0
) -> None:
    """Return once `ready()` holds; raise, naming the log, if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:g} s; see {log}")
        time.sleep(0.2)  # polling a starting process, not a timing assumption


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a process from start_zerodefect and everything it started (SIGTERM to its group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
