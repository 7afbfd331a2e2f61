"""The tiny zoo: small promptable segmenters of several architectures, trained by the
project on synthetic scenes so that everything works offline (see :mod:`uadbench.zoo.models`).

``uadbench zoo train NAME`` reproduces a model from its seed; ``uadbench zoo eval NAME``
measures its clean mIoU on held-out synthetic scenes. Each model ships as
``uadbench/zoo/<name>.safetensors`` with a model card ``<name>.md``.
"""

ZOO_NAMES: tuple[str, ...] = ("zoo-vit-sam", "zoo-hq-sam", "zoo-tinyvit-sam", "zoo-hf-sam")
