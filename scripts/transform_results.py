"""Which attacks survive which transforms: a markdown table of a run made with
``--transforms`` (docs/transforms.md's results come from it).

    python scripts/transform_results.py RUN [--eot LABEL --plain LABEL]

Per (victim, transform) unit: the clean mIoU and each attack's mIoU, marked where the
attack's damage (clean - attacked, mean over images of the per-image difference) is
significant (the default test of `uadbench compare`: sign-flip permutation test and
bootstrap-t, both must reject; Bonferroni over every attack x unit line of the table);
with --eot/--plain, the adaptive attack against the plain one in each unit (delta > 0:
EOT stronger), its own family.
"""

from __future__ import annotations

import argparse

from uadbench import api
from uadbench.report.stats import compare_pairs
from uadbench.store.rundir import load_manifest, load_unit_rows
from uadbench.store.schema import unit_label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--eot", help="label of the EOT attack")
    ap.add_argument("--plain", help="label of the plain attack it adapts")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()

    rows = api.rows(args.run)
    units = load_unit_rows(args.run)
    man = load_manifest(args.run)
    present = set(units["attack"])
    attacks = [a["label"] for a in man["attacks"] if a["label"] in present]
    transforms = [t["label"] for t in man.get("transforms", [])] or ["identity"]
    have = set(units["victim"])
    order = [
        unit_label(v["label"], t)
        for v in man["victims"]
        for t in transforms
        if unit_label(v["label"], t) in have
    ]
    damage = compare_pairs(units, [(a, "clean") for a in attacks], metrics="miou", alpha=args.alpha)
    eot = None
    if args.eot and args.plain:
        eot = compare_pairs(units, [(args.eot, args.plain)], metrics="miou", alpha=args.alpha)
    n_img = units[["dataset", "sample_id"]].drop_duplicates().shape[0]
    ref = "ground truth" if (rows["reference"] == "gt").all() else "clean prediction"

    head = ["victim", "transform", "clean"] + attacks
    if eot is not None:
        head.append(f"{args.eot} − {args.plain} (pp, simultaneous CI, p adj.)")
    print(f"mIoU (%) against the {ref}, {n_img} images; † = damage vs clean significant")
    print(f"(sign-flip + bootstrap-t, Bonferroni over {len(damage)} lines, alpha {args.alpha})")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for unit in order:
        victim, _, transform = unit.partition(" | ")
        sub = damage[damage["victim"] == unit]
        clean = sub["value_b"].iloc[0] if len(sub) else float("nan")
        cells = [victim, transform or "identity", f"{clean:.1f}"]
        for a in attacks:
            line = sub[sub["a"] == a]
            if line.empty:
                cells.append("–")
                continue
            mark = " †" if line["p_adj"].iloc[0] <= args.alpha and line["delta"].iloc[0] > 0 else ""
            cells.append(f"{line['value_a'].iloc[0]:.1f}{mark}")
        if eot is not None:
            e = eot[eot["victim"] == unit]
            if e.empty:
                cells.append("–")
            else:
                r = e.iloc[0]
                cells.append(
                    f"{r['delta']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], "
                    f"p={r['p_adj']:.3g}"
                )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
