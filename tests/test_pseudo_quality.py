"""Pseudo-label precision, recall, mask IoU and Boundary IoU against hidden ground truth, on hand-made masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gdis.augment import Geometry
from gdis.coco import encode_mask
from gdis.pseudo_quality import (HiddenGroundTruth, boundary_band, boundary_iou, boundary_width, count_matches,
                                 mask_iou, match_quality, measure_views, quality_record)


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


def test_boundary_width_is_two_percent_of_the_diagonal_and_at_least_one_pixel():
    assert boundary_width(128, 128) == 4  # 0.02 * 181.02 = 3.62
    assert boundary_width(64, 64) == 2  # 1.81
    assert boundary_width(20, 20) == 1  # 0.57
    assert boundary_width(10, 10) == 1  # 0.28, raised to 1


def test_boundary_band_is_the_inner_ring_and_the_image_border_counts_as_outside():
    square = box_mask(5, 5, 11, 11, size=20)  # 6x6
    ring = square & ~box_mask(6, 6, 10, 10, size=20)
    assert torch.equal(boundary_band(square[None], 1)[0], ring)
    assert boundary_band(square[None], 1)[0].sum() == 36 - 16
    assert boundary_band(square[None], 2)[0].sum() == 36 - 4
    assert boundary_band(square[None], 3)[0].sum() == 36  # thicker than half the square: all of it
    full = torch.ones((1, 10, 10), dtype=torch.bool)
    assert torch.equal(boundary_band(full, 1)[0], ~box_mask(1, 1, 9, 9))


def test_boundary_iou_of_hand_computed_cases():
    square = box_mask(5, 5, 11, 11, size=20)[None]  # 20x20 image: d = 1
    shifted = box_mask(6, 5, 12, 11, size=20)[None]  # one pixel to the right
    far = box_mask(14, 14, 18, 18, size=20)[None]
    assert boundary_iou(square, square).tolist() == [1.0]
    # The rings (20 px each) share the top and bottom rows' 5 common columns: 10 / (20 + 20 - 10).
    assert boundary_iou(square, shifted).tolist() == pytest.approx([1 / 3])
    assert mask_iou(square, shifted).item() == pytest.approx(30 / 42)  # the mask IoU is far kinder
    assert boundary_iou(square, far).tolist() == [0.0]
    # 64x64 image: d = 2. 10x10 squares one pixel apart: bands of 100 - 36 = 64 px share 4 rows x 9 columns
    # plus 2 columns x 6 rows = 48 px: 48 / (64 + 64 - 48).
    big = box_mask(20, 20, 30, 30, size=64)[None]
    big_shifted = box_mask(21, 20, 31, 30, size=64)[None]
    assert boundary_iou(big, big_shifted).tolist() == pytest.approx([48 / 80])
    # pairs are element-wise
    pairs = boundary_iou(torch.cat([square, square]), torch.cat([square, shifted]))
    assert pairs.tolist() == pytest.approx([1.0, 1 / 3])


def test_match_quality_reports_each_matched_pair():
    size = 20
    gt = torch.stack([box_mask(5, 5, 11, 11, size), box_mask(14, 14, 20, 20, size)])
    gt_labels = torch.tensor([1, 2])
    # a one-pixel-shifted copy of gt 0, an exact copy of gt 1, a false positive
    pseudo = torch.stack([box_mask(14, 14, 20, 20, size), box_mask(0, 14, 4, 18, size), box_mask(6, 5, 12, 11, size)])
    result = match_quality(pseudo, torch.tensor([2, 1, 1]), gt, gt_labels)
    assert (result["matched"], result["pseudo_labels"], result["gt_instances"]) == (2, 3, 2)
    assert result["pairs"] == [(0, 1), (2, 0)]  # best IoU first
    assert result["mask_ious"] == pytest.approx([1.0, 30 / 42])
    assert result["boundary_ious"] == pytest.approx([1.0, 1 / 3])
    none = match_quality(pseudo[:0], torch.tensor([], dtype=torch.int64), gt, gt_labels)
    assert none["matched"] == 0 and none["mask_ious"] == [] and none["boundary_ious"] == []


def _image(matched, pseudo_labels, gt_instances, mask_ious=(), boundary_ious=()):
    return {"matched": matched, "pseudo_labels": pseudo_labels, "gt_instances": gt_instances,
            "mask_ious": list(mask_ious), "boundary_ious": list(boundary_ious)}


def test_quality_record_pools_images_and_leaves_undefined_ratios_empty():
    record = quality_record([_image(1, 2, 4, [0.6], [0.2]), _image(2, 2, 2, [0.8, 1.0], [0.5, 0.8])])
    assert record["pseudo_label_precision"] == pytest.approx(3 / 4)
    assert record["pseudo_label_recall"] == pytest.approx(3 / 6)
    assert record["pseudo_label_mask_iou"] == pytest.approx(0.8)  # mean over the 3 matched pseudo-labels
    assert record["pseudo_label_boundary_iou"] == pytest.approx(0.5)
    assert record["pseudo_label_gt_instances"] == 6 and record["pseudo_label_quality_images"] == 2
    empty = quality_record([_image(0, 0, 0)])
    assert empty["pseudo_label_precision"] is None and empty["pseudo_label_recall"] is None
    assert empty["pseudo_label_mask_iou"] is None and empty["pseudo_label_boundary_iou"] is None


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


def _view(flip: bool) -> Geometry:
    """A view's info: the 10x10 image itself, flipped or not (the demo's geometry)."""
    return Geometry(flip=flip, resized=(10, 10), crop=(0, 0, 10, 10), canvas=(10, 10))


def test_measure_views_follows_the_view_geometry(tmp_path):
    truth = HiddenGroundTruth(_annotations(tmp_path), [7, 9])
    on_the_left = {"masks": box_mask(0, 2, 4, 6)[None].to(torch.uint8), "labels": torch.tensor([1])}
    on_the_right = {"masks": box_mask(6, 2, 10, 6)[None].to(torch.uint8), "labels": torch.tensor([1])}
    plain, mirrored = {"image_id": 1, "geometry": _view(False)}, {"image_id": 1, "geometry": _view(True)}
    assert measure_views(truth, [plain], [on_the_left])["pseudo_label_precision"] == 1.0
    assert measure_views(truth, [plain], [on_the_right])["pseudo_label_precision"] == 0.0
    # the teacher saw a mirrored view: its pseudo-label on the right is the object on the left
    flipped = measure_views(truth, [mirrored], [on_the_right])
    assert flipped["pseudo_label_precision"] == 1.0 and flipped["pseudo_label_recall"] == 1.0
    assert flipped["pseudo_label_mask_iou"] == 1.0 and flipped["pseudo_label_boundary_iou"] == 1.0
    # one pixel too wide: mask IoU 16 / 20; 10x10 image, d = 1: the true ring (12 px, the image border counts)
    # against the wider one (14 px) share 10 px
    wider = {"masks": box_mask(0, 2, 5, 6)[None].to(torch.uint8), "labels": torch.tensor([1])}
    record = measure_views(truth, [plain], [wider])
    assert record["pseudo_label_mask_iou"] == pytest.approx(16 / 20)
    assert record["pseudo_label_boundary_iou"] == pytest.approx(10 / 16)
    # image 2 has no objects: one false positive; an image id missing from the file is skipped
    infos = [plain, {"image_id": 2, "geometry": _view(False)}, {"image_id": 99, "geometry": _view(False)}]
    record = measure_views(truth, infos, [on_the_left] * 3)
    assert record["pseudo_label_precision"] == 0.5 and record["pseudo_label_recall"] == 1.0
    assert record["pseudo_label_quality_images"] == 2
    assert measure_views(truth, [infos[2]], [on_the_left]) == {}


def test_hidden_truth_refuses_other_categories(tmp_path):
    with pytest.raises(ValueError, match="other categories"):
        HiddenGroundTruth(_annotations(tmp_path), [7])


def test_score_threshold_table_counts_matched_predictions_above_each_threshold():
    from benchmarks.score_thresholds import markdown, threshold_table

    square = np.zeros((32, 32), dtype=np.uint8)
    square[4:20, 4:20] = 1
    other = np.zeros((32, 32), dtype=np.uint8)
    other[22:30, 22:30] = 1
    coco = {"images": [{"id": 1, "height": 32, "width": 32}, {"id": 2, "height": 32, "width": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(square)},
                            {"id": 2, "image_id": 2, "category_id": 1, "segmentation": encode_mask(other)}]}
    predictions = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": encode_mask(square)},
                   {"image_id": 2, "category_id": 2, "score": 0.5, "segmentation": encode_mask(other)},  # wrong class
                   {"image_id": 2, "category_id": 1, "score": 0.3, "segmentation": encode_mask(other)}]
    low, middle, high = threshold_table(coco, predictions, (0.2, 0.4, 0.95))
    assert (low["per_image"], low["precision"], low["recall"]) == (1.5, pytest.approx(2 / 3), 1.0)
    assert (middle["per_image"], middle["precision"], middle["recall"]) == (1.0, 0.5, 0.5)
    assert (high["per_image"], high["precision"], high["recall"]) == (0.0, None, 0.0)
    assert "| 0.95 | 0.00 | – | 0.00 |" in markdown([low, middle, high])
