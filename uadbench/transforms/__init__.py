"""Transform plugins: what happens to an image between the attacker and the victim (a JPEG
upload, a resize, a cheap input defence). ``TRANSFORMS`` maps ids to Transform subclasses
(lazily imported). Third-party transforms register through the entry-point group
``uadbench.transforms``."""

from ..registry import Registry

TRANSFORMS: Registry = Registry(
    "transform", "uadbench.transforms.base:Transform", "uadbench.transforms"
)

TRANSFORMS.register(
    "identity",
    "uadbench.transforms.base:Identity",
    aliases=("none",),
    summary="the image as it is (the default evaluation)",
)
for _name, _cls, _summary in (
    ("jpeg", "JPEG", "JPEG encode/decode at quality q (Pillow)"),
    ("webp", "WebP", "lossy WebP encode/decode at quality q (Pillow)"),
    ("resize", "Resize", "down-sample by scale and back up (bilinear, antialiased)"),
    ("blur", "Blur", "Gaussian blur of standard deviation sigma (torchvision)"),
    ("median", "Median", "k x k median filter (Pillow)"),
    ("bitdepth", "BitDepth", "keep 2^bits levels per channel (feature squeezing)"),
    (
        "random-resize-pad",
        "RandomResizePad",
        "random shrink pasted at a random offset (Xie et al. 2018), seeded",
    ),
):
    TRANSFORMS.register(_name, f"uadbench.transforms.image:{_cls}", summary=_summary)
