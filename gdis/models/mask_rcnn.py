"""torchvision's Mask R-CNN behind the gdis architecture interface.

Two backbones: ``tiny``, a small group-normalised CNN with an FPN that trains in minutes on
a CPU (for the built-in dataset and tests), and ``resnet50_fpn``, the standard one (its batch norm
and frozen stages: ``model.norm``, ``model.frozen_stages``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, box_iou

from gdis.data import mask_boxes
from gdis.models.weights import load_backbone_state, resolve_torchvision_weights

TINY_WIDTHS = (32, 64, 96, 128)
TINY_FPN_CHANNELS = 64


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBody(nn.Module):
    """Four stages at strides 4, 8, 16 and 32, each a strided conv followed by a plain conv."""

    def __init__(self, widths: tuple[int, ...] = TINY_WIDTHS) -> None:
        super().__init__()
        self.stem = _conv(3, widths[0] // 2, stride=2)
        stages = []
        in_channels = widths[0] // 2
        for width in widths:
            stages.append(nn.Sequential(_conv(in_channels, width, stride=2), _conv(width, width, stride=1)))
            in_channels = width
        self.stage1, self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))


def build_tiny(num_classes: int, model_config: dict) -> MaskRCNN:
    body = TinyBody()
    backbone = BackboneWithFPN(
        body,
        return_layers={"stage1": "0", "stage2": "1", "stage3": "2", "stage4": "3"},
        in_channels_list=list(TINY_WIDTHS),
        out_channels=TINY_FPN_CHANNELS,
    )
    anchors = AnchorGenerator(sizes=((12,), (24,), (48,), (96,), (192,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    channels = TINY_FPN_CHANNELS
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=tuple(model_config["min_size"]),
        max_size=model_config["max_size"],
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        # One bilinear sample per bin: ROI-align's CPU backward is the hot spot of a tiny model.
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=1),
        box_head=TwoMLPHead(channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=64,
        box_detections_per_img=model_config["detections_per_image"],
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=1),
        mask_head=MaskRCNNHeads(channels, [channels, channels], 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
    )


def build_resnet50_fpn(num_classes: int, model_config: dict) -> MaskRCNN:
    """torchvision's Mask R-CNN ResNet-50 FPN, built as its pre-trained path does when backbone weights will load.

    That is ``resnet50(norm_layer=FrozenBatchNorm2d)`` and ``_resnet_fpn_extractor`` with
    ``trainable_backbone_layers=3`` (stem and layer1 frozen); from scratch, batch norm and every layer
    trains (``model.norm`` and ``model.frozen_stages`` override both, see ``backbones.resnet50_body``).
    """
    from gdis.models.backbones import RESNET_FREEZE_ORDER, resnet50_body, resnet_frozen_stages  # imports this module

    body = resnet50_body(model_config)  # weights load into it later (load_backbone_weights)
    trainable_layers = len(RESNET_FREEZE_ORDER) - resnet_frozen_stages(model_config)
    return MaskRCNN(
        _resnet_fpn_extractor(body, trainable_layers),
        num_classes=num_classes,
        min_size=tuple(model_config["min_size"]),
        max_size=model_config["max_size"],
        box_detections_per_img=model_config["detections_per_image"],
    )


BUILDERS = {"tiny": build_tiny, "resnet50_fpn": build_resnet50_fpn}
IMAGENET_WEIGHTS = {"resnet50_fpn": ResNet50_Weights.IMAGENET1K_V1}
# Each loss term's kind (train.unlabeled_loss_weights keys).
LOSS_KINDS = {"loss_classifier": "class", "loss_box_reg": "box", "loss_mask": "mask", "loss_objectness": "rpn",
              "loss_rpn_box_reg": "rpn"}


def ignore_background(labels: torch.Tensor, boxes: torch.Tensor, ignore_boxes: torch.Tensor | None, iou: float) -> None:
    """Marks -1 (sampled as neither object nor background) the background ``labels`` (0) of ``boxes`` that
    overlap one of ``ignore_boxes`` at IoU >= ``iou``; in place."""
    if ignore_boxes is None or not len(ignore_boxes) or not len(boxes):
        return
    overlapping = box_iou(boxes, ignore_boxes.to(boxes.dtype)).amax(1) >= iou
    labels[(labels == 0) & overlapping] = -1


class IgnoringRPN(RegionProposalNetwork):
    """torchvision's RPN, whose anchors overlapping a target's ``ignore_boxes`` at or above the background
    threshold (0.3) are left out of the sampled objectness loss, as the anchors between its two thresholds are."""

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_boxes = super().assign_targets_to_anchors(anchors, targets)
        for labels_in_image, anchors_in_image, target in zip(labels, anchors, targets):
            ignore_background(labels_in_image, anchors_in_image, target.get("ignore_boxes"),
                              self.proposal_matcher.low_threshold)
        return labels, matched_boxes


class IgnoringRoIHeads(RoIHeads):
    """torchvision's ROI heads, whose background proposals overlapping a target's ``ignore_boxes`` (IoU >= 0.5,
    where a proposal stops being background) are left out of the sampled classification loss."""

    _ignore_boxes: list | None = None

    def select_training_samples(self, proposals, targets):
        self._ignore_boxes = [target.get("ignore_boxes") for target in targets]
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._ignore_boxes = None

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for labels_in_image, proposals_in_image, ignore in zip(labels, proposals, self._ignore_boxes or []):
            ignore_background(labels_in_image, proposals_in_image, ignore, self.proposal_matcher.low_threshold)
        return matched_idxs, labels


class FloatMaskTransform(GeneralizedRCNNTransform):
    """torchvision's resize, batching and post-processing, keeping float target masks (soft pseudo-labels) as
    floats, and pasting predicted masks as ``model.mask_paste`` says.

    torchvision resizes target masks with nearest interpolation and casts them to uint8, which would
    floor probabilities to 0. Float masks are resized bilinearly instead and stay in [0, 1]; the mask
    loss (roi_align of the targets, then binary cross-entropy) takes float targets as they are.
    Integer masks go through torchvision's own path unchanged.
    """

    mask_paste = "torchvision"

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform, mask_paste: str = "torchvision") -> FloatMaskTransform:
        made = cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                   size_divisible=transform.size_divisible, fixed_size=transform.fixed_size,
                   _skip_resize=transform._skip_resize)
        made.mask_paste = mask_paste
        return made

    def postprocess(self, result: list[dict], image_shapes, original_image_sizes) -> list[dict]:
        """Boxes back to the original image size; masks pasted into them (``paste_masks`` when 'aligned')."""
        if self.training or self.mask_paste == "torchvision":
            return super().postprocess(result, image_shapes, original_image_sizes)
        for prediction, image_shape, original_size in zip(result, image_shapes, original_image_sizes):
            prediction["boxes"] = resize_boxes(prediction["boxes"], image_shape, original_size)
            if "masks" in prediction:
                prediction["masks"] = paste_masks(prediction["masks"], prediction["boxes"], tuple(original_size))
        return result

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if target is None:
            return super().resize(image, target)
        original_size = tuple(image.shape[-2:])
        # the forward resizes a copy of each target dict: popping leaves the caller's intact
        ignore_boxes = target.pop("ignore_boxes", None)
        float_masks = target.pop("masks") if "masks" in target and target["masks"].is_floating_point() else None
        image, target = super().resize(image, target)
        if float_masks is not None:
            target["masks"] = resize_float_masks(float_masks, tuple(image.shape[-2:]))
        if ignore_boxes is not None:
            target["ignore_boxes"] = resize_boxes(ignore_boxes, original_size, tuple(image.shape[-2:]))
        return image, target


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, M, M) mask probabilities pasted into their xyxy ``boxes`` on an image of ``image_size``: (N, 1, H, W).

    The inverse of how training projects a target mask onto a box (torchvision's project_masks_on_boxes:
    roi_align with aligned=False, so cell i of a box [x0, x1) holds the target at image coordinate
    x0 + (i + 0.5) (x1 - x0) / M, pixel j's value lying at coordinate j). Each pixel whose centre lies in the
    box reads the mask at its coordinate, bilinearly, the border cells extended by half a cell; pixels outside
    the box are 0. Projecting a mask and pasting it back gives the same mask (tests/test_recipe_knobs.py).
    """
    height, width = image_size
    if not len(masks):
        return masks.new_zeros((0, 1, height, width))
    boxes = boxes.to(masks.dtype)
    x0, y0, x1, y1 = (boxes[:, k, None] for k in range(4))
    xs = torch.arange(width, dtype=masks.dtype, device=masks.device)[None]
    ys = torch.arange(height, dtype=masks.dtype, device=masks.device)[None]
    # grid_sample (align_corners=False) reads cell i at 2 (i + 0.5) / M - 1: pixel j at 2 (j - x0) / (x1 - x0) - 1.
    grid_x = 2 * (xs - x0) / (x1 - x0).clamp(min=1e-6) - 1  # (N, W)
    grid_y = 2 * (ys - y0) / (y1 - y0).clamp(min=1e-6) - 1  # (N, H)
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    pasted = F.grid_sample(masks, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside_x = (xs + 0.5 >= x0) & (xs + 0.5 <= x1)
    inside_y = (ys + 0.5 >= y0) & (ys + 0.5 <= y1)
    return pasted * (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def resize_float_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) float masks resized bilinearly to ``size``, values kept in [0, 1]."""
    if not len(masks):
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


class MaskRCNNSegmenter(nn.Module):
    """Mask R-CNN behind the gdis architecture interface (``gdis.models.interface.Segmenter``)."""

    rejection_reasons = ("score", "area")  # see pseudo_label_decisions
    loss_kinds = LOSS_KINDS

    def __init__(self, num_classes: int, model_config: dict) -> None:
        super().__init__()
        self.backbone_name = model_config["backbone"]
        self.net = BUILDERS[self.backbone_name](num_classes, model_config)
        self.net.transform = FloatMaskTransform.like(self.net.transform, model_config["mask_paste"])
        # The subclasses add methods only (targets' ignore_boxes, train.pseudo_label.ignore_threshold): switching
        # the built instances' classes keeps torchvision's construction of them.
        self.net.rpn.__class__ = IgnoringRPN
        self.net.roi_heads.__class__ = IgnoringRoIHeads
        self.train_sizes = tuple(model_config["min_size"])
        self.test_size = model_config["test_size"]
        self.weights = "random"

    def load_backbone_weights(self, spec: str) -> None:
        """Initialise the backbone body from 'imagenet' (torchvision cache) or a state-dict file."""
        if spec == "imagenet":
            if self.backbone_name not in IMAGENET_WEIGHTS:
                raise ValueError(f"model.backbone_weights: no ImageNet weights exist for backbone '{self.backbone_name}'")
            path = resolve_torchvision_weights(IMAGENET_WEIGHTS[self.backbone_name])
        else:
            path = spec
        load_backbone_state(self.net.backbone.body, path)
        self.weights = spec

    def losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.net.train()
        self.net.transform.min_size = self.train_sizes
        return self.net(images, targets)

    def grouped_losses(self, groups: list[tuple[list[torch.Tensor], list[dict]]]) -> list[dict[str, torch.Tensor]]:
        """``losses`` of each (images, targets) group, sharing one backbone + FPN forward when their batches align.

        Each group is resized and padded on its own and its RPN and ROI heads run on its own images, so
        its losses are those of ``losses`` (averaged over its own samples). When all groups pad to the
        same size, their images go through the backbone as one batch; otherwise group by group.
        """
        self.net.train()
        self.net.transform.min_size = self.train_sizes
        batches = [self.net.transform(images, targets) for images, targets in groups]
        tensors = [batch.tensors for batch, _ in batches]
        if all(tensor.shape[1:] == tensors[0].shape[1:] for tensor in tensors):
            shared = self.net.backbone(torch.cat(tensors))
            sizes = [len(tensor) for tensor in tensors]
            split = {name: feature.split(sizes) for name, feature in shared.items()}
            features = [OrderedDict((name, split[name][index]) for name in shared) for index in range(len(groups))]
        else:
            features = [self.net.backbone(tensor) for tensor in tensors]
        losses = []
        for (batch, targets), group_features in zip(batches, features):
            proposals, rpn_losses = self.net.rpn(batch, group_features, targets)
            _, roi_losses = self.net.roi_heads(group_features, proposals, batch.image_sizes, targets)
            losses.append({**roi_losses, **rpn_losses})
        return losses

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor], score_threshold: float | None = None,
                short_side: int | None = None) -> list[dict]:
        """Per image: boxes (xyxy), labels (1..K), scores, masks as (N, H, W) probabilities.

        ``score_threshold`` drops detections scoring at or below it before masks are computed
        (pseudo-labelling needs no others), which saves most of the mask head's work. The images are
        resized to a short side of ``short_side`` (None: model.test_size).
        """
        self.net.eval()
        self.net.transform.min_size = (short_side or self.test_size,)
        default_threshold = self.net.roi_heads.score_thresh
        if score_threshold is not None:
            self.net.roi_heads.score_thresh = max(score_threshold, default_threshold)
        try:
            outputs = self.net(images)
        finally:
            self.net.roi_heads.score_thresh = default_threshold
        for output in outputs:
            output["masks"] = output["masks"][:, 0]
        return outputs

    def backbone_parameters(self):
        return self.net.backbone.body.parameters()

    def pseudo_labels(self, images: list[torch.Tensor], thresholds: dict, short_side: int | None = None) -> list[dict]:
        """Targets for the student from this (teacher) network's detections on ``images`` (train.pseudo_label keys)."""
        score, mask, area = thresholds["score_threshold"], thresholds["mask_threshold"], thresholds["min_area"]
        mask_target = thresholds.get("mask_target", "binary")  # gdis.config checks it against ARCHITECTURES
        ignore = thresholds.get("ignore_threshold")
        predictions = self.predict(images, score_threshold=score if ignore is None else ignore, short_side=short_side)
        return [filter_pseudo_labels(p, score, mask, area, soft=mask_target == "soft", ignore_threshold=ignore)
                for p in predictions]

    def explain_pseudo_labels(self, images: list[torch.Tensor], thresholds: dict) -> list[dict]:
        """Every detection of ``predict`` with its pseudo-label decision (``pseudo_label_decisions``)."""
        explained = []
        for prediction in self.predict(images):
            decisions = pseudo_label_decisions(prediction, thresholds["score_threshold"],
                                               thresholds["mask_threshold"], thresholds["min_area"])
            explained.append({**prediction, "decisions": decisions})
        return explained


def filter_pseudo_labels(prediction: dict, score_threshold: float, mask_threshold: float, min_area: int,
                         soft: bool = False, ignore_threshold: float | None = None) -> dict:
    """Training targets from one image's detections: confident, binarised, large enough.

    Keeps detections with score > ``score_threshold``; the mask is probability > ``mask_threshold``;
    masks under ``min_area`` pixels are dropped; boxes are re-derived from the kept masks. With ``soft``
    the kept masks are the probabilities themselves (float), the rest unchanged. With ``ignore_threshold``,
    the boxes of the detections scoring above it but not above ``score_threshold`` are ``ignore_boxes``.
    """
    keep = prediction["scores"] > score_threshold
    probabilities = prediction["masks"][keep]
    binary = probabilities > mask_threshold
    labels = prediction["labels"][keep]
    large = binary.flatten(1).sum(1) >= max(min_area, 1)
    binary, labels, probabilities = binary[large], labels[large], probabilities[large]
    masks = probabilities.float() if soft else binary.to(torch.uint8)
    targets = {"boxes": mask_boxes(binary), "labels": labels, "masks": masks}
    if ignore_threshold is not None:
        uncertain = (prediction["scores"] > ignore_threshold) & ~keep
        targets["ignore_boxes"] = prediction["boxes"][uncertain]
    return targets



def pseudo_label_decisions(prediction: dict, score_threshold: float, mask_threshold: float, min_area: int) -> list[str]:
    """Per detection, what ``filter_pseudo_labels`` does with it: 'kept', or rejected by 'score' or by 'area'.

    The score test first, then the area of the mask binarised at ``mask_threshold``.
    """
    areas = (prediction["masks"] > mask_threshold).flatten(1).sum(1)
    decisions = []
    for score, area in zip(prediction["scores"].tolist(), areas.tolist()):
        if not score > score_threshold:
            decisions.append("score")
        elif area < max(min_area, 1):
            decisions.append("area")
        else:
            decisions.append("kept")
    return decisions
