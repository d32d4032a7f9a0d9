"""Architectures behind one interface: ``losses(images, targets)``, ``predict(images)``,
``pseudo_labels(images, thresholds)`` and ``backbone_parameters()``."""

from __future__ import annotations

import logging

from gdis.models.mask2former import Mask2FormerSegmenter
from gdis.models.mask_rcnn import MaskRCNNSegmenter

log = logging.getLogger(__name__)
ARCHITECTURES = {"mask_rcnn": MaskRCNNSegmenter, "mask2former": Mask2FormerSegmenter}


def build_model(model_config: dict, num_categories: int, load_weights: bool = True):
    """A fresh network for ``num_categories`` classes, with pre-trained backbone weights when configured."""
    model = ARCHITECTURES[model_config["arch"]](num_categories + 1, model_config)
    spec = model_config["backbone_weights"]
    if load_weights and spec:
        model.load_backbone_weights(spec)
        log.info("backbone initialised from %s", spec)
    elif load_weights:
        log.info("backbone randomly initialised (model.backbone_weights is null)")
    return model
