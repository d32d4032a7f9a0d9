"""How good are the teacher's pseudo-labels? Precision, recall and boundary quality against the hidden ground truth.

The unlabelled training images of a split have annotations in the full training file even
though the split hides them. Matching a step's pseudo-labels against them (same class, mask
IoU >= 0.5, one-to-one) costs a few small mask products and tells whether the teacher
helps or misleads the student. The matched pseudo-labels' mask IoU and Boundary IoU tell how
well their outlines follow the truth: a student taught by them learns those outlines.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from gdis.coco import annotation_mask, category_ids, load_coco

MATCH_IOU = 0.5
# Boundary IoU's band width as a fraction of the image diagonal (Cheng et al., CVPR 2021, and their
# boundary-iou-api's default dilation_ratio).
BOUNDARY_DILATION_RATIO = 0.02


def mask_iou(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """(A, B) intersection over union of binary (A, H, W) and (B, H, W) masks; 0 where both are empty."""
    a = masks_a.flatten(1).float()
    b = masks_b.flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def match_instances(pseudo_masks: torch.Tensor, pseudo_labels: torch.Tensor, gt_masks: torch.Tensor,
                    gt_labels: torch.Tensor, iou_threshold: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """(pseudo index, ground-truth index, mask IoU) of the pairs of the same class with mask IoU >= ``iou_threshold``.

    Matching is one-to-one and greedy, highest IoU first, so a duplicate pseudo-label matches once.
    """
    if len(pseudo_masks) == 0 or len(gt_masks) == 0:
        return []
    iou = mask_iou(pseudo_masks, gt_masks)
    iou[pseudo_labels[:, None] != gt_labels[None, :]] = 0
    pairs = []
    while True:
        best = float(iou.max())
        if best < iou_threshold:
            return pairs
        row, column = divmod(int(iou.argmax()), iou.shape[1])
        pairs.append((row, column, best))
        iou[row, :] = 0
        iou[:, column] = 0


def count_matches(pseudo_masks: torch.Tensor, pseudo_labels: torch.Tensor, gt_masks: torch.Tensor,
                  gt_labels: torch.Tensor, iou_threshold: float = MATCH_IOU) -> int:
    """Pseudo-labels that match a ground-truth instance (``match_instances``)."""
    return len(match_instances(pseudo_masks, pseudo_labels, gt_masks, gt_labels, iou_threshold))


def boundary_width(height: int, width: int, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Width d of the boundary band: ``dilation_ratio`` of the image diagonal, rounded, at least 1 pixel."""
    return max(1, round(dilation_ratio * math.hypot(height, width)))


def boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Inner boundary bands of binary (N, H, W) masks: mask pixels within Chebyshev distance ``width`` of a pixel
    outside the mask, the image border counting as outside (Boundary IoU's G_d; reference: boundary-iou-api
    ``mask_to_boundary``, a 3x3 erosion repeated ``width`` times, here one (2 width + 1)^2 max-pool)."""
    masks = masks.bool()
    outside = F.pad((~masks).float()[:, None], (width,) * 4, value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=2 * width + 1, stride=1)[:, 0] > 0
    return masks & near_outside


def paired_iou(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of the i-th masks of two binary (N, H, W) stacks; 0 where both are empty."""
    a, b = masks_a.flatten(1).bool(), masks_b.flatten(1).bool()
    intersection = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def boundary_iou(masks_a: torch.Tensor, masks_b: torch.Tensor,
                 dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> torch.Tensor:
    """(N,) Boundary IoU (Cheng et al., CVPR 2021) of paired binary (N, H, W) masks: |G_d & P_d| / |G_d | P_d|
    of their inner boundary bands, d = ``dilation_ratio`` x image diagonal (at least 1 pixel)."""
    width = boundary_width(*masks_a.shape[-2:], dilation_ratio)
    return paired_iou(boundary_band(masks_a, width), boundary_band(masks_b, width))


def match_quality(pseudo_masks: torch.Tensor, pseudo_labels: torch.Tensor, gt_masks: torch.Tensor,
                  gt_labels: torch.Tensor) -> dict:
    """How one image's pseudo-labels fare against its ground truth (both in the same geometry).

    Returns counts (matched, pseudo_labels, gt_instances) and, per matched pseudo-label in matching
    order, ``pairs`` (pseudo index, ground-truth index), ``mask_ious`` and ``boundary_ious``.
    """
    pairs = match_instances(pseudo_masks.bool(), pseudo_labels, gt_masks.bool(), gt_labels)
    boundary = []
    if pairs:
        rows = torch.tensor([row for row, _, _ in pairs])
        columns = torch.tensor([column for _, column, _ in pairs])
        boundary = boundary_iou(pseudo_masks[rows].bool(), gt_masks[columns].bool()).tolist()
    return {
        "matched": len(pairs),
        "pseudo_labels": len(pseudo_masks),
        "gt_instances": len(gt_masks),
        "pairs": [(row, column) for row, column, _ in pairs],
        "mask_ious": [iou for _, _, iou in pairs],
        "boundary_ious": boundary,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def quality_record(images: list[dict]) -> dict:
    """Log fields from per-image ``match_quality`` results, pooled over the images.

    Precision is undefined (None) without pseudo-labels, recall without ground truth, the mean mask
    and boundary IoU of matched pseudo-labels without a match.
    """
    matched = sum(image["matched"] for image in images)
    predicted = sum(image["pseudo_labels"] for image in images)
    actual = sum(image["gt_instances"] for image in images)
    return {
        "pseudo_label_precision": matched / predicted if predicted else None,
        "pseudo_label_recall": matched / actual if actual else None,
        "pseudo_label_mask_iou": _mean([iou for image in images for iou in image["mask_ious"]]),
        "pseudo_label_boundary_iou": _mean([iou for image in images for iou in image["boundary_ious"]]),
        "pseudo_label_matched": matched,
        "pseudo_label_gt_instances": actual,
        "pseudo_label_quality_images": len(images),
    }


class HiddenGroundTruth:
    """Instance masks and contiguous labels (1..K) per image id, read from the full training annotations."""

    def __init__(self, annotations_path: str | Path, expected_category_ids: list[int]) -> None:
        coco = load_coco(annotations_path)
        if category_ids(coco) != expected_category_ids:
            raise ValueError(f"{annotations_path} defines other categories than the labelled split")
        self.label_of = {category_id: index + 1 for index, category_id in enumerate(expected_category_ids)}
        self.images = {image["id"]: image for image in coco["images"]}
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0) and ann.get("segmentation"):
                self.annotations[ann["image_id"]].append(ann)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.images

    def target(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W) bool masks and (N,) labels of one image."""
        image = self.images[image_id]
        height, width = image["height"], image["width"]
        anns = self.annotations[image_id]
        if not anns:
            return torch.zeros((0, height, width), dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
        masks = torch.stack([torch.from_numpy(annotation_mask(ann, height, width)).bool() for ann in anns])
        labels = torch.tensor([self.label_of[ann["category_id"]] for ann in anns], dtype=torch.int64)
        return masks, labels


def measure_views(ground_truth: HiddenGroundTruth, infos: list[dict], pseudo_labels: list[dict]) -> dict:
    """Quality log fields of one batch of pseudo-labels made on ``gdis.augment.UnlabeledViews`` weak views.

    ``infos`` are the views' infos (``image_id``, ``geometry``): the hidden masks are carried into each
    view's frame by the view's own flip, resize, crop and padding, then matched by ``match_quality``.
    Instances the crop leaves out are not counted as missed. Images without hidden annotations are skipped.
    """
    from gdis.augment import apply_to_masks

    per_image = []
    for info, target in zip(infos, pseudo_labels):
        if info["image_id"] not in ground_truth:
            continue
        gt_masks, gt_labels = ground_truth.target(info["image_id"])
        gt_masks = apply_to_masks(gt_masks, info["geometry"])
        in_view = gt_masks.flatten(1).any(1).bool()
        per_image.append(match_quality(target["masks"].bool(), target["labels"], gt_masks[in_view], gt_labels[in_view]))
    return quality_record(per_image) if per_image else {}
