"""`incept serve` over a real socket on 127.0.0.1: answers, errors, limits, batching."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import re
import shlex
import shutil
import struct
import subprocess
import threading
import time
import uuid
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from incept.classify import classify_files
from incept.serve import create_app, serve_in_thread

BODY_LIMIT = 200_000
TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "your-own-images.md"


@pytest.fixture(scope="module")
def server(predictor):
    app = create_app(predictor, max_body_bytes=BODY_LIMIT, max_wait_ms=2)
    with serve_in_thread(app) as url:
        yield url


def call(base_url: str, method: str, path: str, body=None, headers=None, **options):
    """(status, response, parsed JSON or text) of one request on a fresh connection."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {}, **options)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.getheader("content-type", "").startswith("application/json"):
        return response.status, response, json.loads(payload)
    return response.status, response, payload.decode("utf-8", "replace")


def post_image(base_url: str, data: bytes, path: str = "/v1/classify", kind="image/jpeg"):
    return call(base_url, "POST", path, body=data, headers={"Content-Type": kind})


def multipart(fields: dict, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """A multipart/form-data body (bytes values become files) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/jpeg"
            )
        else:
            head, value = f'Content-Disposition: form-data; name="{name}"', value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def test_health_model_and_page(server, predictor):
    assert call(server, "GET", "/healthz")[2] == {"status": "ok"}
    status, _, model = call(server, "GET", "/v1/model")
    assert status == 200
    assert model["architecture"] == "inception_v3" and model["classes"] == predictor.class_names
    assert model["image_size"] == 80 and model["input_shape"] == [3, 80, 80]
    assert model["checkpoint_step"] == 123
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("content-type").startswith("text/html")
    assert 'type="file"' in page and "v1/classify" in page


def test_raw_body_answers_what_classify_answers(server, predictor, photo, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    (expected,) = classify_files([str(path)], predictor, top_k=2)
    status, _, answer = post_image(server, photo, "/v1/classify?top_k=2")
    assert status == 200
    assert answer == {"image": "-", "top": expected["top"]}
    assert answer["top"][0]["probability"] > answer["top"][1]["probability"]


def test_multipart_with_top_k_field(server, photo):
    body, kind = multipart({"top_k": "1", "file": photo}, filename="cat.jpg")
    status, _, answer = call(server, "POST", "/v1/classify", body, {"Content-Type": kind})
    assert status == 200 and answer["image"] == "cat.jpg" and len(answer["top"]) == 1
    status, _, answer = post_image(server, photo, "/v1/classify?top_k=50")
    assert status == 200 and len(answer["top"]) == 3  # every class, most probable first
    assert sum(entry["probability"] for entry in answer["top"]) == pytest.approx(1, abs=1e-5)


def _png_claiming(height: int, width: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    data = out.getvalue()
    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def _bad_requests(photo: bytes) -> list:
    no_file, no_file_kind = multipart({"top_k": "3"})
    return [
        ("not an image", b"GIF? no, text", "image/jpeg", 400, "not an image"),
        ("truncated", photo[: len(photo) // 2], "image/jpeg", 400, "truncated"),
        ("empty", b"", "image/jpeg", 400, "empty"),
        ("bomb", _png_claiming(40_000, 40_000), "image/png", 400, "too large"),
        ("wrong type", b'{"image": "photo.jpg"}', "application/json", 415, "Content-Type"),
        ("no type", b"photo.jpg", None, 415, "Content-Type"),
        ("form, not an image", b"a=1&b=2", "application/x-www-form-urlencoded", 415, "not a JPEG"),
        ("missing field", no_file, no_file_kind, 400, "`file` field"),
        ("broken multipart", b"--x\r\nnonsense", "multipart/form-data; boundary=x", 400, ""),
        ("too large", b"\xff" * (BODY_LIMIT + 1), "image/jpeg", 413, "larger than"),
    ]


def test_bad_input_is_a_json_4xx_and_the_server_keeps_serving(server, photo):
    for name, body, kind, status, message in _bad_requests(photo):
        headers = {"Content-Type": kind} if kind else {}
        got, response, answer = call(server, "POST", "/v1/classify", body, headers)
        assert got == status, (name, answer)
        assert isinstance(answer, dict) and set(answer) == {"error"}, name
        assert message in answer["error"], (name, answer)
    for path, status in (("/v1/classify?top_k=0", 400), ("/v1/classify?top_k=x", 400)):
        assert post_image(server, photo, path)[0] == status
    assert call(server, "GET", "/v1/classify")[0] == 405
    assert call(server, "GET", "/nowhere")[2] == {"error": "Not Found"}
    assert post_image(server, photo)[0] == 200


def _image_bytes(kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((90, 70, 3), (200, 30, 90), np.uint8)).save(out, kind)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
@pytest.mark.parametrize("declared", ["application/x-www-form-urlencoded", None, "text/plain"])
def test_an_image_under_another_content_type_is_taken_by_its_bytes(server, kind, declared):
    # curl --data-binary declares a form; some clients declare nothing or the wrong thing.
    data = _image_bytes(kind)
    expected = post_image(server, data, kind="application/octet-stream")
    headers = {"Content-Type": declared} if declared else {}
    status, _, answer = call(server, "POST", "/v1/classify?top_k=2", data, headers)
    assert expected[0] == status == 200, answer
    assert answer["top"] == expected[2]["top"][:2]


def tutorial_command(program: str) -> list[str]:
    """The words of the one command of TUTORIAL's ```sh blocks that `program` starts."""
    blocks = re.findall(r"^```sh\n(.*?)^```", TUTORIAL.read_text(), flags=re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    (command,) = [line for line in lines if line.startswith(program + " ")]
    return shlex.split(command)


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on PATH")
def test_the_tutorials_curl_command_classifies(server, predictor, photo, tmp_path):
    serve_words, curl_words = tutorial_command("incept serve"), tutorial_command("curl")
    port = serve_words[serve_words.index("--port") + 1]
    documented = f"http://127.0.0.1:{port}/"
    assert sum(word.startswith(documented) for word in curl_words) == 1, curl_words
    command = [word.replace(documented, server + "/") for word in curl_words]
    (tmp_path / "photo.jpg").write_bytes(photo)
    (expected,) = classify_files([str(tmp_path / "photo.jpg")], predictor, top_k=5)
    result = subprocess.run(
        [*command, "--verbose", "--silent", "--show-error", "--write-out", "\n%{http_code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert result.returncode == 0 and status == "200", (result.stderr, body)
    assert json.loads(body) == {"image": "-", "top": expected["top"]}
    # What made it a 415 before: curl declares a form, and the bytes are taken for a photo.
    assert "> Content-Type: application/x-www-form-urlencoded" in result.stderr


def test_body_limit_holds_without_a_content_length(server):
    # Chunked transfer: the size is only known while reading, and reading stops at the limit.
    chunks = (b"\xff" * 50_000 for _ in range(10))
    status, _, answer = call(
        server, "POST", "/v1/classify", chunks, {"Content-Type": "image/jpeg"}, encode_chunked=True
    )
    assert status == 413 and "larger than" in answer["error"]


class _SlowModel(torch.nn.Module):
    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds, self.calls = model, seconds, []

    def forward(self, x):
        self.calls.append(len(x))
        time.sleep(self.seconds)
        return self.model(x)


def _concurrently(works: list) -> list:
    """Runs every callable at once, each on a thread of its own; their results in order."""
    results = [None] * len(works)

    def run(index):
        results[index] = works[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_share_batches(predictor, photo):
    slow = _SlowModel(predictor.model, 0.2)
    app = create_app(dataclasses.replace(predictor, model=slow), max_batch=8, max_wait_ms=50)
    with serve_in_thread(app) as url:
        answers = _concurrently([lambda: post_image(url, photo)] * 8)
    assert [status for status, _, _ in answers] == [200] * 8
    first = answers[0][2]["top"]
    for _, _, answer in answers:  # the same image in batches of different sizes
        assert [e["label"] for e in answer["top"]] == [e["label"] for e in first]
        for got, want in zip(answer["top"], first):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-4)
    assert sum(slow.calls) == 8 and len(slow.calls) <= 3  # not one forward pass per request
    assert max(slow.calls) >= 4


def test_a_full_queue_answers_503_then_recovers(predictor, photo):
    slow = _SlowModel(predictor.model, 0.3)
    app = create_app(
        dataclasses.replace(predictor, model=slow), max_batch=1, max_wait_ms=0, max_pending=2
    )
    with serve_in_thread(app) as url:
        answers = _concurrently([lambda: post_image(url, photo)] * 8)
        statuses = sorted(status for status, _, _ in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}
        busy = next(answer for status, response, answer in answers if status == 503)
        assert "busy" in busy["error"]
        assert post_image(url, photo)[0] == 200
    assert len(slow.calls) == statuses.count(200) + 1  # refused requests never reached it


def test_model_failure_is_a_500_for_its_batch_only(predictor, photo):
    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fail = True

        def forward(self, x):
            if self.fail:
                self.fail = False
                raise RuntimeError("out of memory, say")
            return predictor.model(x)

    app = create_app(dataclasses.replace(predictor, model=Failing()), max_wait_ms=0)
    with serve_in_thread(app) as url:
        status, _, answer = post_image(url, photo)
        assert status == 500 and "RuntimeError" in answer["error"]
        assert post_image(url, photo)[0] == 200


def test_the_cli_binds_loopback_and_refuses_a_busy_port(run_dir, capsys):
    from incept.cli import main
    from incept.serve import bind

    taken = bind("127.0.0.1", 0)
    assert taken.getsockname()[0] == "127.0.0.1"
    port = str(taken.getsockname()[1])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--checkpoint", str(run_dir), "--port", port])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"127.0.0.1:{port}" in err and "--port" in err
    defaults = {action.dest: action.default for action in _serve_parser()._actions}
    assert defaults["host"] == "127.0.0.1"


@pytest.mark.parametrize(
    "host, warned", [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)]
)
def test_the_cli_says_when_the_api_may_be_reachable_from_elsewhere(
    host, warned, run_dir, capsys, monkeypatch
):
    import incept.serve
    from incept.cli import main

    served = {}

    def serve_once(app, sock, **options):  # instead of serving until stopped
        served.update(app=app, host=sock.getsockname()[0], **options)
        sock.close()

    monkeypatch.setattr(incept.serve, "serve", serve_once)
    flags = ["--port", "0", "--read-timeout", "7.5", "--keep-alive", "3", "--max-uploads", "9"]
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", str(run_dir), "--host", host, *flags])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0
    assert out.startswith("serving inception_v3 (3 classes) on http://")
    warnings = [line for line in err.splitlines() if "no authentication" in line]
    assert len(warnings) == int(warned) and len(err.splitlines()) == int(warned), err
    app = served["app"]
    assert served["keep_alive"] == 3 and app.state.read_timeout == 7.5
    assert app.state.uploads.max_total == 9 and app.state.uploads.max_per_client == 16


@pytest.mark.parametrize(
    "flag, value",
    [("--read-timeout", "0"), ("--read-timeout", "nan"), ("--keep-alive", "-1"),
     ("--max-uploads", "0"), ("--max-uploads-per-client", "0")],
)  # fmt: skip
def test_the_cli_refuses_bad_timeouts_and_limits_in_one_line(flag, value, run_dir, capsys):
    from incept.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", str(run_dir), "--port", "0", flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def _serve_parser():
    import argparse

    from incept.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser


def test_predictions_are_independent_of_batch_company(predictor, photo):
    other = io.BytesIO()
    Image.fromarray(np.full((90, 70, 3), (200, 30, 90), np.uint8)).save(other, "PNG")
    uploads = [(photo, "image/jpeg"), (other.getvalue(), "image/png")] * 3
    slow = _SlowModel(predictor.model, 0.0)
    app = create_app(dataclasses.replace(predictor, model=slow), max_batch=8, max_wait_ms=200)
    with serve_in_thread(app) as url:
        alone = [post_image(url, data, kind=kind)[2] for data, kind in uploads[:2]]
        calls_alone = len(slow.calls)
        together = _concurrently([lambda d=d, k=k: post_image(url, d, kind=k) for d, k in uploads])
    assert calls_alone == 2 and len(slow.calls) < 2 + len(uploads)  # some were batched
    assert alone[0]["top"] != alone[1]["top"]
    for index, (status, _, answer) in enumerate(together):
        expected = alone[index % 2]["top"]
        assert status == 200 and [e["label"] for e in answer["top"]] == [
            e["label"] for e in expected
        ]
        for got, want in zip(answer["top"], expected):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-4)
