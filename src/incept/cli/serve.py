"""`incept serve --checkpoint PATH`: classification over HTTP, and a web page at `/`.

Binds 127.0.0.1 unless --host says otherwise (the server has no authentication: expose it
beyond this machine only behind something that has). Concurrent requests are batched on the
server; requests beyond --max-queue get 503, bodies beyond --max-body-mb get 413.
"""

from __future__ import annotations

import argparse

from incept.cli.options import add_image_limit_options, add_weights_options, image_limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="train dir, checkpoint, or weights source"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument("--max-batch", type=int, default=16, help="images run together (16)")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch (5 ms)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests held at once; more get 503 (64)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body in MiB (16)"
    )
    add_weights_options(parser, labels_file=True)
    add_image_limit_options(parser)


def run(args: argparse.Namespace) -> int:
    from incept.errors import UserError

    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.max_wait_ms < 0 or args.max_body_mb <= 0:
        raise UserError("--max-wait-ms must be >= 0 and --max-body-mb > 0")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    max_pixels, _ = image_limits(args)
    try:
        from incept.serve import bind, create_app, serve
    except ImportError as error:
        raise UserError(
            f"incept serve needs {error.name}: pip install starlette uvicorn python-multipart"
        ) from None
    from incept.predict import load_predictor

    sock = bind(args.host, args.port)  # before loading: a busy port fails fast
    predictor = load_predictor(
        args.checkpoint, ema=not args.no_ema, model_name=args.model, labels_file=args.labels_file
    )
    app = create_app(
        predictor,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_pending=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=max_pixels,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {predictor.architecture} ({len(predictor.class_names)} classes) on "
        f"http://{shown}:{port}/",
        flush=True,
    )
    serve(app, sock)
    return 0
