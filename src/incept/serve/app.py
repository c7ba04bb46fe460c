"""The HTTP application: classification endpoints and the web page, on Starlette.

    POST /v1/classify   image as the raw body (Content-Type image/* or application/octet-stream,
                        or any other type when the bytes start like a JPEG, PNG, GIF, BMP, TIFF
                        or WebP file) or multipart/form-data with a `file` field; `top_k` as a
                        query or form field (default 5). Answers the `incept classify --json`
                        object: {"image": NAME, "top": [{"label", "probability"}, ...]}, NAME
                        being the uploaded file's name, or "-" for a raw body.
    GET  /v1/model      architecture, classes, input size, checkpoint step, limits
    GET  /healthz       {"status": "ok"}
    GET  /              the page: pick or drop an image, see its top-5 labels as bars

Every failure is a JSON {"error": MESSAGE} with a 4xx status (503 when the server is full), and
no request can hold more than `max_body_bytes` of body or more than one decoded image. A body
is received in full, within `read_timeout` seconds (else 408 and the connection is closed),
before the request takes a place in the queue: stalled uploads never keep others waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from incept.classify import prepare_image, top_labels
from incept.data.images import MAX_PIXELS, ImageError, starts_like_image
from incept.predict import Predictor
from incept.serve.batching import Batcher, Overloaded
from incept.serve.uploads import Refused, Uploads

DEFAULT_TOP_K = 5
RAW_BODY_NAME = "-"
_RAW_TYPES = ("application/octet-stream",)
_MULTIPART = "multipart/form-data"


class BodyTooLarge(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def create_app(
    predictor: Predictor,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_pending: int = 64,
    max_body_bytes: int = 16 * 2**20,
    decode_threads: int = 2,
    read_timeout: float = 30.0,
    max_uploads: int = 128,
    max_uploads_per_client: int = 16,
    max_pixels: int = MAX_PIXELS,
) -> Starlette:
    """The application serving `predictor`. max_batch, max_wait_ms: how requests are batched;
    max_pending: received requests held at once (one more gets 503); max_body_bytes: larger
    bodies get 413; decode_threads: images decoded at once (each may take ~200 MB while it
    decodes, up to 4 bytes a pixel for one that is not JPEG); read_timeout: seconds a
    request's body may take to arrive (then 408; `serve` gives its headers as long);
    max_uploads, max_uploads_per_client: bodies received at once, in all (one more gets 503)
    and from one client address (one more gets 429); max_pixels: the decompression-bomb
    limit."""
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be > 0, got {read_timeout}")
    uploads = Uploads(max_uploads, max_uploads_per_client)
    batcher = Batcher(
        predictor.probabilities,
        max_batch=max_batch,
        max_wait=max_wait_ms / 1000,
        max_pending=max_pending,
    )
    decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="incept-decode")
    page = resources.files("incept.serve").joinpath("index.html").read_text(encoding="utf-8")
    description = {
        **predictor.describe(),
        "limits": {
            "max_body_bytes": max_body_bytes,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_pending": max_pending,
            "read_timeout_s": read_timeout,
            "max_uploads": max_uploads,
            "max_uploads_per_client": max_uploads_per_client,
        },
    }

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(description)

    async def receive(request: Request) -> tuple[str, bytes, int]:
        client = request.client.host if request.client else "unknown"
        with uploads.receive(client):
            try:
                async with asyncio.timeout(read_timeout):
                    return await _read_upload(request, max_body_bytes)
            except TimeoutError:
                raise BadRequest(
                    f"the request body did not arrive within {read_timeout:g} s "
                    "(the server's --read-timeout)",
                    status=408,
                ) from None
            except ClientDisconnect:  # nobody to answer; and no traceback in the log
                raise BadRequest("the client left before its body arrived") from None

    async def classify(request: Request) -> JSONResponse:
        try:
            name, data, top_k = await receive(request)
            with batcher.admit():
                loop = asyncio.get_running_loop()
                image = await loop.run_in_executor(
                    decoders, prepare_image, data, predictor.image_size, max_pixels
                )
                probabilities = await batcher.submit(image)
        except Overloaded:
            return _error("server busy: too many requests at once, retry shortly", 503)
        except Refused as error:
            return _error(str(error), error.status, close=True)
        except BodyTooLarge:
            return _error(f"request body larger than {max_body_bytes:,} bytes", 413, close=True)
        except BadRequest as error:
            return _error(str(error), error.status, close=error.status == 408)
        except ImageError as error:
            return _error(f"not a usable image: {error}", 400)
        return JSONResponse(
            {"image": name, "top": top_labels(probabilities, predictor.class_names, top_k)}
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/model", model, methods=["GET"]),
            Route("/v1/classify", classify, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.batcher, app.state.uploads, app.state.read_timeout = batcher, uploads, read_timeout
    return app


def _error(message: str, status: int, *, close: bool = False) -> JSONResponse:
    """close: the body was left unread (refused, too large, too slow), so the connection is
    closed after the answer rather than kept for the client's next request."""
    headers = {"Retry-After": "1"} if status in (429, 503) else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    # Starlette's own errors (404, 405, malformed multipart) in the same JSON shape.
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


async def _read_upload(request: Request, limit: int) -> tuple[str, bytes, int]:
    """(file name, image bytes, top_k) of a classify request, reading at most `limit` bytes."""
    request = _limited(request, limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    top_k = request.query_params.get("top_k")
    if content_type == _MULTIPART:
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("multipart request without a `file` field holding the image")
        name, data = upload.filename or RAW_BODY_NAME, await upload.read()
        if top_k is None and isinstance(form.get("top_k"), str):
            top_k = form["top_k"]
    elif content_type.startswith("image/") or content_type in _RAW_TYPES:
        name, data = RAW_BODY_NAME, await request.body()
    else:
        # `curl --data-binary @photo.jpg URL` declares application/x-www-form-urlencoded, and
        # other clients declare nothing: bytes that start like a photo are taken for one.
        name, data = RAW_BODY_NAME, await request.body()
        if not starts_like_image(data[:16]):
            raise BadRequest(
                f"unsupported Content-Type {content_type or '(none)'!r} and the body is not a "
                "JPEG, PNG, GIF, BMP, TIFF or WebP file: send the image as the body with "
                "Content-Type image/* or application/octet-stream, or as multipart/form-data "
                "with a `file` field",
                status=415,
            )
    if not data:
        raise BadRequest("empty image: the request carried no image bytes")
    return name, data, _parse_top_k(top_k)


def _parse_top_k(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP_K
    try:
        top_k = int(value)
    except ValueError:
        raise BadRequest(f"top_k must be a whole number, got {value!r}") from None
    if top_k < 1:
        raise BadRequest(f"top_k must be at least 1, got {top_k}")
    return top_k


def _limited(request: Request, limit: int) -> Request:
    """`request` with a body that raises BodyTooLarge past `limit` bytes: refused at once when
    Content-Length says so, else as soon as the bytes received exceed it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"malformed Content-Length {declared!r}")
        if int(declared) > limit:
            raise BodyTooLarge
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
        return message

    return Request(request.scope, receive)
