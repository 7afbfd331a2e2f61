"""The tiny zoo: small promptable segmenters of several architectures, trained by the
project on synthetic scenes so that everything works offline (see :mod:`uadbench.zoo.models`).

``uadbench zoo eval NAME`` measures a model's clean mIoU on held-out synthetic scenes
(:mod:`uadbench.zoo.evaluate`). Each model ships as ``uadbench/zoo/<name>.safetensors``
with a model card ``<name>.md``. Training is not part of the installed package: the
source tree's ``tools/zoo/`` (``make zoo``) reproduces a model from its seed (docs/zoo.md).
"""

ZOO_NAMES: tuple[str, ...] = ("zoo-vit-sam", "zoo-hq-sam", "zoo-tinyvit-sam", "zoo-hf-sam")
