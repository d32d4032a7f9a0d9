"""Evaluation: our numbers equal pycocotools' COCOeval run directly on the written results file."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gdis.coco import annotation_mask, category_ids, encode_mask, load_coco
from gdis.evaluate import EVALUATORS, STAT_NAMES, _coco_api, coco_metrics, evaluate_network, predictions_to_coco
from gdis.io import write_json


def _noisy_predictions(coco: dict, seed: int) -> list[dict]:
    """Detections made from the ground truth: jittered masks, shuffled scores, some wrong classes, some misses."""
    rng = np.random.default_rng(seed)
    ids = category_ids(coco)
    images = {image["id"]: image for image in coco["images"]}
    results = []
    for ann in coco["annotations"]:
        if rng.random() < 0.2:
            continue
        image = images[ann["image_id"]]
        mask = annotation_mask(ann, image["height"], image["width"]).astype(np.float32)
        mask = np.roll(mask, shift=int(rng.integers(-3, 4)), axis=1)
        label = ids.index(ann["category_id"]) + 1 if rng.random() > 0.15 else int(rng.integers(1, len(ids) + 1))
        x, y, w, h = ann["bbox"]
        prediction = {
            "boxes": torch.tensor([[x, y, x + w, y + h]]) + torch.from_numpy(rng.normal(0, 2, 4)).float(),
            "labels": torch.tensor([label]),
            "scores": torch.tensor([float(rng.random())]),
            "masks": torch.from_numpy(mask)[None],
        }
        results.extend(predictions_to_coco(ann["image_id"], prediction, ids))
    return results


def _direct_cocoeval(annotations_path, results_path, iou_type) -> np.ndarray:
    """pycocotools' COCOeval on the file, the boxes dropped for the mask pass as detectron2 does."""
    results = json.loads(results_path.read_text())
    if iou_type == "segm":
        results = [{key: value for key, value in entry.items() if key != "bbox"} for entry in results]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotations_path))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_metrics_equal_pycocotools_on_the_same_file(micro_dataset, tmp_path):
    annotations = micro_dataset / "annotations" / "train.json"
    results_path = tmp_path / "predictions.json"
    write_json(results_path, _noisy_predictions(load_coco(annotations), seed=0))
    ours = coco_metrics(annotations, results_path)
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        stats = _direct_cocoeval(annotations, results_path, iou_type)
        for name, value in zip(STAT_NAMES, stats):
            expected = None if value < 0 else 100 * value
            assert ours[f"{prefix}_{name}"] == pytest.approx(expected, abs=1e-9), (prefix, name)
    assert 10 < ours["mask_AP"] < 100  # a meaningful, not a degenerate, case


def test_no_detections_give_zero_ap(micro_dataset, tmp_path):
    write_json(tmp_path / "empty.json", [])
    metrics = coco_metrics(micro_dataset / "annotations" / "val.json", tmp_path / "empty.json")
    assert metrics["mask_AP"] == 0.0 and metrics["box_AP"] == 0.0


class _Oracle:
    """A 'model' that predicts the ground truth of each image: AP must be 100."""

    def __init__(self, coco: dict) -> None:
        self.coco, self.ids = coco, category_ids(coco)
        self.queue = [image for image in sorted(coco["images"], key=lambda i: i["id"])]

    def predict(self, images):
        outputs = []
        for _ in images:
            image = self.queue.pop(0)
            anns = [a for a in self.coco["annotations"] if a["image_id"] == image["id"]]
            masks = [annotation_mask(a, image["height"], image["width"]) for a in anns]
            outputs.append({
                "boxes": torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                        a["bbox"][1] + a["bbox"][3]] for a in anns]),
                "labels": torch.tensor([self.ids.index(a["category_id"]) + 1 for a in anns]),
                "scores": torch.ones(len(anns)),
                "masks": torch.from_numpy(np.stack(masks)).float(),
            })
        return outputs


def test_evaluate_network_writes_results_and_scores_perfect_oracle(micro_dataset, tmp_path):
    annotations = micro_dataset / "annotations" / "val.json"
    coco = load_coco(annotations)
    metrics = evaluate_network(_Oracle(coco), category_ids(coco), annotations, micro_dataset / "val",
                               tmp_path / "predictions.json", batch_size=3)
    assert metrics["mask_AP"] == pytest.approx(100.0)
    assert metrics["num_images"] == len(coco["images"])
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert len(results) == len(coco["annotations"])


def _area_range_case(tmp_path):
    """One image: a small (20 x 20) and a medium (50 x 50) object, both found exactly, and a top-scoring false
    positive shaped as an L whose mask is small (304 px) and whose box is medium (40 x 40 = 1600 px)."""
    height = width = 200
    squares = {1: (10, 10, 20), 2: (60, 10, 50)}  # annotation id: x, y, side
    annotations, results = [], []
    for ann_id, (x, y, side) in squares.items():
        mask = np.zeros((height, width), np.uint8)
        mask[y:y + side, x:x + side] = 1
        box = [float(x), float(y), float(side), float(side)]
        annotations.append({"id": ann_id, "image_id": 1, "category_id": 1, "bbox": box, "area": side * side,
                            "iscrowd": 0, "segmentation": encode_mask(mask)})
        results.append({"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0 - ann_id / 10,
                        "segmentation": encode_mask(mask)})
    corner = np.zeros((height, width), np.uint8)
    corner[140:180, 140:144] = 1
    corner[176:180, 140:180] = 1
    assert corner.sum() == 304
    results.append({"image_id": 1, "category_id": 1, "bbox": [140.0, 140.0, 40.0, 40.0], "score": 0.95,
                    "segmentation": encode_mask(corner)})
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
            "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    write_json(tmp_path / "gt.json", coco)
    write_json(tmp_path / "results.json", results)
    return tmp_path / "gt.json", tmp_path / "results.json"


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_mask_area_ranges_use_mask_areas_box_ranges_box_areas(tmp_path, evaluator):
    """By mask area the false positive is small: it halves APs, and APm is perfect; by box area (what loadRes
    does when the entries carry boxes) it is medium and the split is the other way round. Overall AP is 2/3
    either way: the false positive ranks first, then both objects."""
    annotations, results_path = _area_range_case(tmp_path)
    metrics = coco_metrics(annotations, results_path, evaluator)
    assert metrics["mask_AP"] == pytest.approx(200 / 3, abs=1e-6)
    by_mask_area = (metrics["mask_APs"], metrics["mask_APm"], metrics["mask_APl"])
    assert by_mask_area == (pytest.approx(50), pytest.approx(100), None)
    assert metrics["box_AP"] == pytest.approx(200 / 3, abs=1e-6)
    by_box_area = (metrics["box_APs"], metrics["box_APm"], metrics["box_APl"])
    assert by_box_area == (pytest.approx(100), pytest.approx(50), None)

    coco_class, eval_class, options = _coco_api(evaluator)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = coco_class(str(annotations))
        with_boxes = eval_class(ground_truth, ground_truth.loadRes(json.loads(results_path.read_text())), "segm",
                                **options)
        with_boxes.evaluate()
        with_boxes.accumulate()
        with_boxes.summarize()
    ap, aps, apm, apl = (100 * with_boxes.stats[index] for index in (0, 3, 4, 5))
    assert ap == pytest.approx(metrics["mask_AP"], abs=1e-9)
    assert (aps, apm, apl) == (pytest.approx(100), pytest.approx(50), -100)
