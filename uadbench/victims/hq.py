"""HQ-SAM (Ke et al., "Segment Anything in High Quality", NeurIPS 2023) as victims and surrogates.

``hq-sam-vit-b``, ``hq-sam-vit-l``, ``hq-sam-vit-h`` are SAM's ViT image encoders with
HQ-SAM's mask decoder (an extra HQ output token fed with early and final encoder
features); ``hq-sam-vit-tiny`` (Light HQ-SAM) uses MobileSAM's TinyViT encoder. The
models come from the installed ``segment_anything_hq`` package (extra ``uadbench[hq]``);
the official checkpoints (``sam_hq_vit_b.pth`` …, also in the ``lkeab/hq-sam`` hub repo)
are read with ``torch.load(weights_only=True)`` and loaded strictly.

Prediction follows ``SamHQPredictor.predict(multimask_output=False, hq_token_only=False)``:
the single SAM mask logits plus the HQ mask logits (``hq_token_only=true`` keeps only the
HQ mask). The HQ decoder also reads early encoder features, so this class keeps them in
its per-image state and runs its own decoder call (still one call for all prompts);
preprocessing, batched prompt encoding and the surrogate feature path with early exit
are :class:`SamFamilyVictim`'s.

This module also holds the TinyViT encoder pieces shared with MobileSAM
(:class:`TinyVitArch`, :class:`TinyVitSurrogate`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch

from ..errors import UadbenchError
from ..eval.prompts import PromptSet
from . import locate
from .base import VictimConfig
from .download import WEIGHTS
from .locate import BUILTIN, HQ_INSTALL
from .segment_anything import (
    PIXEL_MEAN,
    PIXEL_STD,
    SAM_B,
    SAM_H,
    SAM_L,
    CheckpointVictim,
    SamArch,
    vit_encoder,
)


def hq_available() -> bool:
    """Whether ``segment_anything_hq`` is installed (checked without importing it)."""
    return locate.package_available("segment_anything_hq")  # one switch for tests


def hq_modeling() -> ModuleType:
    """``segment_anything_hq.modeling``, imported on first use. Its TinyViT module imports
    deprecated timm paths and re-registers timm models; those warnings are silenced."""
    if not hq_available():
        raise UadbenchError(f"HQ-SAM / MobileSAM victims {HQ_INSTALL}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import segment_anything_hq.modeling as modeling
    return modeling


# ---------------------------------------------------------------------- TinyViT (shared)
@dataclasses.dataclass(frozen=True)
class TinyVitArch:
    """A TinyViT image encoder (MobileSAM's) with SAM's prompt encoder and mask decoder.

    TinyViT in ``segment_anything_hq`` works at a fixed 1024² input with a 64×64 output
    grid and a 256-channel neck, so only the widths/depths below vary; the last width must
    be one the implementation keeps at stride 1 (320, 448 or 576).
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # the unused classifier head is part of the official checkpoints
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    img_size: int = 1024
    prompt_dim: int = 256


MOBILE_SAM_TINY_VIT = TinyVitArch()


def build_tiny_vit(arch: TinyVitArch) -> torch.nn.Module:
    """A TinyViT encoder (random weights) returning ``(embedding, [stage-2 features])``."""
    m = hq_modeling()
    return m.TinyViT(
        img_size=arch.img_size,
        in_chans=3,
        num_classes=arch.num_classes,
        embed_dims=list(arch.embed_dims),
        depths=list(arch.depths),
        num_heads=list(arch.num_heads),
        window_sizes=list(arch.window_sizes),
        mlp_ratio=arch.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


class TinyVitSurrogate:
    """Surrogate path for a TinyViT encoder: ``num_blocks`` counts the blocks of all
    stages (MBConv blocks of stage 0, then TinyViT blocks), ``features`` returns block
    outputs (before each stage's patch merging) and stops after the deepest tap."""

    model: Any
    _to_model_input: Any

    @property
    def num_blocks(self) -> int:
        return sum(len(layer.blocks) for layer in self.model.image_encoder.layers)

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Block outputs at ``taps`` for float images (B, 3, H, W) in [0, 1]: stage-0 blocks
        give (B, C, h, w), later ones (B, h·w, C). Differentiable; runs up to ``max(taps)``."""
        enc = self.model.image_encoder
        want = sorted({int(t) for t in taps})
        if not want or want[0] < 0 or want[-1] >= self.num_blocks:
            raise UadbenchError(f"taps {list(taps)} out of range 0..{self.num_blocks - 1}")
        z, _ = self._to_model_input(x)
        z = enc.patch_embed(z)
        out: dict[int, torch.Tensor] = {}
        i = 0
        for layer in enc.layers:
            for blk in layer.blocks:
                z = blk(z)
                if i in want:
                    out[i] = z
                if i == want[-1]:
                    return [out[int(t)] for t in taps]
                i += 1
            if layer.downsample is not None:
                z = layer.downsample(z)
        raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------- builders
def _hq_decoder(m: ModuleType, prompt_dim: int, vit_dim: int, arch: Any) -> torch.nn.Module:
    return m.MaskDecoderHQ(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(
            depth=arch.decoder_depth,
            embedding_dim=prompt_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        transformer_dim=prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
        vit_dim=vit_dim,
    )


def _hq_sam(m: ModuleType, encoder: torch.nn.Module, arch: Any, vit_dim: int) -> torch.nn.Module:
    emb = arch.img_size // 16
    return m.Sam(
        image_encoder=encoder,
        prompt_encoder=m.PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=_hq_decoder(m, arch.prompt_dim, vit_dim, arch),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def build_hq_sam(arch: SamArch) -> torch.nn.Module:
    """An HQ-SAM with a ViT encoder of the given size (``segment_anything_hq``), random weights."""
    m = hq_modeling()
    encoder = vit_encoder(m.ImageEncoderViT, arch)
    return _hq_sam(m, encoder, arch, vit_dim=arch.embed_dim)


def build_hq_sam_tiny(arch: TinyVitArch) -> torch.nn.Module:
    """Light HQ-SAM: TinyViT encoder + HQ decoder (fed the stage-2 TinyViT features)."""
    m = hq_modeling()
    return _hq_sam(m, build_tiny_vit(arch), arch, vit_dim=arch.embed_dims[2])


# ---------------------------------------------------------------------- victims
@dataclasses.dataclass(frozen=True)
class HqConfig(VictimConfig):
    """``hq_token_only``: use only the HQ token's mask (HQ-SAM's default adds the SAM mask)."""

    hq_token_only: bool = False


class HqSamVictim(CheckpointVictim):
    """An HQ-SAM loaded from an official ``sam_hq_*.pth`` checkpoint."""

    Config = HqConfig
    arch: Any = None
    hf_repo: str | None = BUILTIN["hq-sam-vit-b"].hf_repo

    @classmethod
    def requires(cls) -> tuple[bool, str]:
        return hq_available(), HQ_INSTALL

    def _build_arch(self) -> torch.nn.Module:
        """This victim's architecture with random weights."""
        return build_hq_sam(self.arch)

    def _encode_image(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, interm = self.model.image_encoder(z)
        # HQ-SAM feeds the decoder the output of the first global-attention block (ViT)
        # or of stage 1 (TinyViT): (B, h, w, C)
        return {"emb": emb, "interm": interm[0]}

    def _hq_low_res_logits(
        self,
        enc: dict[str, Any],
        prompts: PromptSet,
        hw: tuple[int, int],
        input_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Single-mask low-res logits (P, h, w) for one image's ``enc`` (``emb`` and
        ``interm``), all P prompts in one decoder call."""
        sparse, dense = self._encode_prompts(prompts, hw, input_hw)
        low, _iou = self.model.mask_decoder(
            image_embeddings=enc["emb"],
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            hq_token_only=bool(self.config.hq_token_only),
            interm_embeddings=[enc["interm"]],
        )
        return low[:, 0]

    def decode(
        self, state: dict[str, Any], prompts: PromptSet, hw: tuple[int, int]
    ) -> torch.Tensor:
        low = self._hq_low_res_logits(state, prompts, hw, state["input_hw"])
        masks = self.model.postprocess_masks(low[:, None].float(), state["input_hw"], hw)
        return masks[:, 0] > self.model.mask_threshold

    def mask_logits(self, x: torch.Tensor, prompts: Sequence[PromptSet]) -> list[torch.Tensor]:
        hw = tuple(x.shape[-2:])
        z, input_hw = self._to_model_input(x)
        enc = self._encode_image(z)
        out = []
        for i, p in enumerate(prompts):
            st = {k: v[i : i + 1] for k, v in enc.items()}
            out.append(
                self._in_prompt_batches(
                    p, lambda q, st=st: self._hq_low_res_logits(st, q, hw, input_hw)
                )
            )
        return out


class HqSamViTB(HqSamVictim):
    """HQ-SAM ViT-B. Official checkpoint ``sam_hq_vit_b.pth``."""

    name = "hq-sam-vit-b"
    arch = SAM_B
    filename = WEIGHTS["hq-sam-vit-b"].filename
    url = WEIGHTS["hq-sam-vit-b"].url


class HqSamViTL(HqSamVictim):
    """HQ-SAM ViT-L. Official checkpoint ``sam_hq_vit_l.pth``."""

    name = "hq-sam-vit-l"
    arch = SAM_L
    filename = WEIGHTS["hq-sam-vit-l"].filename
    url = WEIGHTS["hq-sam-vit-l"].url


class HqSamViTH(HqSamVictim):
    """HQ-SAM ViT-H. Official checkpoint ``sam_hq_vit_h.pth``."""

    name = "hq-sam-vit-h"
    arch = SAM_H
    filename = WEIGHTS["hq-sam-vit-h"].filename
    url = WEIGHTS["hq-sam-vit-h"].url


class HqSamViTTiny(TinyVitSurrogate, HqSamVictim):
    """Light HQ-SAM: MobileSAM's TinyViT encoder + HQ decoder. Checkpoint ``sam_hq_vit_tiny.pth``."""

    name = "hq-sam-vit-tiny"
    arch = MOBILE_SAM_TINY_VIT
    filename = WEIGHTS["hq-sam-vit-tiny"].filename
    url = WEIGHTS["hq-sam-vit-tiny"].url

    def _build_arch(self) -> torch.nn.Module:
        return build_hq_sam_tiny(self.arch)
