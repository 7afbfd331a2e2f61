"""Segment Anything (the official ``segment_anything`` package) as victims and surrogates.

``sam-vit-b``, ``sam-vit-l``, ``sam-vit-h`` load the official checkpoints
(``sam_vit_b_01ec64.pth`` …) with ``torch.load(weights_only=True)``.
``seeded-sam-tiny`` is the embedded default: the same architecture at toy size, built
in code with seeded random weights — it exercises every code path offline, and its
numbers mean nothing about SAM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UadbenchError
from ..eval.prompts import PromptSet
from .base import Victim, VictimConfig, WeightsStatus, resized_hw
from .checkpoints import find_checkpoint, load_state_dict_strict, read_state_dict

#: SAM's input normalisation (0–255 scale), shared by every SAM-family model
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class SamArch:
    """Hyperparameters of one SAM size (everything ``_build_sam`` needs)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256


def vit_encoder(encoder_cls: type, arch: SamArch) -> torch.nn.Module:
    """SAM's ViT image encoder of ``arch`` from ``encoder_cls`` (segment_anything's
    ``ImageEncoderViT`` or segment_anything_hq's, which share the signature)."""
    return encoder_cls(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=4,
        out_chans=arch.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=arch.window_size,
        global_attn_indexes=arch.global_attn,
    )


def build_sam(arch: SamArch, image_encoder: torch.nn.Module | None = None) -> torch.nn.Module:
    """A ``segment_anything.modeling.Sam`` of the given size with random weights.

    ``image_encoder`` replaces the ViT (MobileSAM's TinyViT); it must output
    ``arch.prompt_dim`` channels on an ``img_size/16`` grid."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    emb = arch.img_size // getattr(arch, "patch_size", 16)
    if image_encoder is None:
        image_encoder = vit_encoder(ImageEncoderViT, arch)
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_heads,
            ),
            transformer_dim=arch.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


class SamFamilyVictim(Victim):
    """Shared machinery for SAM-style models: ViT encoder with named blocks, prompt
    encoder and mask decoder of ``segment_anything``. Subclasses set ``arch`` and
    weight loading; HQ-SAM and other variants reuse the encoder path."""

    is_surrogate = True
    arch: SamArch

    # ------------------------------------------------------------------ preprocessing
    @property
    def img_size(self) -> int:
        return self.model.image_encoder.img_size

    def _to_model_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Float (B, 3, H, W) in [0, 1] → normalised, resized, padded (B, 3, S, S)."""
        h, w = x.shape[-2:]
        nh, nw = resized_hw(h, w, self.img_size)
        m = self.model
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (x * 255.0 - m.pixel_mean) / m.pixel_std
        x = F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))
        return x.to(self.dtype), (nh, nw)

    def _uint8_to_model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The model's own preprocessing of a uint8 image (resize in uint8 like SamPredictor)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.img_size).apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
        m = self.model
        x = (x - m.pixel_mean) / m.pixel_std
        nh, nw = resized.shape[:2]
        x = F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))
        return x.to(self.dtype), (nh, nw)

    # ------------------------------------------------------------------ prediction
    def _encode_image(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image-level inputs of the mask decoder for model inputs ``z`` (B, 3, S, S):
        ``"emb"`` (B, C, h, w), plus whatever else a variant's decoder reads (tensors with
        the batch first). Variants whose encoder returns more (HQ-SAM, MobileSAM) override it."""
        return {"emb": self.model.image_encoder(z)}

    def embed(self, image: np.ndarray) -> dict[str, Any]:
        x, input_hw = self._uint8_to_model_input(image)
        return {**self._encode_image(x), "input_hw": input_hw}

    def _encode_prompts(self, prompts: PromptSet, hw: tuple[int, int], input_hw: tuple[int, int]):
        """Sparse and dense prompt embeddings for all prompts: points and boxes both give
        two tokens (a point is padded with a not-a-point token), so they share one batch."""
        pe = self.model.prompt_encoder
        scale = torch.tensor(
            [input_hw[1] / hw[1], input_hw[0] / hw[0]], device=self.device, dtype=torch.float32
        )
        coords = torch.as_tensor(prompts.coords, device=self.device, dtype=torch.float32)
        sparse = torch.empty(len(prompts), 2, pe.embed_dim, device=self.device, dtype=self.dtype)
        pidx, bidx = np.flatnonzero(prompts.is_point), np.flatnonzero(prompts.is_box)
        if len(pidx):
            pts = coords[pidx, None, :2] * scale
            labels = torch.as_tensor(prompts.labels[pidx, None], device=self.device)
            s, _ = pe(points=(pts.to(self.dtype), labels), boxes=None, masks=None)
            sparse[pidx] = s
        if len(bidx):
            boxes = coords[bidx] * scale.repeat(2)
            s, _ = pe(points=None, boxes=boxes.to(self.dtype), masks=None)
            sparse[bidx] = s
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            len(prompts), -1, *pe.image_embedding_size
        )
        return sparse, dense

    def _low_res_logits(self, emb: torch.Tensor, prompts: PromptSet, hw, input_hw) -> torch.Tensor:
        sparse, dense = self._encode_prompts(prompts, hw, input_hw)
        low, _iou = self.model.mask_decoder(
            image_embeddings=emb,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low[:, 0]

    def decode(
        self, state: dict[str, Any], prompts: PromptSet, hw: tuple[int, int]
    ) -> torch.Tensor:
        low = self._low_res_logits(state["emb"], prompts, hw, state["input_hw"])
        masks = self.model.postprocess_masks(low[:, None].float(), state["input_hw"], hw)
        return masks[:, 0] > self.model.mask_threshold

    # ------------------------------------------------------------------ surrogate
    @property
    def num_blocks(self) -> int:
        return len(self.model.image_encoder.blocks)

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        enc = self.model.image_encoder
        want = sorted(set(int(t) for t in taps))
        z, _ = self._to_model_input(x)
        z = enc.patch_embed(z)
        if enc.pos_embed is not None:
            z = z + enc.pos_embed
        out: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(enc.blocks[: want[-1] + 1]):
            z = blk(z)
            if i in want:
                out[i] = z
        return [out[int(t)] for t in taps]

    def mask_logits(self, x: torch.Tensor, prompts: Sequence[PromptSet]) -> list[torch.Tensor]:
        hw = tuple(x.shape[-2:])
        z, input_hw = self._to_model_input(x)
        emb = self._encode_image(z)["emb"]
        return [
            self._in_prompt_batches(
                p, lambda q, e=emb[i : i + 1]: self._low_res_logits(e, q, hw, input_hw)
            )
            for i, p in enumerate(prompts)
        ]

    def point_group_logits(
        self, x: torch.Tensor, points: Sequence[np.ndarray]
    ) -> list[torch.Tensor]:
        """Low-resolution mask logits of ONE prompt made of many positive points, per image:
        list of (1, h, w) tensors, differentiable in ``x`` (B, 3, H, W) in [0, 1].

        ``points[i]``: (K, 2) XY pixels of image i. The K points go to the prompt encoder
        together, as ``point_coords`` of shape (1, K, 2) (the reference's Attack-SAM-K),
        through the victim's own decoder path (HQ-SAM and the zoo included). A victim
        whose prompts also carry a dense map per point (the zoo) gets the mean of its
        points' dense embeddings.
        """
        pe = self.model.prompt_encoder
        hw = tuple(x.shape[-2:])
        input_hw = resized_hw(hw[0], hw[1], self.img_size)
        scale = torch.tensor(
            [input_hw[1] / hw[1], input_hw[0] / hw[0]], device=self.device, dtype=torch.float32
        )
        own = self._encode_prompts
        groups = []
        with torch.no_grad():  # the prompt does not depend on the image
            for pts in points:
                ps = PromptSet.from_lists(points=[tuple(p) for p in np.asarray(pts, float)])
                _, dense = own(ps, hw, input_hw)
                xy = torch.as_tensor(np.asarray(pts, np.float32), device=self.device) * scale
                labels = torch.ones(1, len(pts), dtype=torch.int64, device=self.device)
                sparse, _ = pe(points=(xy[None].to(self.dtype), labels), boxes=None, masks=None)
                groups.append((sparse, dense.mean(dim=0, keepdim=True)))
        one = PromptSet.from_lists(points=[(0.0, 0.0)])
        out = []
        for i, (sparse, dense) in enumerate(groups):
            # route the group through the victim's own logits path as a single prompt
            self._encode_prompts = lambda *_a, s=sparse, d=dense: (s, d)
            try:
                out.append(self.mask_logits(x[i : i + 1], [one])[0])
            finally:
                del self._encode_prompts
        return out


# ---------------------------------------------------------------------- official sizes
SAM_B = SamArch(embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11))
SAM_L = SamArch(embed_dim=1024, depth=24, num_heads=16, global_attn=(5, 11, 17, 23))
SAM_H = SamArch(embed_dim=1280, depth=32, num_heads=16, global_attn=(7, 15, 23, 31))


class CheckpointVictim(SamFamilyVictim):
    """A SAM-family victim whose weights are one published checkpoint file.

    Subclasses set ``filename`` (searched in the checkpoint dirs), optionally ``hf_repo``
    (a hub repo holding that file, searched in the local HF cache), ``requires`` (a
    ``(available, message)`` check of an optional package) and ``_build_arch``."""

    filename: str = ""
    url: str = ""
    hf_repo: str | None = None

    @classmethod
    def requires(cls) -> tuple[bool, str]:
        return True, ""

    @classmethod
    def weights_status(cls, config: VictimConfig) -> WeightsStatus:
        ok, why = cls.requires()
        if not ok:
            return WeightsStatus(False, "", why)
        return find_checkpoint(cls.name, config.checkpoint, (cls.filename,), cls.hf_repo)

    def _build_arch(self) -> torch.nn.Module:
        """This victim's architecture with random weights."""
        return build_sam(self.arch)

    def build(self) -> torch.nn.Module:
        ok, why = self.requires()
        if not ok:
            raise UadbenchError(f"victim {self.name!r} {why}")
        path = self.weights_status(self.config).require(self.name)
        sd = read_state_dict(path)  # before building the model: a bad file fails fast
        model = self._build_arch()
        load_state_dict_strict(model, sd, path, self.name)
        return model


class OfficialSam(CheckpointVictim):
    """A SAM loaded from the official segment-anything ``.pth`` checkpoint."""


class SamViTB(OfficialSam):
    """SAM ViT-B (the paper's surrogate). Official checkpoint ``sam_vit_b_01ec64.pth``."""

    name = "sam-vit-b"
    arch = SAM_B
    filename = "sam_vit_b_01ec64.pth"
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


class SamViTL(OfficialSam):
    """SAM ViT-L. Official checkpoint ``sam_vit_l_0b3195.pth``."""

    name = "sam-vit-l"
    arch = SAM_L
    filename = "sam_vit_l_0b3195.pth"
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"


class SamViTH(OfficialSam):
    """SAM ViT-H. Official checkpoint ``sam_vit_h_4b8939.pth``."""

    name = "sam-vit-h"
    arch = SAM_H
    filename = "sam_vit_h_4b8939.pth"
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"


# ---------------------------------------------------------------------- embedded default
TINY = SamArch(
    embed_dim=96,
    depth=8,
    num_heads=3,
    global_attn=(3, 7),
    img_size=256,
    window_size=8,
    prompt_dim=64,
    decoder_mlp_dim=256,
    decoder_heads=2,
    iou_head_hidden_dim=64,
)


@dataclasses.dataclass(frozen=True)
class SeededConfig(VictimConfig):
    """``seed``: the seed of the random weights."""

    seed: int = 0


class SeededSamTiny(SamFamilyVictim):
    """A toy SAM (8 ViT blocks of width 96 at 256², decoder width 64) with seeded random
    weights. Untrained: only for exercising the pipeline offline."""

    name = "seeded-sam-tiny"
    Config = SeededConfig
    arch = TINY
    note = "untrained, seeded random weights"

    def build(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return build_sam(self.arch)
