"""COCO evaluation: predictions as a COCO results file, then pycocotools' COCOeval on that file."""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from tqdm import tqdm

from gdis.coco import encode_mask, load_coco
from gdis.data import CocoInstances, collate, to_float
from gdis.io import read_json, write_json

log = logging.getLogger(__name__)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predictions_to_coco(image_id: int, prediction: dict, category_ids: list[int], mask_threshold: float = 0.5) -> list[dict]:
    """COCO result entries (bbox xywh, RLE mask, score, category id) of one image's detections."""
    results = []
    masks = (prediction["masks"] > mask_threshold).numpy()
    for box, label, score, mask in zip(prediction["boxes"].tolist(), prediction["labels"].tolist(),
                                       prediction["scores"].tolist(), masks):
        x1, y1, x2, y2 = box
        results.append({
            "image_id": image_id,
            "category_id": category_ids[label - 1],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(score, 5),
            "segmentation": encode_mask(mask),
        })
    return results


def predict_dataset(model, coco: dict, images_dir: str | Path, category_ids: list[int], batch_size: int) -> list[dict]:
    """Run ``model.predict`` over every image of ``coco`` and return COCO result entries."""
    dataset = CocoInstances(coco, images_dir, with_targets=False)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    results: list[dict] = []
    interactive = sys.stderr.isatty()
    with tqdm(total=len(dataset), desc="predict", unit="img", file=sys.stderr, mininterval=2.0 if interactive else 20.0) as bar:
        for images, targets in loader:
            predictions = model.predict([to_float(image) for image in images])
            for target, prediction in zip(targets, predictions):
                results.extend(predictions_to_coco(target["image_id"], prediction, category_ids))
            bar.update(len(images))
    return results


def coco_metrics(annotations_path: str | Path, results_path: str | Path) -> dict:
    """Mask and box AP (in percent) of a COCO results file, computed by pycocotools' COCOeval."""
    results = read_json(results_path, "predictions file")
    with contextlib.redirect_stdout(sys.stderr):
        ground_truth = COCO(str(annotations_path))
        metrics = {}
        for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
            if not results:
                metrics.update({f"{prefix}_{name}": 0.0 for name in STAT_NAMES})
                continue
            detections = ground_truth.loadRes(copy.deepcopy(results))
            evaluator = COCOeval(ground_truth, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            print(f"--- {iou_type} ---")
            evaluator.summarize()
            for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)]):
                metrics[f"{prefix}_{name}"] = None if value < 0 else 100.0 * float(value)
    return metrics


def evaluate_network(model, category_ids: list[int], annotations_path: str | Path, images_dir: str | Path,
                     predictions_path: str | Path, batch_size: int) -> dict:
    """Predict the val set, write the COCO results file, and evaluate that very file."""
    coco = load_coco(annotations_path)
    unknown = sorted(set(category_ids) - {category["id"] for category in coco["categories"]})
    if unknown:
        raise ValueError(f"the model predicts category ids {unknown} that {annotations_path} does not define")
    with torch.inference_mode():
        results = predict_dataset(model, coco, images_dir, category_ids, batch_size)
    write_json(predictions_path, results)
    metrics = coco_metrics(annotations_path, predictions_path)
    metrics["num_images"] = len(coco["images"])
    return metrics
