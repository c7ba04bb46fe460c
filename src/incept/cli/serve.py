"""`incept serve --checkpoint PATH`: classification over HTTP, and a web page at `/`.

Binds 127.0.0.1 unless --host says otherwise (the server has no authentication: expose it
beyond this machine only behind something that has; another host says so when it starts).
Concurrent requests are batched on the server; requests beyond --max-queue get 503, bodies
beyond --max-body-mb get 413. A request must arrive within --read-timeout (headers, then body;
else 408) and takes its place in the queue only once its body is in, so clients that stall
mid-upload hold no place; bodies being received are limited in all (--max-uploads, then 503)
and per client address (--max-uploads-per-client, then 429).
"""

from __future__ import annotations

import argparse
import sys

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
        "--max-queue",
        type=int,
        default=64,
        help="received requests decoded, queued or in the model at once; more get 503 (64)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body in MiB (16)"
    )
    # Slow and stalled clients.
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a request's headers, then its body, may take to arrive; slower ones get "
        "408 and are disconnected (30)",
    )
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds an idle connection is kept open for the client's next request (5)",
    )
    parser.add_argument(
        "--max-uploads",
        type=int,
        default=128,
        metavar="N",
        help="request bodies received at once; more get 503 (128)",
    )
    parser.add_argument(
        "--max-uploads-per-client",
        type=int,
        default=16,
        metavar="N",
        help="request bodies received at once from one address; more get 429 (16; raise it "
        "behind a proxy, where every client has the proxy's address)",
    )
    add_weights_options(parser, labels_file=True)
    add_image_limit_options(parser)


def run(args: argparse.Namespace) -> int:
    from incept.errors import UserError

    for flag, value in (
        ("--max-batch", args.max_batch),
        ("--max-queue", args.max_queue),
        ("--max-uploads", args.max_uploads),
        ("--max-uploads-per-client", args.max_uploads_per_client),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.max_wait_ms < 0 or args.max_body_mb <= 0:
        raise UserError("--max-wait-ms must be >= 0 and --max-body-mb > 0")
    for flag, value in (("--read-timeout", args.read_timeout), ("--keep-alive", args.keep_alive)):
        if not 0 < value < 86400:  # also refuses nan and inf
            raise UserError(f"{flag} must be a number of seconds above 0, got {value}")
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
        read_timeout=args.read_timeout,
        max_uploads=args.max_uploads,
        max_uploads_per_client=args.max_uploads_per_client,
        max_pixels=max_pixels,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {predictor.architecture} ({len(predictor.class_names)} classes) on "
        f"http://{shown}:{port}/",
        flush=True,
    )
    if not _is_loopback(host):
        print(
            f"warning: the API has no authentication, and {shown} may be reachable from other "
            "machines: anyone who can reach it can use it",
            file=sys.stderr,
            flush=True,
        )
    serve(app, sock, keep_alive=args.keep_alive)
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(host.split("%")[0])  # a bound socket's host is numeric
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
