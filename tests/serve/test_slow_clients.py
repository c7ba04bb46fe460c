"""Clients that stall, dribble or flood uploads, on raw sockets against a real server.

A stalled upload (headers with a Content-Length, part of the body, then nothing) must hold no
place in the queue: other clients are answered while it waits, and it gets a 408 and is
disconnected after --read-timeout. The order of events proves it, not a clock: the normal
client's 200 comes while every stalled upload is still being received.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from incept.serve import create_app, serve_in_thread
from tests.serve.test_api import post_image

READ_TIMEOUT = 6.0  # long enough that a normal request is answered well before it passes


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def upload_head(length: int) -> bytes:
    """A classify request's headers: one request, after which the server closes."""
    return (
        "POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        f"Connection: close\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def stalled_upload(url: str, photo: bytes, source: str = "127.0.0.1") -> socket.socket:
    """A connection that sent the headers and the first third of `photo`, then stops."""
    # Linux answers on all of 127.0.0.0/8, so other source addresses are other clients.
    sock = socket.create_connection(address(url), timeout=60, source_address=(source, 0))
    sock.sendall(upload_head(len(photo)) + photo[: len(photo) // 3])
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the server's answer, read until the server closes."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def wait_until(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("stalled_count, max_pending", [(70, 64), (10, 2)])
def test_stalled_uploads_hold_no_place_and_are_closed_after_the_timeout(
    predictor, photo, stalled_count, max_pending
):
    # The report: 70 stalled uploads made every other client get 503 (the default queue holds
    # 64) for as long as they stayed. From 5 addresses, each under the per-address limit.
    app = create_app(predictor, max_pending=max_pending, read_timeout=READ_TIMEOUT)
    uploads = app.state.uploads
    with serve_in_thread(app) as url:
        sources = [f"127.0.0.{2 + i % 5}" for i in range(stalled_count)]
        stalled = [stalled_upload(url, photo, source) for source in sources]
        wait_until(lambda: uploads.receiving == stalled_count, "the server receives them all")
        for _ in range(3):
            status, _, answer = post_image(url, photo)
            assert status == 200 and answer["top"], answer
        assert uploads.receiving == stalled_count  # answered while every stalled one waits
        for sock in stalled:
            status, answer = answer_of(sock)  # the server closes the connection after it
            assert status == 408 and "--read-timeout" in answer["error"], answer
        assert uploads.receiving == 0 and app.state.batcher.pending == 0
        assert post_image(url, photo)[0] == 200


def test_a_slow_upload_within_the_timeout_succeeds(predictor, photo):
    app = create_app(predictor, read_timeout=READ_TIMEOUT)
    with serve_in_thread(app) as url:
        expected = post_image(url, photo)[2]
        sock = socket.create_connection(address(url), timeout=60)
        sock.sendall(upload_head(len(photo)))
        step = len(photo) // 10 + 1
        for start in range(0, len(photo), step):  # ~2 s in all, a third of the timeout
            time.sleep(0.2)
            sock.sendall(photo[start : start + step])
        status, answer = answer_of(sock)
    assert status == 200 and answer == expected


def test_stalled_headers_get_a_408_and_are_closed(predictor):
    app = create_app(predictor, read_timeout=2.0)
    with serve_in_thread(app) as url:
        partial = socket.create_connection(address(url), timeout=60)
        partial.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n")
        silent = socket.create_connection(address(url), timeout=60)
        for sock in (partial, silent):
            status, answer = answer_of(sock)
            assert status == 408 and "--read-timeout" in answer["error"]
        kept = socket.create_connection(address(url), timeout=60)  # a second request stalls
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        first = b""
        while b'"ok"' not in first:
            first += kept.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        status, answer = answer_of(kept)
        assert status == 408 and "--read-timeout" in answer["error"]


def test_one_address_cannot_take_every_upload(predictor, photo, capfd):
    app = create_app(predictor, max_uploads=4, max_uploads_per_client=3, read_timeout=30)
    uploads = app.state.uploads
    with serve_in_thread(app) as url:
        greedy = [stalled_upload(url, photo, "127.0.0.2") for _ in range(3)]
        wait_until(lambda: uploads.receiving == 3, "3 uploads from 127.0.0.2")
        status, answer = answer_of(stalled_upload(url, photo, "127.0.0.2"))
        assert status == 429 and "127.0.0.2" in answer["error"], answer
        assert post_image(url, photo)[0] == 200  # from 127.0.0.1: a place is left
        other = stalled_upload(url, photo, "127.0.0.3")
        wait_until(lambda: uploads.receiving == 4, "the 4th upload")
        status, _, answer = post_image(url, photo)  # every upload taken: busy, at once
        assert status == 503 and "uploads" in answer["error"], answer
        greedy.pop().close()  # a client that gives up frees its upload
        wait_until(lambda: uploads.receiving == 3, "the closed upload is released")
        assert post_image(url, photo)[0] == 200
        for sock in [*greedy, other]:
            sock.close()
        wait_until(lambda: uploads.receiving == 0, "every upload released")
    assert "Traceback" not in capfd.readouterr().err  # leaving mid-upload is no server error


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_refused_upload_is_answered_while_the_client_is_still_sending(predictor, framing):
    # The server answers 413 long before the body ends. Closing with the rest unread would make
    # the kernel reset the connection: the client's next send fails (a broken pipe, which is
    # what CI once saw) and its unread answer is lost. The server must drain until the client
    # has sent it all, and the answer must then still be there to read.
    limit, piece, pieces = 100_000, b"\xff" * 65536, 256  # 16 MiB, past any socket buffer
    app = create_app(predictor, max_body_bytes=limit)
    with serve_in_thread(app) as url:
        sock = socket.create_connection(address(url), timeout=60)
        if framing == "chunked":
            head = upload_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
            frame = b"%x\r\n%s\r\n" % (len(piece), piece)
        else:
            head, frame = upload_head(len(piece) * pieces), piece
        sock.sendall(head)
        for _ in range(pieces):
            sock.sendall(frame)  # raised BrokenPipeError or ConnectionResetError before
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        status, answer = answer_of(sock)
    assert status == 413 and f"larger than {limit:,} bytes" in answer["error"]
