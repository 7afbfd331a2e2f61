"""The tiny zoo: small promptable segmenters of different architectures, trained by the
project on synthetic scenes (``tools/zoo/`` of the source tree, ``make zoo``; see
docs/zoo.md) and shipped as safetensors.

Every zoo victim predicts through the same interface as the big models (one bool mask
per prompt; all prompts of an image in one decoder call) and loads its weights from
``uadbench/zoo/<name>.safetensors`` (or ``checkpoint=PATH``). Shared by all of them: SAM's
preprocessing (longest side resized, normalised, zero-padded), SAM-style prompt tokens,
and in addition a *dense prompt map* per prompt (the box's coverage or a Gaussian bump at
the point, :func:`prompt_maps`) fed through the mask-prompt convolutions into the
decoder — it lets such small models learn where the prompt is within a CPU budget.

- ``zoo-vit-sam``: the ``segment_anything`` architecture at toy size — ViT encoder with a
  convolutional stem (stride 8 at 256²: 32×32 tokens, windowed + global attention), SAM
  prompt encoder and two-way-transformer mask decoder. The default surrogate.
- ``zoo-hq-sam``: zoo-vit-sam with HQ-SAM's ``MaskDecoderHQ`` (an extra HQ output token
  fusing an early ViT block with the decoder features); as in HQ-SAM, only the additions
  are trained, on top of the frozen zoo-vit-sam (so it shares the surrogate's encoder).
- ``zoo-tinyvit-sam``: MobileSAM-style hierarchical TinyViT encoder (conv stem, MBConv
  stage, windowed attention stage; ``segment_anything_hq``'s implementation) at 256²
  with the SAM decoder.
- ``zoo-hf-sam``: a Hugging Face ``transformers`` ``SamModel`` from a small
  ``SamConfig`` (plain patch-8 ViT at 256²).

All four see 256² inputs as a 32×32 token grid, so masks come from a 128×128 grid (the
first zoo's 16×16 grid lost most of its mIoU at object outlines).

The numbers these models produce describe these toys, not SAM. See ``<name>.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingCheckpointError, UadbenchError
from ..eval.prompts import PromptSet
from ..victims.base import VictimConfig
from ..victims.checkpoints import load_state_dict_file
from ..victims.locate import ZOO_DIR, WeightsStatus, find_checkpoint, shipped_weights
from ..victims.segment_anything import SamArch, SamFamilyVictim, build_sam

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """First 16 hex digits of a file's SHA-256 (cached per path, size and mtime)."""
    from ..victims.download import hash_file

    return hash_file(Path(path))[1][:16]


def prompt_maps(
    prompts: PromptSet, scale: torch.Tensor, img_size: int, map_size: int, device, dtype
) -> torch.Tensor:
    """Dense prompt maps (P, 1, M, M) over the model input (``img_size``² pixels, M =
    ``map_size``): a box is its coverage fraction of each map cell (1 inside, 0 outside),
    a point a Gaussian bump of σ = 2 cells (+1 positive, −1 negative label). ``scale``
    (2,) maps image XY to model input XY.
    """
    cell = img_size / map_size
    c = (torch.arange(map_size, device=device, dtype=torch.float32) + 0.5) * cell  # centres
    coords = torch.as_tensor(prompts.coords, device=device, dtype=torch.float32)
    out = torch.zeros(len(prompts), 1, map_size, map_size, device=device, dtype=torch.float32)
    pidx, bidx = np.flatnonzero(prompts.is_point), np.flatnonzero(prompts.is_box)
    if len(pidx):
        pts = coords[pidx, :2] * scale + 0.5  # pixel centres
        sign = torch.as_tensor(
            np.where(prompts.labels[pidx] > 0, 1.0, -1.0), device=device, dtype=torch.float32
        )
        gx = torch.exp(-((c[None] - pts[:, :1]) ** 2) / (2 * (2 * cell) ** 2))  # (n, M)
        gy = torch.exp(-((c[None] - pts[:, 1:]) ** 2) / (2 * (2 * cell) ** 2))
        out[pidx, 0] = sign[:, None, None] * gy[:, :, None] * gx[:, None, :]
    if len(bidx):
        b = coords[bidx] * scale.repeat(2)
        b[:, 2:] += 1.0  # inclusive pixel indices → exclusive edges

        def cover(lo, hi):  # (n, M) overlap fraction of [lo, hi] with each cell
            left = torch.maximum(lo[:, None], c[None] - cell / 2)
            right = torch.minimum(hi[:, None], c[None] + cell / 2)
            return (right - left).clamp(min=0) / cell

        out[bidx, 0] = cover(b[:, 1], b[:, 3])[:, :, None] * cover(b[:, 0], b[:, 2])[:, None, :]
    return out.to(dtype)


class ConvStem(nn.Module):
    """A convolutional patch embedding: log2(patch) stride-2 3×3 convolutions (channels
    doubling from 16, GELU between) ending in ``embed_dim`` channels; replaces the single
    patch×patch convolution of a ViT (faster to train from scratch)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        n = int(round(np.log2(patch_size)))
        if 2**n != patch_size:
            raise ValueError(f"ConvStem needs a power-of-two patch size, got {patch_size}")
        layers: list[nn.Module] = []
        cin = 3
        for i in range(n):
            cout = embed_dim if i == n - 1 else 16 * 2**i
            layers.append(nn.Conv2d(cin, cout, 3, stride=2, padding=1))
            if i < n - 1:
                layers.append(nn.GELU())
            cin = cout
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def decoder_kwargs(arch: SamArch) -> dict[str, Any]:
    """Keyword arguments of a SAM-style mask decoder for ``arch`` (3 multimask outputs, a
    two-way transformer of ``arch.decoder_depth`` layers), the transformer built now."""
    from segment_anything.modeling import TwoWayTransformer

    return {
        "num_multimask_outputs": 3,
        "transformer": TwoWayTransformer(
            depth=arch.decoder_depth,
            embedding_dim=arch.prompt_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        "transformer_dim": arch.prompt_dim,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": arch.iou_head_hidden_dim,
    }


def build_zoo_sam(arch: SamArch) -> nn.Module:
    """``build_sam(arch)`` with a :class:`ConvStem` as the ViT's patch projection."""
    model = build_sam(arch)
    model.image_encoder.patch_embed.proj = ConvStem(arch.patch_size, arch.embed_dim)
    return model


@dataclasses.dataclass(frozen=True)
class ZooConfig(VictimConfig):
    """``checkpoint``: weights file to use instead of the shipped one."""


class ZooVictim(SamFamilyVictim):
    """Base of the zoo victims: shipped safetensors weights, SAM-style pre/post-processing.

    A subclass sets ``name`` and implements :meth:`new_model` (the architecture with
    random weights; the caller seeds). Segment-anything-based ones inherit prediction
    and the surrogate path from :class:`SamFamilyVictim`.
    """

    Config = ZooConfig
    is_surrogate = True

    def _encode_prompts(self, prompts: PromptSet, hw: tuple[int, int], input_hw: tuple[int, int]):
        """Sparse tokens as in SAM, plus a dense prompt map per prompt (:func:`prompt_maps`)
        through SAM's mask-prompt downscaling convolutions, so the decoder sees where the
        prompt is at every image location (the zoo models learn much faster that way)."""
        sparse, _ = super()._encode_prompts(prompts, hw, input_hw)
        pe = self.model.prompt_encoder
        scale = torch.tensor([input_hw[1] / hw[1], input_hw[0] / hw[0]], device=self.device)
        size = 4 * pe.image_embedding_size[0]
        maps = prompt_maps(prompts, scale, self.img_size, size, self.device, self.dtype)
        return sparse, pe.mask_downscaling(maps)

    @classmethod
    def new_model(cls) -> nn.Module:
        """The architecture with freshly initialised (random) weights."""
        raise NotImplementedError

    @classmethod
    def from_sam_keys(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A segment-anything state_dict renamed for this model's layout (used to start a
        student from a teacher's decoder). Default: the same names."""
        return sd

    @classmethod
    def weights_status(cls, config: Any) -> WeightsStatus:
        explicit = getattr(config, "checkpoint", None)
        if explicit:
            return find_checkpoint(cls.name, explicit, ())
        path = shipped_weights(cls.name)
        if path.is_file():
            return WeightsStatus(True, str(path))
        return WeightsStatus(False, "", str(path))

    @classmethod
    def weights_digest(cls, config: Any) -> str | None:
        """SHA-256 (first 16 hex digits) of the weights file (a few MB), None if missing."""
        status = cls.weights_status(config)
        if not status.found:
            return None
        p = Path(status.where)
        st = p.stat()
        return _file_sha256(str(p), st.st_size, st.st_mtime_ns)

    def build(self) -> nn.Module:
        status = self.weights_status(self.config)
        hint = (
            f"rebuild it from a source checkout with `python -m tools.zoo train {self.name} "
            f"--out {ZOO_DIR}` (docs/zoo.md)"
        )
        if not status.found:
            how = (
                f"Zoo weights ship with uadbench; {hint} (zoo-vit-sam about 2.5 h on two CPU "
                "cores, the others distilled from it in 50-80 min each on one)."
            )
            raise MissingCheckpointError(self.name, [status.detail] if status.detail else [], how)
        model = self.new_model()
        try:
            load_state_dict_file(model, status.where, self.name)
        except UadbenchError as exc:
            raise UadbenchError(f"{exc} — {hint}") from None
        return model

    # ------------------------------------------------------------------ differentiable path
    def _embed_batch(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder outputs for normalised padded inputs (B, 3, S, S): ``emb`` (B, C, s, s)
        plus whatever else the decoder needs."""
        return {"emb": self.model.image_encoder(z)}

    def _logits_for(
        self, state: dict[str, torch.Tensor], i: int, prompts: PromptSet, hw, input_hw
    ) -> torch.Tensor:
        return self._low_res_logits(state["emb"][i : i + 1], prompts, hw, input_hw)

    def forward_train(
        self, x: torch.Tensor, prompts: Sequence[PromptSet]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(image embeddings (B, C, s, s), low-res mask logits per image (P_i, h, w)) for
        float images ``x`` (B, 3, H, W) in [0, 1]; differentiable in ``x`` and the weights."""
        hw = tuple(x.shape[-2:])
        z, input_hw = self._to_model_input(x)
        state = self._embed_batch(z)
        return state["emb"], [
            self._in_prompt_batches(p, lambda q, i=i: self._logits_for(state, i, q, hw, input_hw))
            for i, p in enumerate(prompts)
        ]

    def mask_logits(self, x: torch.Tensor, prompts: Sequence[PromptSet]) -> list[torch.Tensor]:
        return self.forward_train(x, prompts)[1]


# ---------------------------------------------------------------------------- zoo-vit-sam
VIT_ARCH = SamArch(
    embed_dim=128,
    depth=6,
    num_heads=4,
    global_attn=(2, 5),
    img_size=256,
    patch_size=8,
    window_size=8,
    prompt_dim=64,
    decoder_mlp_dim=256,
    decoder_heads=4,
    iou_head_hidden_dim=64,
)


class ZooViTSam(ZooVictim):
    """Toy SAM: ViT (conv stem of stride 8 at 256² → 32×32 tokens, 6 blocks of width 128,
    global attention in blocks 2 and 5) + SAM prompt encoder and decoder (width 64) with
    dense prompt maps. Trained by the project on synthetic scenes. The default surrogate."""

    name = "zoo-vit-sam"
    arch = VIT_ARCH

    @classmethod
    def new_model(cls) -> nn.Module:
        return build_zoo_sam(cls.arch)


# ---------------------------------------------------------------------------- zoo-hq-sam
class ZooHQSam(ZooVictim):
    """Toy HQ-SAM, built on zoo-vit-sam the way HQ-SAM is built on SAM: zoo-vit-sam's image
    encoder, prompt encoder and mask decoder (its weights, frozen in training) +
    ``MaskDecoderHQ``'s additions (HQ output token and MLP; HQ features fuse the first
    global-attention block with the decoder's upscaled embedding); output = SAM mask + HQ
    mask logits (``hq_token_only=False``)."""

    name = "zoo-hq-sam"
    arch = VIT_ARCH  # HQ-SAM keeps SAM's image encoder (and, frozen, its weights)

    @classmethod
    def new_model(cls) -> nn.Module:

        with warnings.catch_warnings():  # the package's __init__ imports timm's deprecated paths
            warnings.simplefilter("ignore")
            from segment_anything_hq.modeling.mask_decoder_hq import MaskDecoderHQ

        a = cls.arch
        model = build_zoo_sam(a)
        model.mask_decoder = MaskDecoderHQ(**decoder_kwargs(a), vit_dim=a.embed_dim)
        return model

    def _encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised padded input (B, 3, S, S) → (embedding (B, C, s, s), the output of
        the first global-attention block (B, s, s, D))."""
        enc = self.model.image_encoder
        x = enc.patch_embed(z)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        interm = None
        first_global = self.arch.global_attn[0]
        for i, blk in enumerate(enc.blocks):
            x = blk(x)
            if i == first_global:
                interm = x
        return enc.neck(x.permute(0, 3, 1, 2)), interm

    def embed(self, image: np.ndarray) -> dict[str, Any]:
        x, input_hw = self._uint8_to_model_input(image)
        emb, interm = self._encode(x)
        return {"emb": emb, "interm": interm, "input_hw": input_hw}

    def _hq_logits(self, emb, interm, prompts: PromptSet, hw, input_hw) -> torch.Tensor:
        sparse, dense = self._encode_prompts(prompts, hw, input_hw)
        low, _iou = self.model.mask_decoder(
            image_embeddings=emb,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            hq_token_only=False,
            interm_embeddings=[interm],
        )
        return low[:, 0]

    def decode(
        self, state: dict[str, Any], prompts: PromptSet, hw: tuple[int, int]
    ) -> torch.Tensor:
        low = self._hq_logits(state["emb"], state["interm"], prompts, hw, state["input_hw"])
        masks = self.model.postprocess_masks(low[:, None].float(), state["input_hw"], hw)
        return masks[:, 0] > self.model.mask_threshold

    def _embed_batch(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, interm = self._encode(z)
        return {"emb": emb, "interm": interm}

    def _logits_for(self, state, i: int, prompts: PromptSet, hw, input_hw) -> torch.Tensor:
        return self._hq_logits(
            state["emb"][i : i + 1], state["interm"][i : i + 1], prompts, hw, input_hw
        )


# ---------------------------------------------------------------------------- zoo-tinyvit-sam
@dataclasses.dataclass(frozen=True)
class TinyViTArch:
    """A TinyViT (stride 4 stem, MBConv stage, attention stages; overall stride 4 doubled
    per stage after the first: 8 for the default two stages) with a SAM neck and decoder."""

    img_size: int = 256
    embed_dims: tuple[int, ...] = (32, 128)
    depths: tuple[int, ...] = (1, 4)
    num_heads: tuple[int, ...] = (1, 4)
    window_sizes: tuple[int, ...] = (8, 32)
    prompt_dim: int = 64
    decoder_mlp_dim: int = 256
    decoder_heads: int = 4
    iou_head_hidden_dim: int = 64

    @property
    def stride(self) -> int:
        """Input pixels per output token: the stem's 4, doubled by every stage but the last."""
        return 4 * 2 ** (len(self.depths) - 1)


def _import_tiny_vit():
    with warnings.catch_warnings():  # timm deprecation notes and registry overwrites on import
        warnings.simplefilter("ignore")
        from segment_anything_hq.modeling.tiny_vit_sam import TinyViT
    return TinyViT


class TinyViTEncoder(nn.Module):
    """TinyViT trunk (``segment_anything_hq``'s implementation, without its 64×64-only
    forward and 256-channel neck) + a SAM-style neck to ``out_chans``.

    Input (B, 3, S, S) normalised; output (B, out_chans, S/stride, S/stride) (stride 16
    for three stages, 8 for two).
    """

    def __init__(self, arch: TinyViTArch):
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d

        TinyViT = _import_tiny_vit()
        trunk = TinyViT(
            img_size=arch.img_size,
            in_chans=3,
            num_classes=0,
            embed_dims=list(arch.embed_dims),
            depths=list(arch.depths),
            num_heads=list(arch.num_heads),
            window_sizes=list(arch.window_sizes),
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
        )
        self.img_size = arch.img_size
        self.patch_embed = trunk.patch_embed
        self.layers = trunk.layers
        c = arch.embed_dims[-1]
        self.neck = nn.Sequential(
            nn.Conv2d(c, arch.prompt_dim, kernel_size=1, bias=False),
            LayerNorm2d(arch.prompt_dim),
            nn.Conv2d(arch.prompt_dim, arch.prompt_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(arch.prompt_dim),
        )
        self.out_hw = arch.img_size // arch.stride

    @property
    def blocks(self) -> list[nn.Module]:
        return [b for layer in self.layers for b in layer.blocks]

    def run(
        self, x: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """Run the trunk; return (neck output or None when stopped early, {tap: block output}).
        With ``taps`` the trunk stops after the deepest tapped block."""
        want = set(int(t) for t in taps)
        stop = max(want) if want else None
        out: dict[int, torch.Tensor] = {}
        x = self.patch_embed(x)
        k = 0
        for layer in self.layers:
            for blk in layer.blocks:
                x = blk(x)
                if k in want:
                    out[k] = x
                if stop is not None and k >= stop:
                    return None, out
                k += 1
            if layer.downsample is not None:
                x = layer.downsample(x)
        b, _, c = x.shape
        x = x.view(b, self.out_hw, self.out_hw, c).permute(0, 3, 1, 2)
        return self.neck(x), out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


class ZooTinyViTSam(ZooVictim):
    """Toy MobileSAM: TinyViT encoder (an MBConv stage of width 32, then 4 attention blocks
    of width 128 over all 32×32 tokens — one window, as the teacher's global blocks; input
    256², stride 8) + SAM prompt encoder and decoder (width 64)."""

    name = "zoo-tinyvit-sam"
    tiny_arch = TinyViTArch()

    @classmethod
    def new_model(cls) -> nn.Module:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        a = cls.tiny_arch
        emb = a.img_size // a.stride
        return Sam(
            image_encoder=TinyViTEncoder(a),
            prompt_encoder=PromptEncoder(
                embed_dim=a.prompt_dim,
                image_embedding_size=(emb, emb),
                input_image_size=(a.img_size, a.img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2,
                    embedding_dim=a.prompt_dim,
                    mlp_dim=a.decoder_mlp_dim,
                    num_heads=a.decoder_heads,
                ),
                transformer_dim=a.prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=a.iou_head_hidden_dim,
            ),
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )

    @property
    def model(self) -> nn.Module:
        fresh = self._model is None
        m = SamFamilyVictim.model.fget(self)
        if fresh:
            # TinyViT attention caches its bias table when switched to eval mode; refresh
            # it after the move to the victim's device and dtype.
            m.eval()
        return m

    @property
    def num_blocks(self) -> int:
        return len(self.model.image_encoder.blocks)

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Block outputs of the TinyViT trunk at ``taps`` (0-based over all stages'
        blocks): (B, C, H, W) in the MBConv stage, (B, L, C) tokens in attention stages."""
        z, _ = self._to_model_input(x)
        _, out = self.model.image_encoder.run(z, taps)
        return [out[int(t)] for t in taps]


# ---------------------------------------------------------------------------- zoo-hf-sam
@dataclasses.dataclass(frozen=True)
class HFSamArch:
    """A small ``transformers.SamConfig``."""

    img_size: int = 256
    patch_size: int = 8
    hidden_size: int = 112
    depth: int = 6
    num_heads: int = 4
    window_size: int = 8
    global_attn: tuple[int, ...] = (2, 5)
    prompt_dim: int = 64
    decoder_mlp_dim: int = 256
    decoder_heads: int = 4
    iou_head_hidden_dim: int = 64

    def sam_config(self):
        from transformers import (
            SamConfig,
            SamMaskDecoderConfig,
            SamPromptEncoderConfig,
            SamVisionConfig,
        )

        return SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=self.hidden_size,
                output_channels=self.prompt_dim,
                num_hidden_layers=self.depth,
                num_attention_heads=self.num_heads,
                image_size=self.img_size,
                patch_size=self.patch_size,
                window_size=self.window_size,
                global_attn_indexes=list(self.global_attn),
                num_pos_feats=self.prompt_dim // 2,
                initializer_range=0.02,
            ),
            prompt_encoder_config=SamPromptEncoderConfig(
                hidden_size=self.prompt_dim, image_size=self.img_size, patch_size=self.patch_size
            ),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=self.prompt_dim,
                mlp_dim=self.decoder_mlp_dim,
                num_attention_heads=self.decoder_heads,
                iou_head_hidden_dim=self.iou_head_hidden_dim,
            ),
            initializer_range=0.02,
        )


class HFSamContainer(nn.Module):
    """A ``transformers`` ``SamModel`` plus SAM's pixel normalisation and mask post-processing,
    shaped like ``segment_anything``'s ``Sam`` where :class:`SamFamilyVictim` looks."""

    mask_threshold: float = 0.0

    def __init__(self, arch: HFSamArch):
        super().__init__()
        from transformers import SamModel

        self.sam = SamModel(arch.sam_config())
        self.img_size = arch.img_size
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ):
        """Low-res logits (N, 1, h, w) → logits at the original image size (N, 1, H, W)."""
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


class ZooHFSam(ZooVictim):
    """Toy SAM in Hugging Face ``transformers`` (``SamModel`` from a small ``SamConfig``:
    ViT of 6 blocks, width 112, patch 8 at 256² → 32×32 tokens; decoder width 64)."""

    name = "zoo-hf-sam"
    hf_arch = HFSamArch()

    @classmethod
    def new_model(cls) -> nn.Module:
        return HFSamContainer(cls.hf_arch)

    @classmethod
    def from_sam_keys(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from ..victims.convert import rename_sam_to_hf

        return {"sam." + k: v for k, v in rename_sam_to_hf(sd).items()}

    @property
    def img_size(self) -> int:
        return self.model.img_size

    @property
    def num_blocks(self) -> int:
        return len(self.model.sam.vision_encoder.layers)

    def _run_vision(
        self, z: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor | None, dict]:
        enc = self.model.sam.vision_encoder
        want = set(int(t) for t in taps)
        stop = max(want) if want else None
        out: dict[int, torch.Tensor] = {}
        h = enc.patch_embed(z)
        if enc.pos_embed is not None:
            h = h + enc.pos_embed
        for i, layer in enumerate(enc.layers):
            h = layer(h)
            if isinstance(h, tuple):
                h = h[0]
            if i in want:
                out[i] = h
            if stop is not None and i >= stop:
                return None, out
        return enc.neck(h), out

    def embed(self, image: np.ndarray) -> dict[str, Any]:
        x, input_hw = self._uint8_to_model_input(image)
        return {"emb": self._run_vision(x)[0], "input_hw": input_hw}

    def _low_res_logits(self, emb: torch.Tensor, prompts: PromptSet, hw, input_hw) -> torch.Tensor:
        sam = self.model.sam
        pe = sam.prompt_encoder
        scale = torch.tensor(
            [input_hw[1] / hw[1], input_hw[0] / hw[0]], device=self.device, dtype=torch.float32
        )
        coords = torch.as_tensor(prompts.coords, device=self.device, dtype=torch.float32)
        sparse = torch.empty(
            1, len(prompts), 2, pe.hidden_size, device=self.device, dtype=self.dtype
        )
        pidx, bidx = np.flatnonzero(prompts.is_point), np.flatnonzero(prompts.is_box)
        if len(pidx):
            pts = (coords[pidx, :2] * scale)[None, :, None, :].to(self.dtype)
            labels = torch.as_tensor(prompts.labels[pidx], device=self.device)[None, :, None]
            s, _ = pe(input_points=pts, input_labels=labels, input_boxes=None, input_masks=None)
            sparse[:, pidx] = s.to(sparse.dtype)  # autocast may hand back bf16
        if len(bidx):
            boxes = (coords[bidx] * scale.repeat(2))[None].to(self.dtype)
            s, _ = pe(input_points=None, input_labels=None, input_boxes=boxes, input_masks=None)
            sparse[:, bidx] = s.to(sparse.dtype)
        # dense prompt maps through the mask-prompt embedding, as in the other zoo models;
        # the decoder's batch runs over prompts (one prompt each) so each gets its own map
        n = len(prompts)
        maps = prompt_maps(
            prompts, scale, self.img_size, 4 * emb.shape[-1], self.device, self.dtype
        )
        dense = pe.mask_embed(maps)
        image_pe = sam.get_image_wide_positional_embeddings().to(emb.dtype)
        low, _iou = sam.mask_decoder(
            image_embeddings=emb.expand(n, -1, -1, -1),
            image_positional_embeddings=image_pe.expand(n, -1, -1, -1),
            sparse_prompt_embeddings=sparse.transpose(0, 1),
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low[:, 0, 0]

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        z, _ = self._to_model_input(x)
        _, out = self._run_vision(z, taps)
        return [out[int(t)] for t in taps]

    def _embed_batch(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"emb": self._run_vision(z)[0]}


#: zoo name → victim class (the registry in ``uadbench.victims`` points at these).
ZOO: dict[str, type[ZooVictim]] = {
    c.name: c for c in (ZooViTSam, ZooHQSam, ZooTinyViTSam, ZooHFSam)
}
