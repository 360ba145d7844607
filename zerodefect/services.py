"""Run ASGI apps under real uvicorn servers in background threads (demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
