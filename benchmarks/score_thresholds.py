"""A run's detections as pseudo-labels at each score threshold: how many per image, their precision and recall.

``python -m benchmarks.score_thresholds --annotations VAL.json --predictions PREDICTIONS.json
[--thresholds 0.1 0.3 0.5 0.7]``

PREDICTIONS.json is a run's val predictions as ``gdis evaluate`` writes them
(results/eval/<dataset>/<network>/<method>/<p>pct/fold<k>/predictions/student.json). A supervised run is the
teacher of the guided run of its split, so this is what its pseudo-labels would be at each
``train.pseudo_label.score_threshold``, measured as the training log measures pseudo-labels against the hidden
annotations (``gdis.pseudo_quality.match_quality``: the same class, mask IoU >= 0.5, one to one), on the
val images, whose labels a user has, instead of the unlabelled ones. ``min_area`` is not applied. A
Mask2Former prediction's score is its class probability times its mean mask probability, a little below the
class probability its pseudo-label rule thresholds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def threshold_table(coco: dict, predictions: list[dict], thresholds: tuple[float, ...]) -> list[dict]:
    """Per threshold: pseudo-labels per image, precision and recall (None where undefined)."""
    from gdis.coco import annotation_mask
    from gdis.pseudo_quality import match_quality, quality_record

    images = {image["id"]: image for image in coco["images"]}
    truth, found = defaultdict(list), defaultdict(list)
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            truth[ann["image_id"]].append(ann)
    for prediction in predictions:
        found[prediction["image_id"]].append(prediction)

    def masks_and_labels(anns: list[dict], image: dict) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image["height"], image["width"]
        if not anns:
            return torch.zeros((0, height, width), dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
        masks = torch.stack([torch.from_numpy(annotation_mask(ann, height, width)).bool() for ann in anns])
        return masks, torch.tensor([ann["category_id"] for ann in anns])

    ground_truth = {image_id: masks_and_labels(truth[image_id], image) for image_id, image in images.items()}
    rows = []
    for threshold in thresholds:
        per_image = []
        for image_id, image in images.items():
            kept = [prediction for prediction in found[image_id] if prediction["score"] > threshold]
            masks, labels = masks_and_labels(kept, image)
            per_image.append(match_quality(masks, labels, *ground_truth[image_id]))
        record = quality_record(per_image)
        rows.append({"threshold": threshold,
                     "per_image": sum(image["pseudo_labels"] for image in per_image) / len(per_image),
                     "precision": record["pseudo_label_precision"], "recall": record["pseudo_label_recall"]})
    return rows


def markdown(rows: list[dict]) -> str:
    def cell(value):
        return "–" if value is None else f"{value:.2f}"

    lines = ["| score threshold | pseudo-labels per image | precision | recall |", "|---:|---:|---:|---:|"]
    lines += [f"| {row['threshold']} | {row['per_image']:.2f} | {cell(row['precision'])} | {cell(row['recall'])} |"
              for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="the val set's COCO annotations")
    parser.add_argument("--predictions", required=True, help="a run's val predictions (COCO results JSON)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    args = parser.parse_args(argv)
    with open(args.annotations) as file:
        coco = json.load(file)
    with open(args.predictions) as file:
        predictions = json.load(file)
    print(markdown(threshold_table(coco, predictions, tuple(args.thresholds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
