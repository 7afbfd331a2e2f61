"""The report subcommands: parsing, exit codes, outputs."""

from __future__ import annotations

import argparse
import io
import json
import math

import pandas as pd
import pytest

from uadbench.errors import UadbenchError
from uadbench.report.cli import add_report_commands
from uadbench.store.rundir import atomic_write_json, write_shard
from uadbench.store.schema import COLUMNS

COMMANDS = ["leaderboard", "compare", "check", "import", "show", "plot", "report"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uadbench")
    add_report_commands(p.add_subparsers(dest="command", required=True))
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def write_run(path, shift: float = 0.0, pairing: str = "prompt"):
    rows = []
    for i in range(12):
        for attack, mean in (("clean", 90.0), ("uad", 30.0), ("tap", 55.0)):
            for j in range(6):
                rows.append(
                    {c: None for c in COLUMNS}
                    | {
                        "dataset": "d",
                        "sample_id": f"s{i}",
                        "attack": attack,
                        "attack_name": attack,
                        "attack_hash": "h",
                        "eps": 8 / 255,
                        "surrogate": "s",
                        "victim": "v",
                        "prompt_index": j,
                        "prompt_kind": "point" if j < 4 else "box",
                        "mask_index": j // 2,
                        "x0": 1.0,
                        "y0": 1.0,
                        "x1": math.nan,
                        "y1": math.nan,
                        "reference": "gt",
                        "iou": min(
                            100.0, mean + (attack != "clean") * shift + ((i * 7 + j * 3) % 11)
                        ),
                        "seconds": 0.0,
                        "seed": 0,
                    }
                )
    write_shard(path / "rows" / "r.parquet", rows)
    atomic_write_json(
        path / "manifest.json",
        {
            "format": "uadbench-run/1",
            "pairing": pairing,
            "attacks": [{"label": "uad"}, {"label": "tap"}],
            "victims": [{"name": "v"}],
        },
    )
    return path


def test_every_subcommand_has_examples_and_a_handler():
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) <= set(sub.choices)
    for name in COMMANDS:
        sp = sub.choices[name]
        assert "examples:" in (sp.epilog or "") and f"uadbench {name}" in sp.epilog
        assert callable(sp.get_default("func"))


def test_leaderboard_csv_to_file_and_terminal(tmp_path, capsys):
    r = write_run(tmp_path / "r")
    assert run(["leaderboard", str(r), "--format", "csv", "--out", str(tmp_path / "lb.csv")]) == 0
    df = pd.read_csv(tmp_path / "lb.csv")
    assert df["attack"].tolist() == ["clean", "uad", "tap"]  # clean first, then manifest order
    assert run(["leaderboard", str(r), "--metrics", "miou,asr10", "--by-kind"]) == 0
    out = capsys.readouterr().out
    assert "ASR@10" in out and "ASR@50" not in out and "box" in out
    with pytest.raises(UadbenchError, match="unknown metric"):
        run(["leaderboard", str(r), "--metrics", "f1"])
    with pytest.raises(UadbenchError, match="not a uadbench run directory"):
        run(["leaderboard", str(tmp_path / "nothing")])


def test_compare_and_check_exit_codes(tmp_path, capsys):
    base = write_run(tmp_path / "base")
    same = write_run(tmp_path / "same")
    weaker = write_run(tmp_path / "weak", shift=25.0)
    assert (
        run(
            ["compare", str(base), "--a", "uad", "--b", "tap", "--n-boot", "200", "--format", "csv"]
        )
        == 0
    )
    cmp_ = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(cmp_["metric"]) == {"miou", "asr50"} and (cmp_["stronger"] == "uad").all()
    assert run(["check", str(same), "--baseline", str(base)]) == 0
    assert "OK" in capsys.readouterr().out
    assert run(["check", str(weaker), "--baseline", str(base)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert run(["check", str(weaker), "--baseline", str(base), "--what", "robustness"]) == 0
    imported = write_run(tmp_path / "imp", pairing="image")
    with pytest.raises(UadbenchError, match="per-prompt pairing"):
        run(["compare", str(imported), "--a", "uad", "--b", "tap", "--unit", "prompt"])


def test_import_plot_report(tmp_path, capsys):
    src = tmp_path / "logs" / "UAD"
    src.mkdir(parents=True)
    for img in (1, 2):
        (src / f"{img}_UAD.json").write_text(
            json.dumps(
                {
                    "imgid": img,
                    "adv_method": "UAD",
                    "evaluations": {
                        "m0_p0": {"prompt": [3, 4], "samb": 10.0 * img, "fastsam": 50.0},
                        "m0_p5": {"prompt": [1, 2, 30, 40], "samb": 70.0, "fastsam": 51.0},
                    },
                }
            )
        )
    out = tmp_path / "au"
    assert run(["import", "anything-unsegmentable", str(tmp_path / "logs"), "--out", str(out)]) == 0
    assert run(["leaderboard", str(out), "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out.split("imported")[-1].split("\n", 1)[1]))
    line = df[(df.victim == "sam-vit-b")].iloc[0]
    assert line["miou"] == pytest.approx((10 + 70 + 20 + 70) / 4) and line["asr50"] == 50.0
    assert df[df.victim.str.startswith("fastsam")]["asr50"].tolist() == [50.0]  # 50 counts, 51 not
    with pytest.raises(UadbenchError, match="valid-only ASR is unavailable"):
        run(["leaderboard", str(out), "--valid-only"])
    assert run(["plot", str(out)]) == 0
    assert (out / "plots" / "asr50_bars.png").exists()
    assert run(["report", str(out), "--n-boot", "50"]) == 0
    assert "Fewer than two attacks in this run" in (out / "report.html").read_text()


def test_compare_all_and_leaderboard_options(tmp_path, capsys):
    base = write_run(tmp_path / "base")
    assert run(["compare", str(base), "--all", "--format", "csv"]) == 0
    cmp_ = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(zip(cmp_["a"], cmp_["b"])) == {("uad", "tap")}  # clean is not an attack here
    assert run(["compare", str(base), "--a", "uad", "--b", "tap", "--equivalence", "1"]) == 0
    out = capsys.readouterr().out
    assert "equivalent" in out and "TOST" in out and "bonferroni" in out
    with pytest.raises(UadbenchError, match="--a and --b, or"):
        run(["compare", str(base), "--a", "uad"])
    with pytest.raises(UadbenchError, match="drop --a/--b"):
        run(["compare", str(base), "--all", "--a", "uad"])
    assert run(["leaderboard", str(base), "--n", "--ci", "--by-kind", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert r"\toprule" in tex and "12/72" in tex and "cluster bootstrap" in tex
    assert run(["leaderboard", str(base), "--by-size"]) == 0
    assert "object size" in capsys.readouterr().out


def test_command_descriptions_print_no_doubled_percent_signs(capsys):
    """A description is not %-formatted by argparse (help strings are): '%%' there prints
    as '%%'."""
    import pytest

    from uadbench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "compare" in a.choices)
    for name, p in sub.choices.items():
        with pytest.raises(SystemExit):
            p.parse_args(["--help"])
        out = capsys.readouterr().out
        assert "%%" not in out, name
