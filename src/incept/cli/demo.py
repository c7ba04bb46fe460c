"""`incept demo`: the whole job on data drawn on the spot, in a few minutes on a CPU."""

from __future__ import annotations

from incept.demo.run import run_demo


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out",
        default="incept-demo",
        help="folder for the results (default: ./incept-demo; a previous demo's is replaced)",
    )
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every step (tiny data, a few steps)"
    )


def run(args) -> None:
    run_demo(args.out, workers=args.workers, quick=args.quick)
