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
