"""The `incept` command: parses arguments and hands them to one subcommand module.

Each subcommand lives in `incept/cli/<name>.py` with `add_arguments(parser)` and `run(args)`;
`COMMANDS` lists them in the order `incept --help` shows them. A run imports only the module
of its own command, and those import torch (about a second) only inside `run`: `incept --help`
and `incept COMMAND --help` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from incept.errors import UserError

# (command name, module in incept.cli, one-line help)
COMMANDS = [
    ("summary", "summary", "table of a model's end points, parameters and multiply-adds"),
    ("train", "train", "train a model (from scratch, resumed, or fine-tuned)"),
    ("eval", "eval", "precision @ 1 and recall @ 5 of a checkpoint on a data subset"),
    ("build-data", "build_data", "image folder to TFRecord shards in the original's schema"),
    ("build-imagenet", "build_imagenet", "raw ILSVRC-2012 to TFRecord shards with boxes"),
    ("classify", "classify", "top-K labels of image files"),
    ("export", "export", "the model as ONNX, checked against onnxruntime"),
    ("serve", "serve", "classification over HTTP, with a web page"),
    ("demo", "demo", "the whole job on drawn images: data, train, eval, fine-tune, classify"),
]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its mistakes said in one line (argparse prints the usage too): the
    one-line form of every other user mistake, with where the usage is."""

    def error(self, message: str) -> None:
        message = " ".join(message.split())
        self.exit(2, _printable(f"{self.prog}: error: {message} (see {self.prog} --help)\n"))


def _printable(text: str) -> str:
    """`text` with the undecodable bytes of file names (surrogate escapes) shown as \\udcXX,
    so that no stream refuses the error line that names such a file."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the other commands' options are left out (their
    modules are not imported), which is all that parsing a command line of `only` needs."""
    parser = _Parser(
        prog="incept",
        description="Train your own image classifier with the Inception family.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(f"incept.cli.{module_name}")
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # The top level has no options but --help, so the first word that is not one names the
    # command (or none: then argparse prints the usage or the list of commands).
    named = next((str(word) for word in argv if not str(word).startswith("-")), "")
    args = build_parser(only=named).parse_args(argv)
    try:
        status = args._run(args)
    except UserError as error:
        print(_printable(f"incept {args.command}: error: {error}"), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"incept {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except (MemoryError, RuntimeError) as error:
        reason = _out_of_memory(error)
        if reason is None:
            raise
        print(
            f"incept {args.command}: error: out of memory ({reason}): lower --batch-size or "
            "--image-size, or use --precision bf16 (training: --nproc-per-node spreads the "
            "batch over more GPUs)",
            file=sys.stderr,
        )
        sys.exit(2)
    except BrokenPipeError:
        # Output piped into `head` and the like: quietly stop, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(status or 0)


def _out_of_memory(error: BaseException) -> str | None:
    """The sentence of an out-of-memory error (an accelerator's, torch's CPU allocator's or
    Python's) that says so, or None for any other error."""
    text = str(error).strip()
    kind = type(error).__name__
    if not (
        kind in ("OutOfMemoryError", "MemoryError")
        or "out of memory" in text.lower()
        or "can't allocate memory" in text
    ):
        return None
    sentences = [part.strip() for part in text.replace("\n", ". ").split(". ")]
    return next((part for part in sentences if "memory" in part.lower()), kind).rstrip(".")
