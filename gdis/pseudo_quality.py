"""How good are the teacher's pseudo-labels? Precision and recall against the hidden ground truth.

The unlabelled training images of a split have annotations in the full training file even
though the split hides them. Matching a step's pseudo-labels against them (same class, mask
IoU >= 0.5, one-to-one) costs a few small mask products and tells whether the teacher
helps or misleads the student.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gdis.coco import annotation_mask, category_ids, load_coco

MATCH_IOU = 0.5


def mask_iou(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """(A, B) intersection over union of binary (A, H, W) and (B, H, W) masks; 0 where both are empty."""
    a = masks_a.flatten(1).float()
    b = masks_b.flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def count_matches(pseudo_masks: torch.Tensor, pseudo_labels: torch.Tensor, gt_masks: torch.Tensor,
                  gt_labels: torch.Tensor, iou_threshold: float = MATCH_IOU) -> int:
    """Pseudo-labels that match a ground-truth instance of the same class with mask IoU >= ``iou_threshold``.

    Matching is one-to-one and greedy, highest IoU first, so a duplicate pseudo-label counts once.
    """
    if len(pseudo_masks) == 0 or len(gt_masks) == 0:
        return 0
    iou = mask_iou(pseudo_masks, gt_masks)
    iou[pseudo_labels[:, None] != gt_labels[None, :]] = 0
    matches = 0
    while True:
        best = iou.max()
        if best < iou_threshold:
            return matches
        row, column = divmod(int(iou.argmax()), iou.shape[1])
        iou[row, :] = 0
        iou[:, column] = 0
        matches += 1


def quality_record(counts: list[tuple[int, int, int]]) -> dict:
    """Log fields from per-image (matched, pseudo-labels, ground-truth instances) counts.

    Precision is undefined (None) without pseudo-labels, recall without ground truth.
    """
    matched = sum(c[0] for c in counts)
    predicted = sum(c[1] for c in counts)
    actual = sum(c[2] for c in counts)
    return {
        "pseudo_label_precision": matched / predicted if predicted else None,
        "pseudo_label_recall": matched / actual if actual else None,
        "pseudo_label_matched": matched,
        "pseudo_label_gt_instances": actual,
        "pseudo_label_quality_images": len(counts),
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


def weak_view_is_flipped(image: torch.Tensor, weak: torch.Tensor) -> bool:
    """Whether the teacher's weak view is the horizontal mirror of the uint8 ``image``.

    The weak view is the image as float, flipped or not; comparing pixels tells which, exactly.
    """
    as_float = image.float().div(255)
    return not torch.equal(weak, as_float) and torch.equal(weak, as_float.flip(-1))


def measure(ground_truth: HiddenGroundTruth, image_ids: list[int], images: list[torch.Tensor],
            weak_views: list[torch.Tensor], pseudo_labels: list[dict]) -> dict:
    """Quality log fields of one batch of pseudo-labels (images without hidden annotations are skipped)."""
    counts = []
    for image_id, image, weak, target in zip(image_ids, images, weak_views, pseudo_labels):
        if image_id not in ground_truth:
            continue
        gt_masks, gt_labels = ground_truth.target(image_id)
        if weak_view_is_flipped(image, weak):
            gt_masks = gt_masks.flip(-1)
        pseudo_masks = target["masks"].bool()
        counts.append((count_matches(pseudo_masks, target["labels"], gt_masks, gt_labels),
                       len(pseudo_masks), len(gt_masks)))
    return quality_record(counts) if counts else {}


def measure_views(ground_truth: HiddenGroundTruth, infos: list[dict], pseudo_labels: list[dict]) -> dict:
    """Quality log fields of one batch of pseudo-labels made on ``gdis.augment.UnlabeledViews`` weak views.

    ``infos`` are the views' infos (``image_id``, ``geometry``): the hidden masks are carried into each
    view's frame by the view's own flip, resize, crop and padding, then matched as by ``measure``.
    Instances the crop leaves out are not counted as missed. Images without hidden annotations are skipped.
    """
    from gdis.augment import apply_to_masks

    counts = []
    for info, target in zip(infos, pseudo_labels):
        if info["image_id"] not in ground_truth:
            continue
        gt_masks, gt_labels = ground_truth.target(info["image_id"])
        gt_masks = apply_to_masks(gt_masks, info["geometry"])
        in_view = gt_masks.flatten(1).any(1).bool()
        gt_masks, gt_labels = gt_masks[in_view], gt_labels[in_view]
        pseudo_masks = target["masks"].bool()
        counts.append((count_matches(pseudo_masks, target["labels"], gt_masks, gt_labels),
                       len(pseudo_masks), len(gt_masks)))
    return quality_record(counts) if counts else {}
