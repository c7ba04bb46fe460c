"""`incept summary`: the end-point table of a model."""

from __future__ import annotations

from incept.cli.options import at_least, image_size, output_file, recipe_value


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="inception_v3", help="a registered model name")
    parser.add_argument(
        "--image-size", type=image_size, default=None, help="input size (model default)"
    )
    parser.add_argument(
        "--width", type=recipe_value("width", float), default=1.0, help="width (depth) multiplier"
    )
    parser.add_argument(
        "--min-depth",
        type=recipe_value("min_depth", int),
        default=16,
        help="fewest channels a conv keeps",
    )
    parser.add_argument(
        "--num-classes", type=at_least(1, 1_000_000), default=1000, help="classifier outputs"
    )
    parser.add_argument(
        "--no-aux", dest="aux_logits", action="store_false", default=None, help="without aux head"
    )
    parser.add_argument(
        "--diagram",
        type=output_file(".svg"),
        metavar="FILE.svg",
        help="also draw the network into FILE",
    )


def run(args) -> None:
    from incept import nets  # torch: only once the command runs
    from incept.diagram import write_diagram
    from incept.summary import format_table, summarize

    entry = nets.registry.entry(args.model)
    image_size = args.image_size or entry.image_size
    rows = summarize(
        args.model,
        image_size=image_size,
        num_classes=args.num_classes,
        width=args.width,
        min_depth=args.min_depth,
        aux_logits=args.aux_logits,
    )
    print(f"{args.model} at {image_size}x{image_size}, width {args.width}:")
    print(format_table(rows))
    if args.diagram:
        write_diagram(
            args.diagram,
            args.model,
            image_size=image_size,
            num_classes=args.num_classes,
            width=args.width,
            min_depth=args.min_depth,
            aux_logits=args.aux_logits,
        )
        print(f"diagram written to {args.diagram}")
