"""Training the tiny zoo (tools/zoo/, a developer tool of the source tree, not installed):
recipes, resumable state, students distilled from the teacher, model cards, and
``make zoo``'s driver. Loading and describing the shipped zoo is tested in test_zoo.py."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_zoo import held_out as held_out  # the 4 held-out scenes fixture

from tools.zoo.cli import main
from tools.zoo.train import (
    TrainConfig,
    compact_state_path,
    train,
    weights_metadata,
)
from uadbench.cli import main as uadbench_main
from uadbench.eval.prompts import PromptSet, sample_prompts
from uadbench.zoo import ZOO_NAMES
from uadbench.zoo.models import ZOO, shipped_weights


def test_zoo_train_tiny_run_is_reproducible(tmp_path, capsys):
    """3 steps end to end through the CLI; the same seed twice gives identical weights."""
    from safetensors.torch import load_file

    args = [
        "train",
        "zoo-vit-sam",
        "--steps",
        "3",
        "--train-images",
        "4",
        "--batch-images",
        "2",
        "--prompts",
        "4",
        "--eval-images",
        "2",
        "--seed",
        "5",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    wa, wb = tmp_path / "a" / "zoo-vit-sam.safetensors", tmp_path / "b" / "zoo-vit-sam.safetensors"
    sa, sb = load_file(str(wa)), load_file(str(wb))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    card = (tmp_path / "a" / "zoo-vit-sam.md").read_text()
    assert "python -m tools.zoo train zoo-vit-sam --seed 5 --steps 3" in card
    assert re.search(r"\| points \| \d+\.\d \|", card)
    assert re.search(r"agree \d+\.\d% \(mean IoU\) with these", card)
    # the trained file loads into the victim and predicts
    cls = ZOO["zoo-vit-sam"]
    v = cls(cls.Config(checkpoint=str(wa)))
    out = v.predict(np.zeros((64, 80, 3), np.uint8), PromptSet.from_lists(points=[(5, 5)]))
    assert out.shape == (1, 64, 80)
    # another seed gives other weights
    assert main([*args[:-1], "6", "--out", str(tmp_path / "c")]) == 0
    sc = load_file(str(tmp_path / "c" / "zoo-vit-sam.safetensors"))
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_a_failure_writing_the_final_weights_keeps_the_training_state(tmp_path, monkeypatch):
    """The state files are removed only after the weights are on disk: a crash (full disk,
    kill) while the finished weights are written must leave a run that --resume finishes."""
    from tools.zoo import train as zoo_train

    args = ["train", "zoo-vit-sam", "--steps", "2", "--train-images", "2"]
    args += ["--batch-images", "1", "--prompts", "2", "--eval-images", "0", "--save-every", "1"]
    args += ["--out", str(tmp_path)]
    real = zoo_train.save_weights

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zoo_train, "save_weights", full_disk)
    with pytest.raises(OSError):
        main(args)
    state = tmp_path / "zoo-vit-sam.train-state.pt"
    assert state.is_file() and compact_state_path(state).is_file()
    assert torch.load(state, weights_only=True)["step"] == 2
    monkeypatch.setattr(zoo_train, "save_weights", real)
    assert main([*args, "--resume"]) == 0
    assert (tmp_path / "zoo-vit-sam.safetensors").is_file()
    assert not state.exists() and not compact_state_path(state).exists()


def test_zoo_train_resumes_an_interrupted_run_bit_identically(tmp_path, monkeypatch, capsys):
    """Ctrl-C in step 3 of 4 keeps the state saved after step 2; --resume ends with the
    weights of an uninterrupted run; a resume with other settings is refused."""
    from safetensors.torch import load_file

    from tools.zoo import train as zoo_train

    args = ["train", "zoo-vit-sam", "--steps", "4", "--train-images", "4"]
    args += ["--batch-images", "2", "--prompts", "4", "--eval-images", "0", "--save-every", "2"]
    recipe_args = list(args)  # the recipe's grouping weight, 1
    args += ["--group-loss", "0"]  # off, as in states saved before the setting existed
    assert main([*args, "--out", str(tmp_path / "a")]) == 0

    real, calls = zoo_train.seg_loss, []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # first image of step 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(zoo_train, "seg_loss", interrupting)
    out_b = tmp_path / "b"
    assert main([*args, "--out", str(out_b)]) == 130
    assert "rerun with the same flags and --resume" in capsys.readouterr().err
    monkeypatch.setattr(zoo_train, "seg_loss", real)
    state = out_b / "zoo-vit-sam.train-state.pt"
    assert state.is_file() and not (out_b / "zoo-vit-sam.safetensors").exists()
    # an unfinished run's weights evaluate as they are (`zoo eval --checkpoint <state>`)
    cls = ZOO["zoo-vit-sam"]
    mid = cls(cls.Config(checkpoint=str(state))).model.state_dict()
    saved_model = torch.load(state, weights_only=True)["model"]
    assert mid.keys() == saved_model.keys()
    assert all(torch.equal(mid[k], saved_model[k]) for k in mid)
    shipped = cls(cls.Config()).model.state_dict()  # not silently the default weights
    assert any(not torch.equal(mid[k], v) for k, v in shipped.items())

    capsys.readouterr()
    other = [a if a != "4" else "5" for a in args]  # --steps 5: other settings
    assert main([*other, "--out", str(out_b), "--resume"]) == 2
    cap = capsys.readouterr()
    assert "other training settings (steps 4 then, 5 now" in cap.err
    assert "loading" not in cap.out  # refused before the training data is loaded
    assert main([*args, "--out", str(tmp_path / "c"), "--resume"]) == 2  # nothing to resume
    # another thread count (a host with more or fewer cores) resumes, approximately,
    # and says so on the card
    out_t = tmp_path / "t"
    shutil.copytree(out_b, out_t)
    capsys.readouterr()
    assert main([*args, "--out", str(out_t), "--resume", "--threads", "1"]) == 0
    assert "--threads 1 now, 2 before step 2: the run continues approximately" in (
        capsys.readouterr().out
    )
    assert "continued approximately at step 2 " in (out_t / "zoo-vit-sam.md").read_text()

    counted = []

    def counting(*a, **k):
        counted.append(1)
        return real(*a, **k)

    # a state saved before a (default-off) setting existed still resumes
    saved = torch.load(state, weights_only=True)
    cfg = json.loads(saved["config"])
    del cfg["group_weight"]
    saved["config"] = json.dumps(cfg)
    torch.save(saved, state)
    capsys.readouterr()
    assert main([*recipe_args, "--out", str(out_b), "--resume"]) == 2
    assert "group_weight 0.0 then, 1.0 now" in capsys.readouterr().err
    monkeypatch.setattr(zoo_train, "seg_loss", counting)
    assert main([*args, "--out", str(out_b), "--resume"]) == 0
    assert len(counted) == 2 * 2  # steps 3 and 4 only, 2 images each
    assert "resuming at step 2/4" in capsys.readouterr().out
    assert not state.exists()
    wa = load_file(str(tmp_path / "a" / "zoo-vit-sam.safetensors"))
    wb = load_file(str(out_b / "zoo-vit-sam.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    # a time box (--max-minutes) stops after the step that passes it, state saved, exit 0;
    # the run split into three such shares ends with the same weights
    out_d = tmp_path / "d"
    assert main([*args, "--out", str(out_d), "--max-minutes", "0"]) == 2
    assert "--max-minutes must be > 0" in capsys.readouterr().err
    capsys.readouterr()
    for share, step in ((["--max-minutes", "1e-9"], 1), (["--resume", "--max-minutes", "1e-9"], 2)):
        assert main([*args, "--out", str(out_d), *share]) == 0
        assert f"paused after --max-minutes 1e-09 at step {step}/4" in capsys.readouterr().out
        assert torch.load(out_d / state.name, weights_only=True)["step"] == step
        assert not (out_d / "zoo-vit-sam.safetensors").exists()
    assert main([*args, "--out", str(out_d), "--resume"]) == 0
    wd = load_file(str(out_d / "zoo-vit-sam.safetensors"))
    assert all(torch.equal(wa[k], wd[k]) for k in wa)


def test_compact_training_state_carries_a_run_to_another_machine(tmp_path, capsys):
    """The compact copy saved beside the full state is about half its size; without the
    full state --resume continues from it approximately: weights, step and generators
    exact, AdamW second moments to bfloat16 precision, first moments restarted at 0."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tools.zoo import train as zoo_train

    args = ["train", "zoo-vit-sam", "--steps", "6", "--train-images", "4"]
    args += ["--batch-images", "2", "--prompts", "4", "--eval-images", "0", "--lr", "0.001"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "b"
    assert main([*args, "--out", str(out), "--max-minutes", "1e-9"]) == 0
    said = capsys.readouterr().out
    full, compact = out / "zoo-vit-sam.train-state.pt", out / "zoo-vit-sam.train-state.compact.pt"
    assert f"copy {compact.name}" in said
    assert compact.stat().st_size < 0.55 * full.stat().st_size

    cfg = dataclasses.replace(
        zoo_train.RECIPES["zoo-vit-sam"],
        steps=6,
        train_images=4,
        batch_images=2,
        prompts_per_image=4,
        lr=0.001,
    )
    exact = zoo_train.read_train_state(full, cfg)
    cls = ZOO["zoo-vit-sam"]

    def restored(state):
        model = cls.new_model()
        opt = torch.optim.AdamW(
            [
                {"params": [p for p in model.parameters() if p.ndim >= 2]},
                {"params": [p for p in model.parameters() if p.ndim < 2]},
            ]
        )
        rng = np.random.default_rng(123)
        start = zoo_train.restore_train_state(state, model, opt, rng)[0]
        return start, model.state_dict(), opt.state_dict()["state"], rng.bit_generator.state

    full.unlink()
    approx = zoo_train.read_train_state(full, cfg)  # falls back to the compact copy
    s1, w1, o1, r1 = restored(exact)
    s2, w2, o2, r2 = restored(approx)
    assert s1 == s2 == 1 and r1 == r2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert o1.keys() == o2.keys()
    moved = 0
    for i in o1:
        assert torch.equal(o1[i]["step"], o2[i]["step"])
        assert not o2[i]["exp_avg"].any()
        moved += int(o1[i]["exp_avg"].any())
        torch.testing.assert_close(o2[i]["exp_avg_sq"], o1[i]["exp_avg_sq"], rtol=8e-3, atol=0)
        assert o2[i]["exp_avg_sq"].dtype == torch.float32
    assert moved  # the dropped first moments were not all zero anyway

    capsys.readouterr()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert "resuming approximately at step 1/6 from the compact state" in capsys.readouterr().out
    assert not compact.exists()  # removed with the full state at the end
    # the card and the weights say the command does not reproduce them exactly
    card = (out / "zoo-vit-sam.md").read_text()
    assert "continued approximately at step 1 (moved to another machine: from a compact" in card
    assert "continued approximately" not in (tmp_path / "a" / "zoo-vit-sam.md").read_text()
    with safe_open(str(out / "zoo-vit-sam.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["approximate_resumes"]) == [1]
    wa = load_file(str(tmp_path / "a" / "zoo-vit-sam.safetensors"))
    wb = load_file(str(out / "zoo-vit-sam.safetensors"))
    # the approximate continuation moves the paused weights about as the exact one does
    # (measured: cosine 0.71, length 0.77; not identical, the restarted momentum changes
    # the next updates); weights or second moments not restored would move them far more
    da = torch.cat([(wa[k].float() - w1[k]).flatten() for k in wa])
    db = torch.cat([(wb[k].float() - w1[k]).flatten() for k in wa])
    assert F.cosine_similarity(da, db, dim=0) > 0.5
    assert 0.5 < db.norm() / da.norm() < 1.5


def test_hf_student_starts_from_the_segment_anything_teacher_decoder():
    """MobileSAM-style init across implementations: a transformers SamModel student gets the
    segment-anything teacher's prompt encoder and mask decoder (names translated), never its
    image encoder."""
    from tools.zoo.train import init_from_teacher

    torch.manual_seed(0)
    teacher = ZOO["zoo-vit-sam"].new_model()
    student = ZOO["zoo-hf-sam"].new_model()
    enc_before = {k: v.clone() for k, v in student.state_dict().items() if "vision_encoder" in k}
    n = len(init_from_teacher(ZOO["zoo-hf-sam"], student, teacher))
    sd = student.state_dict()
    assert n == sum(1 for k in sd if not k.startswith("sam.vision_encoder."))
    t = teacher.state_dict()
    torch.testing.assert_close(
        sd["sam.mask_decoder.upscale_conv1.weight"], t["mask_decoder.output_upscaling.0.weight"]
    )
    torch.testing.assert_close(
        sd["sam.prompt_encoder.point_embed.1.weight"], t["prompt_encoder.point_embeddings.1.weight"]
    )
    for k, v in enc_before.items():
        assert torch.equal(sd[k], v), k


def test_grouping_loss_is_zero_only_for_grouped_embeddings():
    from tools.zoo.train import grouping_loss

    labels = torch.zeros(2, 32, 32, dtype=torch.uint8)
    labels[:, 8:22, 5:19] = 1  # not on the 4-pixel cell grid: some cells straddle
    labels[1, 0:8, 24:32] = 2
    cells = F.adaptive_avg_pool2d(F.one_hot(labels.long(), 3).permute(0, 3, 1, 2).float(), 8)
    # one orthogonal direction per label: pulled tight, means 3*sqrt(2) > 3 apart
    grouped = torch.zeros(2, 16, 8, 8)
    grouped[:, :3] = F.one_hot(cells.argmax(1), 3).permute(0, 3, 1, 2).float()
    assert grouping_loss(grouped, labels).item() == 0.0
    # everything in one direction: no label separated from another
    same = torch.ones(2, 16, 8, 8)
    assert grouping_loss(same, labels).item() == pytest.approx((9.0 + 9.0) / 2)
    # cells straddling two labels (share < 75%) are ignored; pure cells still count
    straddle = grouped.clone()
    mixed = (cells.max(1).values < 0.75)[:, None].expand_as(straddle)
    straddle[mixed] = torch.randn(int(mixed.sum()))
    assert mixed.any() and grouping_loss(straddle, labels).item() == 0.0
    # gradient descent on the loss groups a random embedding
    e = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    start = grouping_loss(e, labels).item()
    opt = torch.optim.Adam([e], lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        grouping_loss(e, labels).backward()
        opt.step()
    assert grouping_loss(e, labels).item() < 0.1 * start


def test_training_step_accumulates_micro_batches_to_the_whole_batch_gradient(tmp_path, monkeypatch):
    """Forward and backward run MICRO_BATCH images at a time (the last pass may be
    smaller); the gradient the optimizer steps on is the whole batch's."""
    from tools.zoo import train as zoo_train

    grads: dict[int, torch.Tensor] = {}
    sizes: list[int] = []
    real_clip, real_loss = torch.nn.utils.clip_grad_norm_, zoo_train.step_loss

    def clip(params, max_norm):
        params = list(params)
        flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        grads[zoo_train.MICRO_BATCH] = flat.clone()
        return real_clip(params, max_norm)

    def loss(victim, x, *a, **k):
        sizes.append(x.shape[0])
        return real_loss(victim, x, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(zoo_train, "step_loss", loss)
    args = ["train", "zoo-vit-sam", "--steps", "1", "--train-images", "5"]
    args += ["--batch-images", "5", "--prompts", "4", "--eval-images", "0", "--amp", "off"]
    for micro in (5, 2):
        monkeypatch.setattr(zoo_train, "MICRO_BATCH", micro)
        assert main([*args, "--out", str(tmp_path / str(micro))]) == 0
    assert sizes == [5, 2, 2, 1]
    scale = float(grads[5].abs().max())
    assert scale > 0
    torch.testing.assert_close(grads[2], grads[5], atol=1e-4 * scale, rtol=1e-3)


def test_zoo_train_group_loss_changes_the_weights_and_the_card(tmp_path):
    """The recipes train with the grouping loss (weight 1); `--group-loss 0` turns it off,
    which changes the encoder's weights and shows in the card's command and recipe."""
    from safetensors.torch import load_file

    args = ["train", "zoo-vit-sam", "--steps", "2", "--train-images", "3"]
    args += ["--batch-images", "2", "--prompts", "4", "--eval-images", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--group-loss", "0", "--out", str(tmp_path / "b")]) == 0
    sa = load_file(str(tmp_path / "a" / "zoo-vit-sam.safetensors"))
    sb = load_file(str(tmp_path / "b" / "zoo-vit-sam.safetensors"))
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("image_encoder."))
    recipe = (tmp_path / "a" / "zoo-vit-sam.md").read_text()
    assert "--group-loss" not in recipe and "1 × instance-grouping loss" in recipe
    off = (tmp_path / "b" / "zoo-vit-sam.md").read_text()
    assert "--group-loss 0.0" in off and "grouping" not in off


def test_train_zoo_script_trains_teacher_then_students_and_resumes(tmp_path):
    """tools/zoo/train_all.py (`make zoo`): all four models, each student distilled from the teacher it
    just wrote (not the shipped one); --resume skips finished models."""
    repo = Path(__file__).resolve().parent.parent
    tiny = ["--steps", "2", "--train-images", "3", "--batch-images", "2", "--prompts", "4"]
    tiny += ["--distill-steps", "0"]  # the students' recipes start with 800-1000 of them
    cmd = [sys.executable, "-m", "tools.zoo.train_all", "--out", str(tmp_path), "--", *tiny]
    cmd += ["--eval-images", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert res.returncode == 0, res.stderr
    order = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("training ")]
    assert order[0] == "zoo-vit-sam" and sorted(order) == sorted(ZOO_NAMES)
    teacher = str(tmp_path / "zoo-vit-sam.safetensors")
    for name in ZOO_NAMES:
        assert (tmp_path / f"{name}.safetensors").is_file() and (tmp_path / f"{name}.md").is_file()
        log = (tmp_path / f"{name}.train.log").read_text()
        assert (f"--teacher-checkpoint {teacher}" in log) == (name != "zoo-vit-sam"), name
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}
    res = subprocess.run([*cmd[:5], "--resume", *cmd[5:]], capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0 and "training " not in res.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}


def test_train_zoo_script_resumes_from_a_committed_compact_state(tmp_path):
    """On a new host only the committed compact copy of a training state is there: the
    script must count it as an unfinished run and pass --resume (which falls back to the
    copy), not retrain that model from step 0 or skip it as finished."""
    from tools.zoo import train_all as script

    name = "zoo-tinyvit-sam"
    assert "--resume" not in script.command(name, tmp_path, True, [])
    assert not script.has_state(tmp_path, name)
    (tmp_path / f"{name}.safetensors").write_bytes(b"weights of an earlier run")
    compact_state_path(tmp_path / f"{name}.train-state.pt").write_bytes(b"compact state")
    assert script.has_state(tmp_path, name)
    assert "--resume" in script.command(name, tmp_path, True, [])
    assert "--resume" not in script.command(name, tmp_path, False, [])
    assert not script.has_state(tmp_path, "zoo-hf-sam")
    # a recipe in rounds keeps its earlier rounds in OUT/NAME.round-k/: a finished round's
    # weights, or an unfinished round's state, is a run to continue, not to start over
    rounds = tmp_path / "zoo-hf-sam.round-1"
    rounds.mkdir()
    assert not script.has_state(tmp_path, "zoo-hf-sam")
    (rounds / "zoo-hf-sam.safetensors").write_bytes(b"round 1's weights")
    assert script.has_state(tmp_path, "zoo-hf-sam")
    assert "--resume" in script.command("zoo-hf-sam", tmp_path, True, [])
    (rounds / "zoo-hf-sam.safetensors").unlink()
    compact_state_path(rounds / "zoo-hf-sam.train-state.pt").write_bytes(b"compact state")
    assert script.has_state(tmp_path, "zoo-hf-sam")


# ---------------------------------------------------------------------------- architecture
def _student_names() -> list[str]:
    """The MobileSAM-style students (their own encoder, distilled from the teacher)."""
    from tools.zoo.train import RECIPES

    return [n for n in ZOO_NAMES if RECIPES[n].teacher and not RECIPES[n].freeze_teacher]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_has_32x32_tokens_and_loads_its_saved_weights(name, tmp_path, held_out):
    """A 32×32 token grid (masks from a 128×128 grid) at 256² input; weights saved the way
    `zoo train` saves them load back through `checkpoint=` and predict one mask per prompt
    at the image size."""
    from tools.zoo.train import save_weights

    cls = ZOO[name]
    torch.manual_seed(0)
    model = cls.new_model()
    path = tmp_path / f"{name}.safetensors"
    save_weights(model, path, {"name": name})
    victim = cls(cls.Config(checkpoint=str(path)))
    s = held_out[0]
    p = sample_prompts("zoo-test", s.id, s.hw, s.masks, s.boxes, seed=0).subset(np.arange(4))
    x = torch.from_numpy(np.array(s.image)).permute(2, 0, 1)[None].float() / 255
    emb, logits = victim.forward_train(x, [p])
    assert tuple(emb.shape) == (1, 64, 32, 32) and tuple(logits[0].shape) == (4, 128, 128)
    masks = victim.predict(s.image, p)
    assert masks.shape == (4, *s.hw) and masks.dtype == bool
    loaded = victim.model.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(loaded[k].float(), v.half().float(), msg=k)


@pytest.mark.parametrize("name", _student_names())
def test_student_starts_from_the_teacher_decoder_not_its_encoder(name):
    from tools.zoo.train import RECIPES, init_from_teacher

    assert RECIPES[name].teacher == "zoo-vit-sam" and not RECIPES["zoo-vit-sam"].teacher
    torch.manual_seed(0)
    teacher = ZOO["zoo-vit-sam"].new_model()
    cls = ZOO[name]
    student = cls.new_model()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    n = len(init_from_teacher(cls, student, teacher))
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert n >= 130 and len(changed) >= 100
    assert not any("image_encoder" in k or "vision_encoder" in k for k in changed)


# ---------------------------------------------------------------------------- students
def _teacher_file(tmp_path: Path) -> Path:
    """A zoo-vit-sam checkpoint made here (seeded random weights), saved like `zoo train`."""
    from tools.zoo.train import save_weights

    torch.manual_seed(0)
    path = tmp_path / "teacher.safetensors"
    save_weights(ZOO["zoo-vit-sam"].new_model(), path, {"name": "zoo-vit-sam"})
    return path


@pytest.fixture
def hq_on_the_teacher_architecture(monkeypatch):
    """zoo-hq-sam on zoo-vit-sam's own architecture, as HQ-SAM is on SAM's (the layout
    the retrained zoo ships it with; docs/zoo.md)."""
    from uadbench.zoo import models

    cls = type("ZooHQSamOnViT", (models.ZooHQSam,), {"arch": models.VIT_ARCH})
    monkeypatch.setitem(models.ZOO, "zoo-hq-sam", cls)
    return cls


def test_hq_sam_trains_only_its_hq_additions_on_the_frozen_teacher(
    tmp_path, hq_on_the_teacher_architecture
):
    """--freeze-teacher builds zoo-hq-sam the way HQ-SAM is built on SAM: every tensor of
    the teacher (image encoder included) is copied and stays frozen; only the HQ
    additions train. Without it the encoder trains too; the card says which it was."""
    from safetensors.torch import load_file

    cls = hq_on_the_teacher_architecture
    teacher = _teacher_file(tmp_path)
    args = ["train", "zoo-hq-sam", "--train-images", "3", "--batch-images", "2"]
    args += ["--prompts", "4", "--eval-images", "0", "--teacher-checkpoint", str(teacher)]
    out = {}
    for steps in ("1", "2"):
        out[steps] = tmp_path / steps
        assert main([*args, "--freeze-teacher", "--steps", steps, "--out", str(out[steps])]) == 0
    t = load_file(str(teacher))
    s1 = load_file(str(out["1"] / "zoo-hq-sam.safetensors"))
    s2 = load_file(str(out["2"] / "zoo-hq-sam.safetensors"))
    assert set(t) < set(s1)  # the teacher's layout, plus the additions
    for k in t:
        assert torch.equal(s1[k], t[k]) and torch.equal(s2[k], t[k]), k
    hq = sorted(set(s1) - set(t))
    assert hq and all(k.startswith("mask_decoder.") for k in hq)
    assert any(not torch.equal(s1[k], s2[k]) for k in hq)  # the additions do train
    card = (out["1"] / "zoo-hq-sam.md").read_text()
    assert "HQ-SAM-style" in card and "frozen" in card
    # the frozen model encodes exactly as the teacher does
    x = torch.rand(1, 3, 64, 64)
    weights = str(out["2"] / "zoo-hq-sam.safetensors")
    hq_emb = cls(cls.Config(checkpoint=weights)).forward_train(x, [])[0]
    tc = ZOO["zoo-vit-sam"]
    t_emb = tc(tc.Config(checkpoint=str(teacher))).forward_train(x, [])[0]
    torch.testing.assert_close(hq_emb, t_emb)
    assert main([*args, "--no-freeze-teacher", "--steps", "1", "--out", str(tmp_path / "n")]) == 0
    sn = load_file(str(tmp_path / "n" / "zoo-hq-sam.safetensors"))
    assert any(not torch.equal(sn[k], t[k]) for k in t if k.startswith("image_encoder."))
    assert "HQ-SAM-style" not in (tmp_path / "n" / "zoo-hq-sam.md").read_text()


def test_frozen_teacher_without_a_teacher_is_a_one_line_error(tmp_path, capsys):
    args = ["train", "zoo-hq-sam", "--teacher", "none", "--freeze-teacher", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--no-freeze-teacher" in err
    assert not list(tmp_path.iterdir())  # refused before anything was loaded or written
    both = ["train", "zoo-hq-sam", "--freeze-teacher", "--distill-steps", "2"]
    assert main([*both, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--distill-steps" in err and "--freeze-teacher" in err
    assert not list(tmp_path.iterdir())


def _image_batch(samples) -> torch.Tensor:
    """The samples' images as one float batch (B, 3, H, W) in [0, 1]."""
    return torch.stack(
        [torch.from_numpy(np.array(s.image)).permute(2, 0, 1).float() / 255 for s in samples]
    )


@pytest.mark.parametrize("name", _student_names())
def test_decoupled_distillation_moves_only_the_encoder_towards_the_teacher(
    name, tmp_path, held_out
):
    """--distill-steps: the encoder regresses the teacher's embeddings (their MSE on
    held-out scenes falls) while the decoder and prompt encoder stay the teacher's; with
    --steps 0 that is the whole training (MobileSAM's decoupled distillation)."""
    from safetensors.torch import load_file

    from tools.zoo.train import init_from_teacher

    teacher = shipped_weights("zoo-vit-sam")  # a trained teacher: structured embeddings
    args = ["train", name, "--steps", "0", "--distill-steps", "12", "--distill-batch"]
    args += ["2", "--train-images", "3", "--eval-images", "0", "--distill-lr", "0.005"]
    args += ["--teacher-checkpoint", str(teacher), "--out", str(tmp_path / "d")]
    assert main(args) == 0
    weights = tmp_path / "d" / f"{name}.safetensors"
    cls, tcls = ZOO[name], ZOO["zoo-vit-sam"]
    t_victim = tcls(tcls.Config(checkpoint=str(teacher)))
    torch.manual_seed(0)  # the student's initialisation (`--seed 0`)
    init = cls.new_model()
    copied = init_from_teacher(cls, init, t_victim.model)
    trained = load_file(str(weights))
    for k in copied:
        torch.testing.assert_close(trained[k].float(), init.state_dict()[k].half().float())
    x = _image_batch(held_out)
    with torch.no_grad():
        target = t_victim.forward_train(x, [])[0]
        before = F.mse_loss(
            cls(cls.Config()).use_model(init.eval()).forward_train(x, [])[0], target
        )
        after = F.mse_loss(cls(cls.Config(checkpoint=str(weights))).forward_train(x, [])[0], target)
    assert after < 0.8 * before, (float(before), float(after))
    card = (tmp_path / "d" / f"{name}.md").read_text()
    assert "--distill-steps 12" in card and "decoupled distillation first" in card


def test_mask_distillation_pulls_the_students_masks_towards_the_teachers(
    tmp_path, held_out, capsys
):
    """--mask-distill (EdgeSAM's prompt-in-the-loop distillation): the same seeded student
    run (a warm restart of the shipped student) with the term ends with masks closer to
    the teacher's, on held-out prompts, than without it; the card and its command say so;
    without a teacher it is a one-line error before anything is written."""
    from tools.zoo.train import mask_distill_loss

    name = "zoo-hf-sam"
    teacher = shipped_weights("zoo-vit-sam")
    args = ["train", name, "--steps", "16", "--train-images", "3", "--batch-images"]
    args += ["2", "--prompts", "8", "--eval-images", "0", "--lr", "0.0005", "--seed", "1"]
    args += ["--teacher-checkpoint", str(teacher), "--init", str(shipped_weights(name))]
    args += ["--distill-steps", "0"]  # prompted steps only (the recipe starts with 1000)
    for tag, w in [("gt", "0"), ("kd", "20")]:
        assert main([*args, "--mask-distill", w, "--out", str(tmp_path / tag)]) == 0
    cls, tcls = ZOO[name], ZOO["zoo-vit-sam"]
    t_victim = tcls(tcls.Config(checkpoint=str(teacher)))
    x = _image_batch(held_out)
    prompts = [sample_prompts("synthetic", s.id, s.hw, s.masks, s.boxes, seed=0) for s in held_out]
    gap = {}
    with torch.no_grad():
        t_logits = t_victim.forward_train(x, prompts)[1]
        for tag in ("gt", "kd"):
            ck = str(tmp_path / tag / f"{name}.safetensors")
            logits = cls(cls.Config(checkpoint=ck)).forward_train(x, prompts)[1]
            gap[tag] = float(mask_distill_loss(logits, t_logits))
        floor = float(mask_distill_loss(t_logits, t_logits))  # the teacher against itself
    assert floor < gap["kd"] < gap["gt"] - 0.01, (floor, gap)
    card = (tmp_path / "kd" / f"{name}.md").read_text()
    assert "--mask-distill 20" in card and "prompt-in-the-loop" in card
    assert "--mask-distill" not in (tmp_path / "gt" / f"{name}.md").read_text()
    capsys.readouterr()
    bad = ["train", name, "--teacher", "none", "--mask-distill", "1"]
    bad += ["--distill-steps", "0"]  # (the recipe's distillation needs the teacher too)
    assert main([*bad, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--mask-distill 0" in err and not (tmp_path / "x").exists()


def test_distill_lr_sets_the_distillation_phase_learning_rate_only(tmp_path):
    """--distill-lr is the decoupled phase's peak lr, --lr the prompted phase's: with a
    vanishing --distill-lr the distillation phase leaves the weights where they started
    (as a vanishing --lr for both does); with a vanishing --lr and a real --distill-lr it
    moves them; the card records it."""
    from safetensors.torch import load_file

    args = ["train", "zoo-hf-sam", "--steps", "0", "--distill-steps", "2"]
    args += ["--distill-batch", "2", "--train-images", "3", "--eval-images", "0"]
    args += ["--teacher-checkpoint", str(shipped_weights("zoo-vit-sam"))]
    runs = {
        "still": ["--lr", "0.005", "--distill-lr", "1e-12"],
        "moves": ["--lr", "1e-12", "--distill-lr", "0.005"],
        "both-off": ["--lr", "1e-12", "--distill-lr", "0"],  # 0: the phase takes --lr
    }
    w = {}
    for tag, extra in runs.items():
        assert main([*args, *extra, "--out", str(tmp_path / tag)]) == 0
        w[tag] = load_file(str(tmp_path / tag / "zoo-hf-sam.safetensors"))
    assert all(torch.equal(w["still"][k], w["both-off"][k]) for k in w["still"])
    assert any(not torch.equal(w["moves"][k], w["both-off"][k]) for k in w["moves"])
    card = (tmp_path / "moves" / "zoo-hf-sam.md").read_text()
    assert "--distill-lr 0.005" in card and "peak lr 0.005" in card
    assert main([*args, "--distill-lr", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_zoo_train_init_continues_from_the_given_weights(tmp_path, capsys):
    """--init starts from a weights file (a warm restart) instead of random weights: with a
    vanishing learning rate the result is that file; the card names it and its digest; a
    missing file is a one-line error before any data is loaded."""
    from safetensors.torch import load_file

    start = shipped_weights("zoo-vit-sam")
    args = ["train", "zoo-vit-sam", "--steps", "1", "--train-images", "2"]
    args += ["--batch-images", "1", "--prompts", "2", "--eval-images", "0", "--lr", "1e-12"]
    assert main([*args, "--init", str(start), "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    s0 = load_file(str(start))
    sa = load_file(str(tmp_path / "a" / "zoo-vit-sam.safetensors"))
    sb = load_file(str(tmp_path / "b" / "zoo-vit-sam.safetensors"))
    assert all(torch.equal(sa[k], s0[k]) for k in s0)
    assert not all(torch.equal(sb[k], s0[k]) for k in s0)
    card = (tmp_path / "a" / "zoo-vit-sam.md").read_text()
    assert f"--init {start}" in card and "starts from the weights in" in card
    capsys.readouterr()
    missing = tmp_path / "nope.safetensors"
    assert main([*args, "--init", str(missing), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(missing) in err and not (tmp_path / "c").exists()


def _tiny_train_args(
    out: Path, *extra: str, name: str = "zoo-tinyvit-sam", steps: int = 2
) -> list[str]:
    return [
        *("train", name, "--teacher", "none", "--steps", str(steps)),
        *("--distill-steps", "0"),  # its recipe distils first, which needs the teacher
        *("--no-freeze-teacher",),  # zoo-hq-sam's recipe freezes the teacher's copy
        *("--train-images", "3", "--batch-images", "2", "--prompts", "4", "--eval-images", "0"),
        *("--seed", "3", "--out", str(out), *extra),
    ]


def _tiny_train_start(name: str) -> dict[str, torch.Tensor]:
    """The float weights (as float16, as saved) a ``_tiny_train_args`` run starts from."""
    torch.manual_seed(3)
    init = ZOO[name].new_model().state_dict()
    return {k: v.half() for k, v in init.items() if v.is_floating_point()}


def test_bf16_autocast_training_changes_the_numbers_reproducibly(tmp_path, capsys):
    """--amp bf16 trains (the weights move), differently from float32 (autocast really runs
    the forward in bfloat16), the same twice under a seed; the card's command and text say
    so; resuming a float32 run with --amp bf16 is refused as other settings."""
    from safetensors.torch import load_file

    runs = {}
    for tag, extra in [("fp32", ()), ("bf16", ("--amp", "bf16")), ("again", ("--amp", "bf16"))]:
        assert main(_tiny_train_args(tmp_path / tag, *extra)) == 0
        runs[tag] = load_file(str(tmp_path / tag / "zoo-tinyvit-sam.safetensors"))
    start = _tiny_train_start("zoo-tinyvit-sam")
    moved = [k for k in start if not torch.equal(runs["bf16"][k], start[k])]
    assert len(moved) > len(start) // 2
    assert any(not torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in start)
    assert all(torch.equal(runs["bf16"][k], runs["again"][k]) for k in runs["bf16"])
    card = (tmp_path / "bf16" / "zoo-tinyvit-sam.md").read_text()
    assert "--amp bf16" in card and "bf16 autocast" in card
    assert "--amp" not in (tmp_path / "fp32" / "zoo-tinyvit-sam.md").read_text()
    # a float32 run paused at step 1 does not continue under bf16
    half = _tiny_train_args(tmp_path / "p", "--save-every", "1", "--max-minutes", "1e-9")
    assert main(half) == 0 and (tmp_path / "p" / "zoo-tinyvit-sam.train-state.pt").exists()
    capsys.readouterr()
    assert main([*half, "--resume", "--amp", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "amp '' then, 'bf16' now" in err


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_trains_under_bf16_autocast(name, tmp_path):
    """--amp bf16 is a flag of every zoo model, not only of the one it was measured on: a
    step under autocast runs and moves the weights (zoo-hf-sam's prompt encoder used to hand
    back bfloat16 into a float32 buffer and stop the run)."""
    from safetensors.torch import load_file

    assert main(_tiny_train_args(tmp_path, "--amp", "bf16", name=name, steps=1)) == 0
    got = load_file(str(tmp_path / f"{name}.safetensors"))
    start = _tiny_train_start(name)
    assert any(not torch.equal(got[k], start[k]) for k in got if k in start)


@pytest.mark.parametrize(
    ("device", "says"), [("cuda", "sees no CUDA GPU"), ("gpu0", "is not a torch device")]
)
def test_zoo_train_on_a_missing_device_is_a_one_line_error(
    device, says, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_tiny_train_args(tmp_path / "x", "--device", device)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err and "--device cpu" in err
    assert not (tmp_path / "x").exists()  # refused before anything is written
    assert uadbench_main(["zoo", "eval", "zoo-vit-sam", "--device", device, "--n", "1"]) == 2
    assert says in capsys.readouterr().err
    run = ["run", "--attack", "uad", "--victims", "zoo-vit-sam", "--limit", "1"]
    assert uadbench_main([*run, "--device", device, "--out", str(tmp_path / "r")]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_zoo_train_on_cuda_matches_the_cpu_run_closely(tmp_path):
    """On a GPU machine: the same tiny run on cuda ends near the CPU run's weights, and its
    training state resumes on the CPU."""
    from safetensors.torch import load_file

    assert main(_tiny_train_args(tmp_path / "cpu")) == 0
    assert main(_tiny_train_args(tmp_path / "gpu", "--device", "cuda")) == 0
    a = load_file(str(tmp_path / "cpu" / "zoo-tinyvit-sam.safetensors"))
    b = load_file(str(tmp_path / "gpu" / "zoo-tinyvit-sam.safetensors"))
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-2, rtol=1e-2), k
    half = _tiny_train_args(tmp_path / "p", "--save-every", "1", "--max-minutes", "1e-9")
    assert main([*half, "--device", "cuda"]) == 0
    assert main([*half, "--resume"]) == 0
    assert (tmp_path / "p" / "zoo-tinyvit-sam.safetensors").exists()


def _rounds_recipe() -> TrainConfig:
    """A tiny recipe in two rounds: the second a bf16 warm restart at another lr and batch."""
    return TrainConfig(
        steps=2,
        train_images=3,
        batch_images=2,
        prompts_per_image=4,
        seed=3,
        then=(TrainConfig(steps=2, lr=5e-4, batch_images=1, prompts_per_image=2, amp="bf16"),),
    )


def test_a_recipe_in_rounds_gives_the_weights_of_its_rounds_run_one_by_one(tmp_path):
    """A recipe in rounds (TrainConfig.then) ends with exactly the weights of its first
    round followed by an --init warm restart of its second (seed, data and teacher the
    run's); the second round changes them; the card lists both rounds; the weights record
    the whole recipe; the per-round directories are gone."""
    from safetensors.torch import load_file

    name = "zoo-tinyvit-sam"
    cfg = _rounds_recipe()
    res = train(name, cfg, tmp_path / "rounds", eval_images=0)
    first = train(name, dataclasses.replace(cfg, then=()), tmp_path / "one", eval_images=0)
    second_cfg = dataclasses.replace(cfg.then[0], seed=3, train_images=3, init=str(first.weights))
    second = train(name, second_cfg, tmp_path / "two", eval_images=0)
    got, w1, w2 = (load_file(str(p)) for p in (res.weights, first.weights, second.weights))
    assert got.keys() == w2.keys()
    assert all(torch.equal(got[k], w2[k]) for k in w2)
    assert any(not torch.equal(got[k], w1[k]) for k in w1)
    assert [r.config.steps for r in res.rounds] == [2, 2]
    assert res.seconds == pytest.approx(sum(r.seconds for r in res.rounds))
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == [
        f"{name}.md",
        f"{name}.safetensors",
    ]
    card = (tmp_path / "rounds" / f"{name}.md").read_text()
    assert "trained in 2 rounds" in card
    assert "(its rounds set in Python: no flag says them)" in card  # not the recipe's rounds
    assert "1. 2 prompted steps × 2 images × 4 prompts (peak lr 0.002)" in card
    assert "2. 2 prompted steps × 1 images × 2 prompts (peak lr 0.0005, bf16 autocast)" in card
    meta = weights_metadata(res.weights)
    saved = json.loads(meta["train_config"])
    assert saved["steps"] == 2 and [r["lr"] for r in saved["then"]] == [5e-4]
    assert saved["then"][0]["seed"] == 3  # as trained: the run's seed


def test_a_recipe_in_rounds_pauses_and_resumes_across_rounds(tmp_path, monkeypatch, capsys):
    """`zoo train NAME` of a recipe in rounds split into time-boxed shares — one pausing
    inside round 1, one at the first step of round 2 — ends with the uninterrupted run's
    weights, and a resume keeps the finished round instead of training it again. A flag
    that reshapes a round trains the first round alone and says so; --seed reaches every
    round."""
    from safetensors.torch import load_file

    from tools.zoo import train as zoo_train

    name = "zoo-tinyvit-sam"
    monkeypatch.setitem(zoo_train.RECIPES, name, dataclasses.replace(_rounds_recipe(), seed=0))
    args = ["train", name, "--seed", "3", "--eval-images", "0", "--save-every", "1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = load_file(str(tmp_path / "whole" / f"{name}.safetensors"))
    card = (tmp_path / "whole" / f"{name}.md").read_text()
    # the recipe's rounds: no flags
    assert f"    python -m tools.zoo train {name} --seed 3\n" in card
    out = tmp_path / "shares"
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--max-minutes", "1e-9"]) == 0
    assert "paused after --max-minutes 1e-09 at step 1/4" in capsys.readouterr().out
    assert main([*args, "--out", str(out), "--resume", "--max-minutes", "1e-9"]) == 0
    text = capsys.readouterr().out
    assert "round 2/2: 2 prompted steps" in text and "at step 3/4" in text
    assert (out / f"{name}.round-1" / f"{name}.safetensors").is_file()
    # weights of a round run before a (default) setting existed still count as finished
    first = out / f"{name}.round-1" / f"{name}.safetensors"
    meta = weights_metadata(first)
    older = json.loads(meta["train_config"])
    del older["then"]
    zoo_train._save_safetensors(
        zoo_train.load_safetensors(first), first, {**meta, "train_config": json.dumps(older)}
    )
    calls = []
    real = zoo_train.seg_loss
    monkeypatch.setattr(zoo_train, "seg_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert "round 1/2: finished before" in capsys.readouterr().out
    assert len(calls) == 1  # the last step of round 2, 1 image: round 1 not trained again
    shares = load_file(str(out / f"{name}.safetensors"))
    assert all(torch.equal(shares[k], whole[k]) for k in whole)
    assert not (out / f"{name}.round-1").exists()

    # a round's weights from other settings are not taken as finished
    out_x = tmp_path / "other"
    assert main([*args, "--out", str(out_x), "--max-minutes", "1e-9"]) == 0
    assert main([*args, "--out", str(out_x), "--resume", "--max-minutes", "1e-9"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(out_x), "--resume", "--seed", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "round-1" in err and "other settings" in err

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "one"), "--steps", "1"]) == 0
    assert "trains its first round only" in capsys.readouterr().out
    saved = json.loads(weights_metadata(tmp_path / "one" / f"{name}.safetensors")["train_config"])
    assert saved["then"] == [] and saved["steps"] == 1 and saved["seed"] == 3
    card = (tmp_path / "one" / f"{name}.md").read_text()
    assert f"python -m tools.zoo train {name} --seed 3 --steps 1" in card
    assert "rounds set in Python" not in card
