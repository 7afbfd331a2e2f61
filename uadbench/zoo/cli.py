"""``uadbench zoo eval NAME``: clean mIoU of a shipped zoo model on held-out scenes.

Training the zoo is not part of the installed package (``tools/zoo/``, ``make zoo``; see
docs/zoo.md): ``uadbench zoo train`` only says so."""

from __future__ import annotations

import argparse

ZOO_EPILOG = """examples:
  uadbench zoo eval zoo-vit-sam                            # the shipped weights, 200 held-out scenes
  uadbench zoo eval zoo-vit-sam --checkpoint zoo-models/zoo-vit-sam.safetensors --n 100
  uadbench zoo eval zoo-hf-sam --threads 1                 # beside a training on the other core

Training the zoo is a developer tool of the source tree (`make zoo`, tools/zoo/): see
docs/zoo.md."""


def add_zoo_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zoo eval`` (and the ``zoo train`` pointer) to the ``uadbench`` command."""
    from . import ZOO_NAMES

    p = subparsers.add_parser(
        "zoo",
        help="evaluate the tiny zoo models (small SAM-style victims trained on synthetic scenes)",
        epilog=ZOO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    names = ", ".join(ZOO_NAMES)

    t = sub.add_parser(
        "train",
        help="not part of the installed package: see docs/zoo.md (`make zoo` in a source checkout)",
        add_help=False,
    )
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_zoo_train)

    e = sub.add_parser(
        "eval",
        help="clean mIoU of a zoo model on held-out synthetic scenes",
        epilog=ZOO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("name", help=f"zoo model: {names}")
    e.add_argument("--checkpoint", default=None, help="weights file (default: the shipped one)")
    e.add_argument(
        "--n", type=int, default=200, help="held-out synthetic test scenes (default 200)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the test scenes and prompts")
    e.add_argument("--device", default="cpu")
    e.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 beside a training on a 2-core machine)",
    )
    e.set_defaults(func=cmd_zoo_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


TRAINING_MOVED = (
    "zoo training is not part of the installed package: in a source checkout run "
    "`python -m tools.zoo train NAME ...` (one model) or `make zoo` (the whole zoo); see "
    "docs/zoo.md"
)


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from ..errors import UadbenchError

    raise UadbenchError(TRAINING_MOVED)


def cmd_zoo_eval(args: argparse.Namespace) -> int:
    from ..errors import UadbenchError
    from .evaluate import evaluate, torch_threads, zoo_class

    zoo_class(args.name)
    if args.threads is not None and args.threads < 1:
        raise UadbenchError(f"--threads {args.threads}: give a positive number of CPU threads")
    with torch_threads(args.threads):
        r = evaluate(
            args.name, checkpoint=args.checkpoint, n=args.n, seed=args.seed, device=args.device
        )
    print(
        f"{args.name}: clean mIoU on {r['n_images']} held-out synthetic scenes ({r['n_prompts']} prompts): "
        f"points {r['miou_point']:.1f}, boxes {r['miou_box']:.1f}, all {r['miou']:.1f} ({r['seconds']:.0f}s)"
    )
    return 0
