"""Running the application on uvicorn, on a socket we bind ourselves.

Binding first turns "address in use" and "cannot assign address" into one clear line before
uvicorn starts, and lets tests and benchmarks ask for port 0 and read back the port they got.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Iterator

from incept.errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        in_use = error.errno == errno.EADDRINUSE
        # Name lookup errors (negative numbers) carry their own text; for the others, the
        # plain text of the number, without Python's "while attempting to bind" addition.
        positive = error.errno is not None and error.errno > 0
        reason = os.strerror(error.errno) if positive else (error.strerror or str(error))
        hint = "choose another --port" if in_use else "check --host (an address of this machine)"
        raise UserError(f"cannot listen on {host}:{port} ({reason}): {hint}") from None


def _server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(app, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serves `app` on `sock` until interrupted (Ctrl-C or SIGTERM stop it cleanly)."""
    _server(app, log_level).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(
    app, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> Iterator[str]:
    """Serves `app` from a background thread while the block runs; yields its base URL
    (`http://127.0.0.1:PORT`). For tests, benchmarks and notebooks."""
    sock = bind(host, port)
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
