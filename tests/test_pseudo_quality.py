"""Pseudo-label precision and recall against hidden ground truth, on hand-made masks."""

from __future__ import annotations

import json

import pytest
import torch

from gdis.coco import encode_mask
from gdis.pseudo_quality import HiddenGroundTruth, count_matches, mask_iou, measure, quality_record


def box_mask(x0: int, y0: int, x1: int, y1: int, size: int = 10) -> torch.Tensor:
    mask = torch.zeros((size, size), dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_mask_iou_of_known_overlaps():
    a = torch.stack([box_mask(0, 0, 4, 4), box_mask(0, 0, 4, 4)])
    b = torch.stack([box_mask(0, 0, 4, 4), box_mask(2, 0, 6, 4), box_mask(6, 6, 9, 9)])
    iou = mask_iou(a, b)
    assert iou[0].tolist() == pytest.approx([1.0, 8 / 24, 0.0])
    assert mask_iou(torch.zeros((1, 5, 5), dtype=torch.bool), torch.zeros((1, 5, 5), dtype=torch.bool)).item() == 0


def test_count_matches_needs_same_class_and_iou_half():
    gt = torch.stack([box_mask(0, 0, 4, 4), box_mask(5, 5, 9, 9)])
    gt_labels = torch.tensor([1, 2])
    # exact copy of gt 0; gt 1 with the wrong class; a shifted copy of gt 0 at IoU 8/24 < 0.5
    pseudo = torch.stack([box_mask(0, 0, 4, 4), box_mask(5, 5, 9, 9), box_mask(2, 0, 6, 4)])
    assert count_matches(pseudo, torch.tensor([1, 1, 1]), gt, gt_labels) == 1
    assert count_matches(pseudo, torch.tensor([1, 2, 1]), gt, gt_labels) == 2
    # IoU exactly 0.5 counts: 4x4 against 4x2 halves
    assert count_matches(box_mask(0, 0, 4, 2)[None], torch.tensor([1]), gt[:1], gt_labels[:1]) == 1


def test_duplicates_count_once_and_empty_sides():
    gt = box_mask(0, 0, 4, 4)[None]
    duplicates = torch.stack([box_mask(0, 0, 4, 4), box_mask(0, 0, 4, 4)])
    assert count_matches(duplicates, torch.tensor([1, 1]), gt, torch.tensor([1])) == 1
    assert count_matches(duplicates[:0], torch.tensor([], dtype=torch.int64), gt, torch.tensor([1])) == 0
    assert count_matches(duplicates, torch.tensor([1, 1]), gt[:0], torch.tensor([], dtype=torch.int64)) == 0


def test_quality_record_pools_images_and_leaves_undefined_ratios_empty():
    record = quality_record([(1, 2, 4), (2, 2, 2)])
    assert record["pseudo_label_precision"] == pytest.approx(3 / 4)
    assert record["pseudo_label_recall"] == pytest.approx(3 / 6)
    assert record["pseudo_label_gt_instances"] == 6 and record["pseudo_label_quality_images"] == 2
    empty = quality_record([(0, 0, 0)])
    assert empty["pseudo_label_precision"] is None and empty["pseudo_label_recall"] is None


def _annotations(tmp_path):
    """Image 1 holds a class-7 square at the left edge; image 2 nothing; category ids 7 and 9."""
    left = box_mask(0, 2, 4, 6).numpy().astype("uint8")
    coco = {
        "images": [{"id": 1, "file_name": "1.png", "width": 10, "height": 10},
                   {"id": 2, "file_name": "2.png", "width": 10, "height": 10}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 2, 4, 4], "area": 16,
                         "iscrowd": 0, "segmentation": encode_mask(left)}],
        "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    return path


def test_measure_follows_the_weak_view_flip(tmp_path):
    truth = HiddenGroundTruth(_annotations(tmp_path), [7, 9])
    image = torch.randint(0, 256, (3, 10, 10), dtype=torch.uint8)
    weak = image.float().div(255)
    on_the_left = {"masks": box_mask(0, 2, 4, 6)[None].to(torch.uint8), "labels": torch.tensor([1])}
    on_the_right = {"masks": box_mask(6, 2, 10, 6)[None].to(torch.uint8), "labels": torch.tensor([1])}
    assert measure(truth, [1], [image], [weak], [on_the_left])["pseudo_label_precision"] == 1.0
    assert measure(truth, [1], [image], [weak], [on_the_right])["pseudo_label_precision"] == 0.0
    # the teacher saw a mirrored image: its pseudo-label on the right is the object on the left
    flipped = measure(truth, [1], [image], [weak.flip(-1)], [on_the_right])
    assert flipped["pseudo_label_precision"] == 1.0 and flipped["pseudo_label_recall"] == 1.0
    # image 2 has no objects: one false positive; an image id missing from the file is skipped
    record = measure(truth, [1, 2, 99], [image] * 3, [weak] * 3, [on_the_left, on_the_left, on_the_left])
    assert record["pseudo_label_precision"] == 0.5 and record["pseudo_label_recall"] == 1.0
    assert record["pseudo_label_quality_images"] == 2
    assert measure(truth, [99], [image], [weak], [on_the_left]) == {}


def test_hidden_truth_refuses_other_categories(tmp_path):
    with pytest.raises(ValueError, match="other categories"):
        HiddenGroundTruth(_annotations(tmp_path), [7])
