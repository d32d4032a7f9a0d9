"""Figure 2: gdis evaluation time ÷ pycocotools COCOeval time on the same predictions, with identical AP.

Both evaluate mask and box AP of one COCO results file against the demo's val set (100 images);
the predictions are noisy copies of the ground truth plus false positives, about as many per image
as the demo's networks give (~19).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from benchmarks._common import Clock, demo_config, figure, median

GOAL = 0.35
REPEATS = 5
DETECTIONS_PER_IMAGE = 19


def noisy_predictions(coco: dict, seed: int) -> list[dict]:
    """COCO results: each object found with probability 0.8 (shifted, sometimes mislabelled), then lower-scored
    false positives."""
    from gdis.coco import annotation_mask, encode_mask

    rng = np.random.default_rng(seed)
    category_ids = [category["id"] for category in coco["categories"]]
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    results = []
    for image in coco["images"]:
        height, width = image["height"], image["width"]
        masks, labels, scores = [], [], []
        for ann in by_image[image["id"]]:
            if rng.random() < 0.8:
                shift = rng.integers(-4, 5, size=2)
                masks.append(np.roll(annotation_mask(ann, height, width), tuple(shift), axis=(0, 1)))
                labels.append(ann["category_id"] if rng.random() > 0.15 else int(rng.choice(category_ids)))
                scores.append(rng.uniform(0.3, 1.0))
        while len(masks) < DETECTIONS_PER_IMAGE:
            x, y = rng.integers(0, width - 8), rng.integers(0, height - 8)
            w, h = rng.integers(4, width - x), rng.integers(4, height - y)
            mask = np.zeros((height, width), np.uint8)
            mask[y:y + h, x:x + w] = 1
            masks.append(mask)
            labels.append(int(rng.choice(category_ids)))
            scores.append(rng.uniform(0.0, 0.6))
        for mask, label, score in zip(masks, labels, scores):
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            box = [round(v + float(rng.normal(0, 1.5)), 2) for v in box[:2]] + [round(v, 2) for v in box[2:]]
            results.append({"image_id": image["id"], "category_id": label, "bbox": box,
                            "score": round(float(score), 5), "segmentation": encode_mask(mask)})
    return results


def pycocotools_stats(annotations: Path, results: Path) -> dict[str, np.ndarray]:
    """The reference: pycocotools' COCO, loadRes and COCOeval, mask then box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotations))
        for iou_type in ("segm", "bbox"):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results)), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            stats[iou_type] = evaluation.stats
    return stats


def run(workdir: Path) -> list[dict]:
    from gdis.coco import load_coco
    from gdis.evaluate import STAT_NAMES, coco_metrics
    from gdis.io import write_json
    from gdis.synthetic import SyntheticSpec, generate_synthetic_dataset

    spec = dict(demo_config()["dataset"]["synthetic"], num_train=1)
    generate_synthetic_dataset(workdir / "dataset", SyntheticSpec(**spec))
    annotations = workdir / "dataset" / "annotations" / "val.json"
    results = workdir / "predictions.json"
    predictions = noisy_predictions(load_coco(annotations), seed=0)
    write_json(results, predictions)
    ours_cpu, reference_cpu, ours_wall, reference_wall = [], [], [], []
    for _ in range(REPEATS):  # taking turns spreads a shared machine's load changes over both
        with Clock() as clock, contextlib.redirect_stderr(io.StringIO()):
            ours = coco_metrics(annotations, results)
        ours_cpu.append(clock.cpu)
        ours_wall.append(clock.wall)
        with Clock() as clock:
            reference = pycocotools_stats(annotations, results)
        reference_cpu.append(clock.cpu)
        reference_wall.append(clock.wall)
    differences = []
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        for name, value in zip(STAT_NAMES, reference[iou_type]):
            mine = ours[f"{prefix}_{name}"]
            differences.append(0.0 if value < 0 and mine is None else abs(mine / 100 - value))
    ratio = median(ours_cpu) / median(reference_cpu)
    identical = bool(max(differences) <= 1e-9)
    return [figure(
        "evaluation ÷ pycocotools COCOeval time (mask + box AP)", ratio, "×", f"≤ {GOAL}, identical AP",
        ratio <= GOAL and identical,
        median_cpu_seconds={"gdis": median(ours_cpu), "pycocotools": median(reference_cpu)},
        median_wall_seconds={"gdis": median(ours_wall), "pycocotools": median(reference_wall)},
        wall_ratio=median(ours_wall) / median(reference_wall), max_ap_difference=float(max(differences)),
        mask_AP=ours["mask_AP"], box_AP=ours["box_AP"], num_images=spec["num_val"], num_detections=len(predictions),
        evaluator="faster_coco_eval", repeats=REPEATS,
    )]
