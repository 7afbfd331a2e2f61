"""Helpers shared by the victim tests: a synthetic two-object image, far-apart prompts,
small models of each backend's REAL architecture saved in the REAL checkpoint formats
(official ``.pth`` key layout, ultralytics ``.pt``, ``save_pretrained`` inside a Hugging
Face cache tree), and the checks every victim must pass.

Nothing here downloads: all weights are random (seeded) and written to temp dirs.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from uadbench.eval.prompts import PromptSet
from uadbench.victims import VICTIMS
from uadbench.victims.hq import TinyVitArch
from uadbench.victims.segment_anything import TINY, SamArch, build_sam

#: TinyViT is fixed at 1024² input / 64×64 grid / 256-d neck; only widths and depths shrink
SMALL_TINY_VIT = TinyVitArch(
    embed_dims=(16, 32, 40, 320),
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 1, 2),
    mlp_ratio=2.0,
    decoder_mlp_dim=128,
    decoder_heads=2,
    iou_head_hidden_dim=32,
)
HF_REV = "0123456789abcdef0123456789abcdef01234567"


def two_object_image() -> np.ndarray:
    """96×128 RGB uint8: dark background, red square (left), blue disc (right)."""
    img = np.full((96, 128, 3), 20, np.uint8)
    img[20:60, 10:50] = (220, 30, 30)
    yy, xx = np.mgrid[:96, :128]
    img[(yy - 50) ** 2 + (xx - 95) ** 2 < 20**2] = (30, 60, 220)
    return img


def far_prompts() -> PromptSet:
    """Point on the square, point on the disc, box around each (indices 0, 1, 2, 3)."""
    return PromptSet.from_lists(
        points=[(30.0, 40.0), (95.0, 50.0)],
        boxes=[(8.0, 18.0, 52.0, 62.0), (73.0, 28.0, 117.0, 72.0)],
    )


def assert_prompt_dependent(masks: np.ndarray, name: str) -> None:
    """Masks of far-apart prompts on distinct objects must differ (points 0/1, boxes 2/3)."""
    assert not np.array_equal(masks[0], masks[1]), f"{name}: same mask for two far-apart points"
    assert not np.array_equal(masks[2], masks[3]), f"{name}: same mask for two far-apart boxes"


# ---------------------------------------------------------------------- weights tweaks
def make_masks_nontrivial_(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Random SAM decoders predict almost all-on masks; alternate the signs of the output
    biases of the mask-token hypernetworks so masks cover part of the image."""
    suffixes = ("output_hypernetworks_mlps.0", "hf_mlp")
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(suffixes):
                last = [m for m in mod.modules() if isinstance(m, torch.nn.Linear)][-1]
                sign = torch.tensor([1.0, -1.0]).repeat(last.bias.numel() // 2)
                last.bias.copy_(scale * sign)
    return model


# ---------------------------------------------------------------------- checkpoint writers
def tiny_arch_for(cls: type) -> Any:
    """The small stand-in architecture for a victim class with a fixed official size."""
    arch = getattr(cls, "arch", None)
    if not getattr(cls, "filename", ""):  # not loaded from a file (built in code)
        return None
    if isinstance(arch, SamArch):
        return TINY
    if isinstance(arch, TinyVitArch):
        return SMALL_TINY_VIT
    return None


def tiny_twin(cls: type) -> type:
    """``cls`` with its architecture swapped for a small one; loading code unchanged."""
    return type(cls.__name__ + "Small", (cls,), {"arch": tiny_arch_for(cls)})


def random_model(twin: type, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inst = twin()
        model = inst._build_arch() if hasattr(inst, "_build_arch") else build_sam(twin.arch)
    return make_masks_nontrivial_(model)


def write_hf_snapshot(cache: Path, repo_id: str, save: Any) -> Path:
    """An HF hub cache entry: ``models--org--name/snapshots/<rev>/`` + ``refs/main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / HF_REV
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HF_REV)
    save(snap)
    return snap


def tiny_fastsam_model(seed: int = 0) -> torch.nn.Module:
    """YOLOv8n-seg with one class (FastSAM's architecture at the smallest scale), random
    weights tuned so detections pass conf 0.4 and boxes (hence masks) are local."""
    from uadbench.victims.fastsam import import_ultralytics

    import_ultralytics()  # offline: before anything else imports ultralytics
    from ultralytics.nn.tasks import SegmentationModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = SegmentationModel("yolov8n-seg.yaml", nc=1, verbose=False)
    head = m.model[-1]
    with torch.no_grad():
        for seq in head.cv3:  # class logits: every anchor above conf 0.4
            seq[-1].bias.fill_(3.0)
        for seq in head.cv2:  # box distances: DFL bins peaked at 1 stride → small boxes
            b = seq[-1].bias.view(4, -1)
            b.fill_(0.0)
            b[:, 1] = 8.0
        for seq in head.cv4:  # mask coefficients of mixed sign
            b = seq[-1].bias
            b.copy_(0.5 * torch.tensor([1.0, -1.0]).repeat(b.numel() // 2))
    return m


def save_ultralytics_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """The layout of ultralytics' released checkpoints: the pickled model in fp16 + metadata."""
    from uadbench.victims.fastsam import import_ultralytics

    import_ultralytics()
    import ultralytics

    torch.save(
        {
            "date": "2023-06-21T00:00:00",
            "version": ultralytics.__version__,
            "model": copy.deepcopy(model).half(),
            "train_args": {"imgsz": 1024, "task": "segment"},
            "optimizer": None,
            "epoch": -1,
        },
        path,
    )


# ---------------------------------------------------------------------- tiny transformers models
def _sam_like_configs(T: Any, hq: bool) -> Any:
    vis = dict(
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=3,
        global_attn_indexes=[1, 3],
        image_size=256,
        window_size=8,
        output_channels=64,
        num_pos_feats=32,
        initializer_range=0.02,  # the default (1e-10) makes a random encoder output ~0
    )
    pe = dict(hidden_size=64, image_size=256)
    md = dict(hidden_size=64, mlp_dim=256, num_attention_heads=2, iou_head_hidden_dim=64)
    if hq:
        return T.SamHQConfig(
            vision_config=vis, prompt_encoder_config=pe, mask_decoder_config={**md, "vit_dim": 96}
        )
    return T.SamConfig(vision_config=vis, prompt_encoder_config=pe, mask_decoder_config=md)


def _sam2_like_decoder(S: int) -> dict:
    return dict(
        prompt_encoder_config=dict(hidden_size=32, image_size=S),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )


def hf_tiny(kind: str, seed: int = 0) -> tuple[Any, Any]:
    """(model, processor) of a small transformers model of ``kind`` with random weights."""
    import transformers as T

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("sam", "sam_hq"):
            cfg = _sam_like_configs(T, hq=kind == "sam_hq")
            model = (T.SamHQModel if kind == "sam_hq" else T.SamModel)(cfg)
            ip = T.SamImageProcessor(
                size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}
            )
            proc = (T.SamHQProcessor if kind == "sam_hq" else T.SamProcessor)(ip)
        elif kind == "sam2":
            cfg = T.Sam2Config(
                vision_config=dict(
                    backbone_config=dict(
                        model_type="sam2_hiera_det_model",
                        hidden_size=16,
                        image_size=[256, 256],
                        blocks_per_stage=[1, 1, 2, 1],
                        embed_dim_per_stage=[16, 32, 64, 128],
                        num_attention_heads_per_stage=[1, 1, 2, 2],
                        window_size_per_stage=[8, 4, 4, 4],
                        global_attention_blocks=[3],
                        window_positional_embedding_background_size=[4, 4],
                    ),
                    backbone_channel_list=[128, 64, 32, 16],
                    backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
                    fpn_hidden_size=32,
                ),
                **_sam2_like_decoder(256),
            )
            model = T.Sam2Model(cfg)
            proc = T.Sam2Processor(T.Sam2ImageProcessor(size={"height": 256, "width": 256}))
        elif kind == "edgetam":
            base = T.EdgeTamConfig()
            bb = base.vision_config.backbone_config.to_dict()
            # EdgeTAM's RepViT backbone (timm), one block per stage
            bb.update(
                architecture="repvit_m1", model_args={**bb["model_args"], "depth": [1, 1, 1, 1]}
            )
            vc = base.vision_config.to_dict()
            vc.update(
                backbone_config=bb,
                backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
                fpn_hidden_size=32,
            )
            model = T.EdgeTamModel(T.EdgeTamConfig(vision_config=vc, **_sam2_like_decoder(256)))
            proc = T.Sam2Processor(T.Sam2ImageProcessor(size={"height": 256, "width": 256}))
        elif kind == "sam3_tracker":
            vit = dict(
                model_type="sam3_vit_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=224,
                patch_size=14,
                window_size=8,
                global_attn_indexes=[1],
                pretrain_image_size=224,
            )
            cfg = T.Sam3TrackerConfig(
                vision_config=dict(
                    model_type="sam3_vision_model",
                    backbone_config=vit,
                    fpn_hidden_size=32,
                    backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
                ),
                prompt_encoder_config=dict(hidden_size=32, image_size=224, patch_size=14),
                mask_decoder_config=_sam2_like_decoder(224)["mask_decoder_config"],
            )
            model = T.Sam3TrackerModel(cfg)
            proc = T.Sam3TrackerProcessor(T.Sam3ImageProcessor(size={"height": 224, "width": 224}))
        elif kind in ("sam2_video", "edgetam_video"):  # video checkpoints of the same models
            image_model, proc = hf_tiny(kind[: -len("_video")], seed)
            c = image_model.config.to_dict()
            video_cfg = T.Sam2VideoConfig if kind == "sam2_video" else T.EdgeTamVideoConfig
            model_cls = T.Sam2VideoModel if kind == "sam2_video" else T.EdgeTamVideoModel
            model = model_cls(
                video_cfg(
                    vision_config=c["vision_config"],
                    prompt_encoder_config=c["prompt_encoder_config"],
                    mask_decoder_config=c["mask_decoder_config"],
                )
            )
        else:  # pragma: no cover
            raise ValueError(kind)
    return make_masks_nontrivial_(model).eval(), proc


HF_TINY = {
    "hf:uadbench-test/sam-tiny": "sam",
    "hf:uadbench-test/sam-hq-tiny": "sam_hq",
    "hf:uadbench-test/sam2-tiny": "sam2",
    "hf:uadbench-test/edgetam-tiny": "edgetam",
    "hf:uadbench-test/sam3-tracker-tiny": "sam3_tracker",
}


# ---------------------------------------------------------------------- the generic recipe
@dataclasses.dataclass
class Prepared:
    """A victim ready to load from disk, and the same weights in memory."""

    cls: type  # class to instantiate (the registered one, or its small-architecture twin)
    config: Any
    in_memory: Any  # a victim of the same class whose build() returns the in-memory model
    where_prefix: Path  # the weights must be found under here


def prepare(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Prepared | None:
    """Small weights for registered victim ``name`` written where a user's would be found
    (``$UADBENCH_CHECKPOINTS`` or the HF cache), or None if this recipe cannot make them."""
    ckpt_dir, hf_cache = root / "checkpoints", root / "hf-hub"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    hf_cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(ckpt_dir))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    cls = VICTIMS.get(name)
    if name in HF_TINY:
        model, proc = hf_tiny(HF_TINY[name])
        repo_id = name.split(":", 1)[1]

        def save(d: Path) -> None:
            model.save_pretrained(d)
            proc.save_pretrained(d)

        write_hf_snapshot(hf_cache, repo_id, save)
        config = cls.Config(model_id=repo_id)

        class InMem(cls):
            def build(self):
                super().build()  # processor and family from disk
                return copy.deepcopy(model)

        return Prepared(cls, config, InMem(config), hf_cache)
    if tiny_arch_for(cls) is not None:
        twin = tiny_twin(cls)
        model = random_model(twin)
        if getattr(cls, "hf_repo", None) and "hq" in name and name.endswith("-b"):
            # one official-file victim is found in the HF cache instead of the checkpoint dir
            repo, where = cls.hf_repo, hf_cache
            write_hf_snapshot(
                hf_cache, repo, lambda d: torch.save(model.state_dict(), d / cls.filename)
            )
        else:
            torch.save(model.state_dict(), ckpt_dir / cls.filename)
            where = ckpt_dir
        in_mem = type("InMem", (twin,), {"build": lambda self: copy.deepcopy(model)})
        return Prepared(twin, twin.Config(), in_mem(), where)
    if name.startswith("fastsam"):
        pytest.importorskip("ultralytics", reason="FastSAM needs the optional ultralytics package")
        model = tiny_fastsam_model()
        save_ultralytics_checkpoint(model, ckpt_dir / cls.filename)
        ref = copy.deepcopy(model).half().float()  # the file holds fp16 weights
        in_mem = type("InMem", (cls,), {"build": lambda self: copy.deepcopy(ref)})
        return Prepared(cls, cls.Config(), in_mem(), ckpt_dir)
    if cls.weights_status(cls.Config()).found:  # built in code / shipped with the package
        return Prepared(cls, cls.Config(), cls(cls.Config()), Path("/"))
    return None


def seven_prompts() -> PromptSet:
    """Four points and three boxes spread over a 96×128 image."""
    return PromptSet.from_lists(
        points=[(30.0, 40.0), (95.0, 50.0), (10.0, 80.0), (120.0, 5.0)],
        boxes=[(8.0, 18.0, 52.0, 62.0), (73.0, 28.0, 117.0, 72.0), (0.0, 0.0, 127.0, 95.0)],
    )


def assert_mask_logits_in_prompt_batches(victim: Any) -> None:
    """``victim``'s differentiable ``mask_logits`` must call the mask decoder with at most
    ``prompt_batch`` prompts at a time and give the same logits and input gradients as one
    call (the victim is rebuilt with prompt_batch 3 and 64 around the same model)."""
    prompts = seven_prompts()
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 96, 128)
    model = victim.model
    out = {}
    for batch in (3, 64):
        victim = type(victim)(dataclasses.replace(victim.config, prompt_batch=batch))
        victim.use_model(model)
        decoder = model.mask_decoder if hasattr(model, "mask_decoder") else model.sam.mask_decoder
        sizes: list[int] = []
        hook = decoder.register_forward_pre_hook(
            lambda m, a, kw, sizes=sizes: sizes.append(
                int(kw["sparse_prompt_embeddings"].shape[0])
            ),
            with_kwargs=True,
        )
        x = x0.clone().requires_grad_()
        try:
            logits = victim.mask_logits(x, [prompts, prompts.subset(np.array([1, 5]))])
        finally:
            hook.remove()
        (logits[0].square().mean() + logits[1].mean()).backward()
        out[batch] = (sizes, [t.detach() for t in logits], x.grad)
    assert out[3][0] == [3, 3, 1, 2] and out[64][0] == [7, 2]
    for a, b in zip(out[3][1], out[64][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    scale = float(out[64][2].abs().max())
    assert scale > 0
    torch.testing.assert_close(out[3][2], out[64][2], atol=1e-4 * scale, rtol=1e-3)
