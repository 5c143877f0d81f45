"""A FastAPI app served by uvicorn in a thread of the test process, on a free loopback port.

For tests that need real sockets (WebSockets, streamed HTTP, the node and openai clients) but an app
built in-process, so they can inject a fake decoder and reach ``app.state``. Tests that need a
separate process use ``conftest.LiveServer``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def running_app(app: Any, **config: Any) -> Iterator[int]:
    """Serve ``app`` until the block ends; yields the port. ``config``: more uvicorn.Config options."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a loaded machine (the tests run at nice 19) can take this long
        while not server.started:  # uvicorn says when it listens; nothing to await across threads
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
