"""Running the application on uvicorn, on a socket we bind ourselves.

Binding first turns "address in use" and "cannot assign address" into one clear line before
uvicorn starts, and lets tests and benchmarks ask for port 0 and read back the port they got.
"""

from __future__ import annotations

import asyncio
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


# Answer of a connection whose request did not arrive in time (written by hand: there is no
# request for the HTTP machinery to answer yet).
_LATE = b'{"error": "the request did not arrive in time (the server\'s --read-timeout)"}'
_LATE_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_LATE), _LATE)
)


# How long a connection closed with its request body unread goes on reading (and dropping) what
# the client still sends. Closing a socket with unread bytes makes the kernel answer with a
# reset, which can destroy the answer (a 413, a 408) before the client reads it; a client that is
# still sending sees a broken pipe instead of its answer. Bounded in time, so a client that never
# stops sending costs nothing but these seconds.
_LINGER_SECONDS = 2.0


class _LingeringTransport:
    """A transport whose close(), while `unread()` says input is still coming, first sends the
    end of the stream (after what is still to be written) and drops further input until the
    client closes too or _LINGER_SECONDS pass; every other attribute is the real transport's.
    (Idle connections close at once, so a shutdown does not wait on them.)"""

    def __init__(self, transport, loop, unread):
        self._transport, self._loop, self._unread = transport, loop, unread
        self._timer = None

    def __getattr__(self, name):
        return getattr(self._transport, name)

    @property
    def lingering(self) -> bool:
        return self._timer is not None

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self, linger: bool | None = None) -> None:
        if self.is_closing():
            return
        linger = self._unread() if linger is None else linger
        if not linger or not self._transport.can_write_eof():
            self._transport.close()
            return
        self._transport.write_eof()
        self._timer = self._loop.call_later(_LINGER_SECONDS, self.abort_linger)
        self._transport.resume_reading()  # keep draining even if the body had paused reading

    def abort_linger(self) -> None:
        """The real close (the client closed too, or the time is up)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._transport.close()


def _protocol(header_timeout: float):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers.

    uvicorn waits for headers without end (its keep-alive timer stops at the first byte), so a
    client sending a few bytes now and then would hold its connection for ever: the headers of
    a request must be complete `header_timeout` seconds after the connection opened or, on a
    kept-alive connection, after their first byte came, else the client gets a 408 and the
    connection is closed. (Idle kept-alive connections are uvicorn's --keep-alive; the body has
    its own deadline, in the app.)
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class WithHeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport):
            loop = asyncio.get_running_loop()
            super().connection_made(_LingeringTransport(transport, loop, self._unread))
            self._arm()

        def data_received(self, data):
            if self.transport.lingering:
                return  # the answer is sent; what the client still sends is dropped
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes after an answer: the next request's headers
            super().data_received(data)

        def handle_events(self):
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request's headers are in

        def eof_received(self):
            if self.transport.lingering:
                self.transport.abort_linger()  # the client has closed its side too
                return None
            return super().eof_received()

        def connection_lost(self, exc):
            self._disarm()
            if self.transport.lingering:
                self.transport.abort_linger()
            super().connection_lost(exc)

        def _unread(self) -> bool:
            """Whether the client may still be sending its request's body (the answer is a 413
            or a 408, or the app did not read the body)."""
            cycle = self.cycle
            return cycle is not None and cycle.more_body and not cycle.disconnected

        def _arm(self):
            self._deadline = self.loop.call_later(header_timeout, self._late)

        def _disarm(self):
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self):
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(_LATE_RESPONSE)
                self.transport.close(linger=True)  # its headers may still be on their way

    return WithHeaderDeadline


def _server(app, log_level: str, keep_alive: float):
    import uvicorn

    # The app's --read-timeout: its own deadline for bodies, ours for headers.
    config = uvicorn.Config(
        app,
        http=_protocol(app.state.read_timeout),
        log_level=log_level,
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def serve(
    app,
    sock: socket.socket,
    *,
    log_level: str = "info",
    keep_alive: float = 5.0,
) -> None:
    """Serves `app` (from `create_app`) on `sock` until interrupted (Ctrl-C or SIGTERM stop it
    cleanly). keep_alive: seconds an idle connection stays open for the client's next request."""
    _server(app, log_level, keep_alive).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(
    app,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    keep_alive: float = 5.0,
) -> Iterator[str]:
    """Serves `app` (from `create_app`) from a background thread while the block runs; yields
    its base URL (`http://127.0.0.1:PORT`). For tests, benchmarks and notebooks."""
    sock = bind(host, port)
    server = _server(app, log_level, keep_alive)
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
