"""``python -m tools.zoo train NAME``: train one tiny-zoo model (from a source checkout).

The installed package only loads and evaluates the shipped zoo (``uadbench zoo eval``);
training is a developer tool: ``make zoo`` retrains the whole zoo through
:mod:`tools.zoo.train_all`, one ``python -m tools.zoo train NAME`` per model. See
docs/zoo.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from uadbench.zoo import ZOO_NAMES

TRAIN_EPILOG = """examples (from the repository root):
  python -m tools.zoo train zoo-vit-sam --out zoo-models          # ~5 h on two CPU cores
  python -m tools.zoo train zoo-vit-sam --seed 1 --steps 300 --out /tmp/zoo
  uadbench zoo eval zoo-vit-sam --checkpoint zoo-models/zoo-vit-sam.safetensors --n 100

A recipe in rounds (each round a warm restart from the weights of the one before) trains
all of them; --resume keeps the finished rounds. A flag that reshapes a round (--steps,
--lr, --distill-steps, ...) trains the first round alone; --seed, --threads, --data-seed,
--train-images and --teacher reach every round."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.zoo",
        description="Train the tiny zoo models (small SAM-style victims) on synthetic scenes.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="zoo_command", metavar="COMMAND")
    names = ", ".join(ZOO_NAMES)

    t = sub.add_parser(
        "train",
        help="train a zoo model from scratch on synthetic scenes",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("name", help=f"zoo model: {names}")
    t.add_argument(
        "--seed", type=int, default=0, help="training seed (default 0, the shipped weights)"
    )
    t.add_argument("--out", default="zoo-models", help="directory for NAME.safetensors and NAME.md")
    t.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the model's recipe)"
    )
    t.add_argument(
        "--train-images", type=int, default=None, help="synthetic training scenes (default 4000)"
    )
    t.add_argument(
        "--batch-images",
        type=int,
        default=None,
        help="images per step (default: the model's recipe)",
    )
    t.add_argument(
        "--prompts",
        type=int,
        default=None,
        help="prompts decoded per image per step (default: the model's recipe)",
    )
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument(
        "--data-seed", type=int, default=None, help="seed of the synthetic training scenes"
    )
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1: fastest on a shared 2-core machine)",
    )
    t.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu (default), cuda or cuda:N; the training state resumes on "
        "any device",
    )
    t.add_argument(
        "--amp",
        choices=["off", "bf16"],
        default=None,
        help="bf16: forward passes in bfloat16 autocast (weights, optimizer, losses float32); "
        "~1.7x faster on CPUs with AVX512-BF16 and on recent GPUs (default: the recipe's, off)",
    )
    t.add_argument(
        "--teacher",
        default=None,
        help="zoo model to distill the encoder from and start the decoder from ('none': train alone)",
    )
    t.add_argument(
        "--group-loss",
        type=float,
        default=None,
        help="weight of the auxiliary instance-grouping loss on the image embedding (0: off; recipes: 1)",
    )
    t.add_argument(
        "--teacher-checkpoint", default=None, help="teacher weights (default: its shipped file)"
    )
    t.add_argument(
        "--freeze-teacher",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="HQ-SAM-style: copy the teacher's matching tensors (image encoder included) and "
        "freeze them; only the rest trains (zoo-hq-sam's recipe)",
    )
    t.add_argument(
        "--init",
        default=None,
        help="start from this weights file of the same model (a warm restart) instead of "
        "random weights",
    )
    t.add_argument(
        "--distill-steps",
        type=int,
        default=None,
        help="MobileSAM's decoupled distillation first: steps in which the encoder only "
        "regresses the teacher's embeddings (0: off; default: the model's recipe)",
    )
    t.add_argument(
        "--distill-batch",
        type=int,
        default=None,
        help="images per decoupled-distillation step (default: the model's recipe)",
    )
    t.add_argument(
        "--distill-lr",
        type=float,
        default=None,
        help="peak learning rate of the decoupled distillation phase (default: --lr; "
        "--lr is then the prompted phase's)",
    )
    t.add_argument(
        "--mask-distill",
        type=float,
        default=None,
        help="EdgeSAM's prompt-in-the-loop distillation: weight of BCE + dice to the "
        "teacher's masks for the same prompts in the prompted steps (0: off; default: the "
        "model's recipe)",
    )
    t.add_argument(
        "--save-every",
        type=int,
        default=100,
        help="steps between saves of the training state (for --resume; 0: never)",
    )
    t.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time box: after this many minutes of training save the state and stop (exit "
        "0; continue with --resume) — for a long run split over sittings",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/NAME.train-state.pt (see --save-every) with the same flags; "
        "without it, approximately from its compact copy OUT/NAME.train-state.compact.pt",
    )
    t.add_argument(
        "--eval-images",
        type=int,
        default=200,
        help="held-out test scenes evaluated at the end (0: skip)",
    )
    t.set_defaults(
        func=cmd_zoo_train,
        on_interrupt="the training state of the last --save-every step is kept — rerun "
        "with the same flags and --resume to continue",
    )

    return p


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from .train import (
        FLAGS,
        RECIPES,
        TrainConfig,
        TrainingPaused,
        compact_state_path,
        reshapes_round,
        train,
        zoo_class,
    )

    zoo_class(args.name)
    cfg = RECIPES.get(args.name, TrainConfig())
    overrides = {
        "seed": args.seed,
        "steps": args.steps,
        "train_images": args.train_images,
        "batch_images": args.batch_images,
        "prompts_per_image": args.prompts,
        "lr": args.lr,
        "data_seed": args.data_seed,
        "threads": args.threads,
        "group_weight": args.group_loss,
        "freeze_teacher": args.freeze_teacher,
        "distill_steps": args.distill_steps,
        "distill_batch": args.distill_batch,
        "mask_distill": args.mask_distill,
        "distill_lr": args.distill_lr,
        "init": args.init,
        "amp": None if args.amp is None else ("" if args.amp == "off" else args.amp),
        "teacher": None
        if args.teacher is None
        else ("" if args.teacher.lower() == "none" else args.teacher),
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    reshaped = sorted(FLAGS[k] for k in given if reshapes_round(k))
    if cfg.then and reshaped:
        # a recipe in rounds with a flag that reshapes a round: train that one round
        print(
            f"{args.name}'s recipe trains in {len(cfg.then) + 1} rounds; with "
            f"{', '.join(reshaped)} this trains its first round only, changed so"
        )
        cfg = dataclasses.replace(cfg, then=())
    cfg = dataclasses.replace(cfg, **given)
    try:
        res = train(
            args.name,
            cfg,
            out_dir=args.out,
            eval_images=args.eval_images,
            progress=lambda s: print(s, flush=True),
            teacher_checkpoint=args.teacher_checkpoint,
            resume=args.resume,
            save_every=args.save_every,
            max_minutes=args.max_minutes,
            device=args.device,
        )
    except TrainingPaused as p:
        compact = compact_state_path(p.path)
        print(
            f"paused after --max-minutes {args.max_minutes:g} at step {p.step}/{p.total}; the "
            f"state is in {p.path} — rerun with the same flags and --resume to continue "
            f"(on another machine: copy {compact.name}, {compact.stat().st_size / 1e6:.1f} MB, "
            "into the same --out; it resumes approximately)"
        )
        return 0
    print(
        f"wrote {res.weights} ({res.weights.stat().st_size / 1e6:.2f} MB) and {res.card}; "
        f"training took {res.seconds / 60:.1f} min"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training command line with the package's error handling (one-line errors,
    Ctrl-C / SIGTERM keep the training state)."""
    from uadbench import cli

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return cli.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
