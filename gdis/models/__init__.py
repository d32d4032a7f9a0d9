"""Architectures behind one interface (``gdis.models.interface.Segmenter``): ``losses(images, targets)``,
``predict(images)``, ``pseudo_labels(images, thresholds)``, ``explain_pseudo_labels(images, thresholds)``,
``backbone_parameters()`` and ``load_backbone_weights(spec)``.

``ARCHITECTURES`` is the one registry of architectures (model.arch) and their backbones
(model.backbone). Its builders are imported on first use, so reading the registry needs no torch.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from gdis.models.interface import Segmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """One model.arch: the module and class that build it, the names of its backbones, the
    train.pseudo_label.mask_target values its ``pseudo_labels`` makes and whether its training can leave
    uncertain detections out of the background (train.pseudo_label.ignore_threshold)."""

    module: str
    segmenter: str
    backbones: tuple[str, ...]
    mask_targets: tuple[str, ...]
    ignores_uncertain: bool = False

    def builder(self) -> type:
        """The segmenter class, called as ``builder()(num_classes, model_config)``."""
        return getattr(importlib.import_module(self.module), self.segmenter)


ARCHITECTURES = {
    # Backbone names: the keys of gdis.models.mask_rcnn.BUILDERS and of gdis.models.backbones.BACKBONES.
    "mask_rcnn": Architecture("gdis.models.mask_rcnn", "MaskRCNNSegmenter", ("tiny", "resnet50_fpn"),
                              mask_targets=("binary", "soft"), ignores_uncertain=True),
    "mask2former": Architecture("gdis.models.mask2former", "Mask2FormerSegmenter",
                                ("tiny", "resnet50", "swin_tiny", "swin_small", "swin_base", "swin_large",
                                 "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14"),
                                mask_targets=("binary", "soft", "coarse_binary")),
}
ARCH_BACKBONES = {name: arch.backbones for name, arch in ARCHITECTURES.items()}


def build_model(model_config: dict, num_categories: int, load_weights: bool = True) -> Segmenter:
    """A fresh network for ``num_categories`` classes, with pre-trained backbone weights when configured."""
    model = ARCHITECTURES[model_config["arch"]].builder()(num_categories + 1, model_config)
    spec = model_config["backbone_weights"]
    if load_weights and spec:
        try:
            model.load_backbone_weights(spec)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"model.backbone_weights: {error}") from None
        log.info("backbone initialised from %s", spec)
    elif load_weights:
        log.info("backbone randomly initialised (model.backbone_weights is null)")
    return model


def __getattr__(name: str):
    """The segmenter classes, imported on first use (``from gdis.models import MaskRCNNSegmenter``)."""
    for arch in ARCHITECTURES.values():
        if arch.segmenter == name:
            return arch.builder()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
