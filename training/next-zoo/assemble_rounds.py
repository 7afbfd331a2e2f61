"""Check that a chain of ``--init`` runs is a zoo model's recipe in rounds, and write the
weights and card that ``uadbench zoo train NAME`` of that recipe writes.

A recipe in rounds (``TrainConfig.then``) runs each round as a warm restart from the weights
of the one before — what ``zoo train --init`` does. The rounds' weights are therefore those
of the same rounds run one by one with ``--init`` (tests/test_zoo.py checks this bitwise on
a small recipe), provided each run had exactly its round's settings, started from the weights
the run before it wrote (unchanged since), and was not continued approximately. This
script checks the first two from the weights' own metadata and cards; a run continued
approximately (its compact state carried to another machine) is recorded, at its step in
the whole recipe, in the weights' metadata and the card — as ``zoo train`` records it: the
card then says the command gives close, not identical, weights. It then copies the last
run's weights with the whole recipe in their metadata, evaluates them (200 held-out scenes,
as the card of `zoo train` does) and writes the recipe's card (each round's minutes from its
run's card).

Run it from a checkout whose RECIPES hold the recipe in rounds (the worktree with
ship.patch applied)::

    python training/next-zoo/assemble_rounds.py zoo-hf-sam OUT \
        training/next-zoo/hf-48 training/next-zoo/hf-48-wr \
        training/next-zoo/hf-48-dl training/next-zoo/hf-48-dl2
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
from pathlib import Path

from uadbench.zoo.train import (
    RECIPES,
    TrainResult,
    approximate_steps,
    config_json,
    evaluate,
    record_recipe,
    round_configs,
    saved_config,
    weights_metadata,
    zoo_class,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", type=Path, help="the --out of each round's run, in order")
    ap.add_argument("--eval-images", type=int, default=200)
    args = ap.parse_args()
    name, cls = args.name, zoo_class(args.name)
    recipe = RECIPES[name]
    rounds = round_configs(recipe)
    if len(rounds) != len(args.runs):
        raise SystemExit(f"{name}'s recipe has {len(rounds)} rounds, {len(args.runs)} runs given")
    done, prev, offset = [], "", 0
    for k, (cfg, run) in enumerate(zip(rounds, args.runs), 1):
        weights = run / f"{name}.safetensors"
        meta = weights_metadata(weights)
        saved = saved_config(meta["train_config"])
        want = config_json(dataclasses.replace(cfg, init=saved.get("init", "")))
        diff = {f: (saved.get(f), v) for f, v in want.items() if saved.get(f) != v}
        if diff:
            raise SystemExit(f"round {k}: {weights} was trained with other settings: {diff}")
        if saved.get("init", "") != prev:
            raise SystemExit(
                f"round {k}: {weights} started from {saved.get('init')!r}, not {prev!r}"
            )
        approx = approximate_steps(meta, offset)
        if approx:
            print(f"round {k}: {weights} was continued approximately at step(s) {approx}")
        card = (run / f"{name}.md").read_text()
        if prev:  # the file it started from is unchanged since (the card's digest)
            digest = cls.weights_digest(cls.Config(checkpoint=prev))
            if f"SHA-256 {digest}…" not in card:
                raise SystemExit(f"round {k}: {prev} changed since {weights} started from it")
        minutes = float(re.search(r"wall time: ([0-9.]+) min", card).group(1))
        done.append(
            TrainResult(name, weights, run / f"{name}.md", 60 * minutes, cfg, None, 0, approx)
        )
        print(f"round {k}: {run} is the recipe's round ({minutes:.1f} min)")
        prev, offset = str(weights), offset + cfg.total_steps
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / f"{name}.safetensors"
    shutil.copyfile(done[-1].weights, dest)
    whole = dataclasses.replace(recipe, then=tuple(rounds[1:]))  # as _train_rounds records it
    model = cls(cls.Config(checkpoint=str(dest))).model
    ev = evaluate(name, checkpoint=dest, n=args.eval_images) if args.eval_images else None
    params = sum(p.numel() for p in model.parameters())
    seconds = sum(r.seconds for r in done)
    card = args.out / f"{name}.md"
    approx = tuple(s for r in done for s in r.approximate_resumes)
    record_recipe(
        TrainResult(name, dest, card, seconds, whole, ev, params, approx, rounds=tuple(done))
    )
    if ev:
        print(f"{dest}: points {ev['miou_point']:.1f}, boxes {ev['miou_box']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
