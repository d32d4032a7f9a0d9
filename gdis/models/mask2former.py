"""Mask2Former (Hugging Face transformers, pure PyTorch) behind the gdis architecture interface.

``Mask2FormerForUniversalSegmentation`` is built from a config; its backbone is replaced by one of
``gdis.models.backbones`` and its pixel decoder rebuilt for that backbone's channels. Training uses
the model's own Hungarian set loss with deep supervision; instance inference and pseudo-labels
follow Mask2Former and Guided Distillation.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from gdis.data import mask_boxes
from gdis.models.backbones import BACKBONES, build_backbone
from gdis.models.interface import KEPT
from gdis.models.weights import (load_matching_state, load_transformers_weights, resolve_hub_weights,
                                resolve_torchvision_weights)

log = logging.getLogger(__name__)
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
SIZE_DIVISIBILITY = 32
LOSS_TERMS = ("loss_cross_entropy", "loss_mask", "loss_dice")
# Each loss term's kind (train.unlabeled_loss_weights keys); a deep-supervision sum (<term>_aux) is of its term's.
LOSS_KINDS = {"loss_cross_entropy": "class", "loss_mask": "mask", "loss_dice": "mask"}
LOSS_KINDS.update({f"{term}_aux": kind for term, kind in list(LOSS_KINDS.items())})


def build_hf_model(num_labels: int, settings: dict, backbone: nn.Module):
    """``Mask2FormerForUniversalSegmentation`` for ``num_labels`` classes, on ``backbone`` (model.mask2former keys)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

    config = Mask2FormerConfig(
        # The smallest transformers backbone, replaced by ``backbone`` right after construction.
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   out_features=["stage1", "stage2", "stage3", "stage4"]),
        num_labels=num_labels,
        num_queries=settings["num_queries"],
        hidden_dim=settings["hidden_dim"],
        feature_size=settings["hidden_dim"],
        mask_feature_size=settings["hidden_dim"],
        num_attention_heads=settings["num_attention_heads"],
        dim_feedforward=settings["dim_feedforward"],
        encoder_layers=settings["encoder_layers"],
        encoder_feedforward_dim=settings["encoder_feedforward_dim"],
        decoder_layers=settings["decoder_layers"],
        train_num_points=settings["train_num_points"],
        class_weight=settings["class_weight"],
        mask_weight=settings["mask_weight"],
        dice_weight=settings["dice_weight"],
        no_object_weight=settings["no_object_weight"],
        use_auxiliary_loss=True,
    )
    net = Mask2FormerForUniversalSegmentation(config)
    net.criterion.get_num_masks = average_num_masks  # the reference's normaliser, over torch.distributed processes
    pixel_level = net.model.pixel_level_module
    pixel_level.encoder = _FeatureMaps(backbone)
    pixel_level.decoder = Mask2FormerPixelDecoder(config, feature_channels=backbone.channels)
    for module in pixel_level.decoder.modules():
        net._init_weights(module)
    return net


def average_num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The set loss's normaliser: the number of target masks of the batch, averaged over the processes, at least 1.

    As the reference's criterion (Mask2Former's and Guided Distillation's mask2former/modeling/criterion.py,
    SetCriterion.forward): num_masks all-reduced (summed) over the processes when torch.distributed is
    initialised, divided by the world size, clamped to min 1. Every process then divides its mask and dice
    losses by the same number, so DDP's average of the gradients weighs each target mask alike.
    """
    num_masks = torch.as_tensor(float(sum(len(classes) for classes in class_labels)), device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
        world_size = dist.get_world_size()
    return torch.clamp(num_masks / world_size, min=1)


class _FeatureMaps(nn.Module):
    """Adapts a gdis backbone to the transformers backbone output (``.feature_maps``)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels = backbone.channels

    def forward(self, pixel_values: torch.Tensor):
        from transformers.modeling_outputs import BackboneOutput

        return BackboneOutput(feature_maps=tuple(self.backbone(pixel_values)))


def resized_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """Image size with the short side at ``short_side`` and the long side at most ``max_size``."""
    scale = min(short_side / min(height, width), max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def padded(size: int) -> int:
    return -(-size // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY


def instance_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, top_k: int) -> dict:
    """Mask2Former's instance inference on one image's queries.

    ``class_logits`` (Q, K+1), the last class being "no object"; ``mask_logits`` (Q, H, W) at image
    size. The ``top_k`` best (query, class) pairs over all queries and foreground classes are kept;
    a pair's mask is sigmoid > 0.5 and its score the class probability times the mean mask
    probability inside that mask. Labels are 1..K; masks are returned as probabilities.
    """
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    probabilities = class_logits.softmax(-1)[:, :-1]
    scores, pair = probabilities.flatten().topk(min(top_k, num_queries * num_classes))
    query, label = pair // num_classes, pair % num_classes
    logits = mask_logits[query]
    binary = logits > 0
    inside = binary.flatten(1).float()
    mask_score = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    return {"boxes": mask_boxes(binary), "labels": label + 1, "scores": scores * mask_score,
            "masks": logits.sigmoid()}


def pseudo_label_query_tests(class_logits: torch.Tensor, mask_logits: torch.Tensor, class_threshold: float,
                             min_mask_probability_sum: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per query, whether it passes each test of Guided Distillation's pseudo-label rule, and its arg-max class.

    The tests (True: passed), by rejection reason: ``no_object``, its arg-max class is not "no object"
    (the last one); ``score``, its class probability is > ``class_threshold``; ``mask_sum``, its sigmoid
    mask probabilities, summed over the low-resolution ``mask_logits`` (Q, h, w), are > ``min_mask_probability_sum``.
    """
    probability, label = class_logits.softmax(-1).max(-1)
    passes = {"no_object": label != class_logits.shape[-1] - 1,
              "score": probability > class_threshold,
              "mask_sum": mask_logits.sigmoid().flatten(1).sum(1) > min_mask_probability_sum}
    return passes, label


def select_pseudo_label_queries(class_logits: torch.Tensor, mask_logits: torch.Tensor, class_threshold: float,
                                min_mask_probability_sum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher queries that become pseudo-labels, as in Guided Distillation, and their classes (0..K-1).

    Those that pass every test of ``pseudo_label_query_tests``.
    """
    passes, label = pseudo_label_query_tests(class_logits, mask_logits, class_threshold, min_mask_probability_sum)
    keep = passes["no_object"] & passes["score"] & passes["mask_sum"]
    return keep.nonzero().flatten(), label[keep]


def pseudo_label_masks(mask_logits: torch.Tensor, to_image, mask_threshold: float,
                       mask_target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's target masks of kept queries and their binary outlines (for the boxes), at image size.

    ``mask_logits`` (N, h, w) are the queries' low-resolution (stride 4) logits; ``to_image`` resizes such
    maps to the image as inference does (bilinearly). 'binary': sigmoid of the resized logits >
    ``mask_threshold``, uint8. 'soft': that sigmoid itself, float. 'coarse_binary': sigmoid >
    ``mask_threshold`` at stride 4 (the reference's prepare_ssl_outputs), then resized, float: soft only
    along the outline, as the reference's point_sample of its low-resolution targets makes them.
    """
    if mask_target == "coarse_binary":
        coarse = to_image((mask_logits.sigmoid() > mask_threshold).float()).clamp(0, 1)
        return coarse, coarse > 0.5
    probabilities = to_image(mask_logits).sigmoid()
    binary = probabilities > mask_threshold
    if mask_target == "soft":
        return probabilities, binary
    return binary.to(torch.uint8), binary


class Mask2FormerSegmenter(nn.Module):
    """Mask2Former behind the gdis architecture interface (``gdis.models.interface.Segmenter``)."""

    rejection_reasons = ("no_object", "score", "mask_sum")  # the tests of pseudo_label_query_tests
    loss_kinds = LOSS_KINDS

    def __init__(self, num_classes: int, model_config: dict) -> None:
        super().__init__()
        self.backbone_name = model_config["backbone"]
        settings = model_config["mask2former"]
        backbone = build_backbone(self.backbone_name, model_config)
        self.net = build_hf_model(num_classes - 1, settings, backbone)
        self.train_sizes = tuple(model_config["min_size"])
        self.test_size = model_config["test_size"]
        self.max_size = model_config["max_size"]
        self.top_k = model_config["detections_per_image"]
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(3, 1, 1), persistent=False)
        self.weights = "random"

    @property
    def backbone(self) -> nn.Module:
        return self.net.model.pixel_level_module.encoder.backbone

    def backbone_parameters(self):
        """Parameters of the backbone, which train at ``train.backbone_lr_multiplier`` times the learning rate."""
        return self.backbone.parameters()

    def load_backbone_weights(self, spec: str) -> None:
        """Initialise the backbone from its published weights ('pretrained', or 'imagenet') or a local file."""
        published = BACKBONES[self.backbone_name]
        if spec in ("pretrained", "imagenet"):
            if spec == "imagenet" and not published.imagenet:
                raise ValueError(f"model.backbone_weights: backbone '{self.backbone_name}' has no ImageNet weights; "
                                 "use 'pretrained' for its published weights")
            if published.torchvision_weights is not None:
                path = resolve_torchvision_weights(published.torchvision_weights)
            elif published.hub_repo is not None:
                path = resolve_hub_weights(published.hub_repo)
            else:
                raise ValueError(f"model.backbone_weights: no published weights exist for backbone "
                                 f"'{self.backbone_name}'")
        else:
            path = spec
        what = f"backbone '{self.backbone_name}'"
        if published.hub_repo is not None and Path(path).suffix not in (".pt", ".pth"):
            missing = load_transformers_weights(self.backbone.body, path, what)  # renames hub tensor names
        else:
            missing = load_matching_state(self.backbone.body, path, what)
        if missing:
            log.info("%d backbone tensor(s) not in %s keep their initialisation, e.g. %s", len(missing), path,
                     ", ".join(missing[:3]))
        self.weights = spec

    # -- inputs --------------------------------------------------------------------------------
    def _batch(self, images: list[torch.Tensor], short_side: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resized, normalised images zero-padded (after normalisation) to one size divisible by 32."""
        sizes = [resized_size(image.shape[-2], image.shape[-1], short_side, self.max_size) for image in images]
        height, width = padded(max(h for h, _ in sizes)), padded(max(w for _, w in sizes))
        batch = images[0].new_zeros((len(images), 3, height, width))
        for slot, image, (h, w) in zip(batch, images, sizes):
            resized = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            slot[:, :h, :w] = (resized - self.image_mean) / self.image_std
        return batch, sizes

    @staticmethod
    def _target_masks(masks: torch.Tensor, size: tuple[int, int], padded_size: tuple[int, int]) -> torch.Tensor:
        """Target masks resized to the input's ``size`` and zero-padded: binary ones by nearest neighbour,
        float ones (soft pseudo-labels, ``train.pseudo_label.mask_target``) bilinearly."""
        out = torch.zeros((len(masks), *padded_size))
        if len(masks):
            if masks.is_floating_point():
                resized = F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            else:
                resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
            out[:, : size[0], : size[1]] = resized
        return out

    def _forward(self, pixel_values: torch.Tensor, auxiliary: bool):
        return self.net(pixel_values=pixel_values, output_auxiliary_logits=auxiliary)

    # -- the interface ---------------------------------------------------------------------------
    def losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The Hungarian set loss with deep supervision; the decoder layers' terms are summed per kind (``_aux``)."""
        self.net.train()
        short_side = self.train_sizes[int(torch.randint(len(self.train_sizes), ()))]
        pixel_values, sizes = self._batch(images, short_side)
        outputs = self._forward(pixel_values, auxiliary=True)
        padded_size = tuple(pixel_values.shape[-2:])
        mask_labels = [self._target_masks(t["masks"], size, padded_size) for t, size in zip(targets, sizes)]
        class_labels = [t["labels"].long() - 1 for t in targets]
        auxiliary = [{key: value.float() for key, value in layer.items()} for layer in outputs.auxiliary_logits]
        with torch.autocast(pixel_values.device.type, enabled=False):  # matching and loss in float32
            terms = self.net.get_loss_dict(outputs.masks_queries_logits.float(), outputs.class_queries_logits.float(),
                                           mask_labels, class_labels, auxiliary)
        losses = {name: terms[name] for name in LOSS_TERMS}
        for name in LOSS_TERMS:
            losses[f"{name}_aux"] = sum(value for key, value in terms.items() if key.startswith(f"{name}_"))
        return losses

    @torch.no_grad()
    def _query_outputs(self, images: list[torch.Tensor], short_side: int | None = None):
        """Class logits (B, Q, K+1) and low-resolution mask logits (B, Q, h, w) with the images' short side at
        ``short_side`` (None: the test size), with the sizes."""
        self.net.eval()
        pixel_values, sizes = self._batch(images, short_side or self.test_size)
        outputs = self._forward(pixel_values, auxiliary=False)
        return outputs.class_queries_logits.float(), outputs.masks_queries_logits.float(), pixel_values.shape[-2:], sizes

    @staticmethod
    def _to_image(mask_logits: torch.Tensor, padded_size, size, image_size) -> torch.Tensor:
        """Mask logits at the padded input's stride 4 -> cropped to the image -> resized to the original size."""
        if not len(mask_logits):
            return mask_logits.new_zeros((0, *image_size))
        logits = F.interpolate(mask_logits[None], size=tuple(padded_size), mode="bilinear", align_corners=False)
        logits = logits[:, :, : size[0], : size[1]]
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        """Per image: boxes (xyxy, from the masks), labels (1..K), scores, masks as (N, H, W) probabilities."""
        class_logits, mask_logits, padded_size, sizes = self._query_outputs(images)
        results = []
        for image, classes, masks, size in zip(images, class_logits, mask_logits, sizes):
            masks = self._to_image(masks, padded_size, size, image.shape[-2:])
            results.append(instance_inference(classes, masks, self.top_k))
        return results

    @torch.no_grad()
    def pseudo_labels(self, images: list[torch.Tensor], thresholds: dict, short_side: int | None = None) -> list[dict]:
        """Targets for the student from this (teacher) network's queries on ``images`` (train.pseudo_label keys).

        Queries are selected on the low-resolution (stride 4) outputs of the padded input
        (``select_pseudo_label_queries``), as the reference measures its minimum mask sum. Each kept
        mask (``pseudo_label_masks``, by ``train.pseudo_label.mask_target``) is by default its logits,
        resized to the image as at inference, with sigmoid > mask_threshold.
        """
        mask_target = thresholds.get("mask_target", "binary")  # gdis.config checks it against ARCHITECTURES
        class_logits, mask_logits, padded_size, sizes = self._query_outputs(images, short_side)
        targets = []
        for image, classes, masks, size in zip(images, class_logits, mask_logits, sizes):
            queries, labels = select_pseudo_label_queries(classes, masks, thresholds["score_threshold"],
                                                          thresholds["min_mask_probability_sum"])
            to_image = functools.partial(self._to_image, padded_size=padded_size, size=size,
                                         image_size=image.shape[-2:])
            target_masks, binary = pseudo_label_masks(masks[queries], to_image, thresholds["mask_threshold"],
                                                      mask_target)
            targets.append({"boxes": mask_boxes(binary), "labels": labels + 1, "masks": target_masks})
        return targets

    @torch.no_grad()
    def explain_pseudo_labels(self, images: list[torch.Tensor], thresholds: dict) -> list[dict]:
        """Every query of this (teacher) network on ``images``, with its pseudo-label decision.

        Per image: ``scores`` and ``labels`` (1..K), the query's best foreground class and its probability
        (for a kept query, its arg-max class); ``masks``, its probabilities at image size as in
        ``pseudo_labels``; ``decisions``, 'kept' or the first test of ``pseudo_label_query_tests`` it fails.
        """
        class_logits, mask_logits, padded_size, sizes = self._query_outputs(images)
        explained = []
        for image, classes, masks, size in zip(images, class_logits, mask_logits, sizes):
            passes, _ = pseudo_label_query_tests(classes, masks, thresholds["score_threshold"],
                                                 thresholds["min_mask_probability_sum"])
            passed = {reason: passes[reason].tolist() for reason in self.rejection_reasons}
            decisions = [next((reason for reason in self.rejection_reasons if not passed[reason][query]), KEPT)
                         for query in range(len(classes))]
            scores, labels = classes.softmax(-1)[:, :-1].max(-1)
            probabilities = self._to_image(masks, padded_size, size, image.shape[-2:]).sigmoid()
            explained.append({"scores": scores, "labels": labels + 1, "masks": probabilities, "decisions": decisions})
        return explained
