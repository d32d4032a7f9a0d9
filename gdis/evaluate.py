"""COCO evaluation: predictions as a COCO results file, then COCOeval on that file.

Two evaluators give the same AP (tested to 1e-9): ``faster_coco_eval`` runs COCOeval's matching and
accumulation in C++, several times faster than the reference, ``pycocotools``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from tqdm import tqdm

from gdis.check_dataset import usable_coco
from gdis.coco import encode_mask
from gdis.data import CocoInstances, collate, to_float
from gdis.io import read_json, write_json

log = logging.getLogger(__name__)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
EVALUATORS = ("faster_coco_eval", "pycocotools")


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


def _coco_api(evaluator: str) -> tuple:
    """The COCO and COCOeval classes of ``evaluator``, and COCOeval's extra keyword arguments."""
    if evaluator == "pycocotools":
        return COCO, COCOeval, {}
    if evaluator == "faster_coco_eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        # One thread for mask IoUs: an evaluation job holds one core (evaluate.threads).
        return FastCOCO, COCOeval_faster, {"print_function": print, "rle_iou_max_workers": 1}
    raise ValueError(f"evaluate.evaluator: unknown evaluator {evaluator!r}; expected one of {', '.join(EVALUATORS)}")


def results_for_pass(results: list[dict], iou_type: str) -> list[dict]:
    """Fresh copies of the result entries for one COCOeval pass; without ``bbox`` for the mask (segm) pass.

    loadRes of pycocotools and of faster_coco_eval takes a detection's area, which sorts it into the
    small/medium/large ranges, from its ``bbox`` whenever the first entry has one, and from its mask only
    otherwise. detectron2 (evaluation/coco_evaluation.py, _evaluate_predictions_on_coco) and mmdetection
    (CocoMetric) drop the boxes for the mask pass so that mask APs/APm/APl use mask areas; overall AP is the
    same either way. Copies, because loadRes writes area, id, iscrowd (and a bbox from the mask) into them.
    """
    if iou_type == "segm":
        return [{key: value for key, value in entry.items() if key != "bbox"} for entry in results]
    return [dict(entry) for entry in results]


def coco_metrics(annotations: str | Path | dict, results_path: str | Path, evaluator: str = "faster_coco_eval") -> dict:
    """Mask and box AP (in percent) of a COCO results file against a COCO file or dict, by ``evaluator``'s COCOeval.

    Mask APs/APm/APl sort detections by mask area, box APs/APm/APl by box area (``results_for_pass``).
    """
    return coco_metrics_of(annotations, read_json(results_path, "predictions file"), evaluator)


def coco_metrics_of(annotations: str | Path | dict, results: list[dict], evaluator: str = "faster_coco_eval") -> dict:
    """``coco_metrics`` of COCO result entries in memory."""
    coco_class, eval_class, eval_options = _coco_api(evaluator)
    with contextlib.redirect_stdout(sys.stderr):
        if isinstance(annotations, dict) and coco_class is COCO:  # pycocotools' COCO reads files only
            ground_truth = COCO()
            ground_truth.dataset = annotations
            ground_truth.createIndex()
        else:
            ground_truth = coco_class(annotations if isinstance(annotations, dict) else str(annotations))
        metrics = {}
        for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
            if not results:
                metrics.update({f"{prefix}_{name}": 0.0 for name in STAT_NAMES})
                continue
            detections = ground_truth.loadRes(results_for_pass(results, iou_type))
            evaluation = eval_class(ground_truth, detections, iou_type, **eval_options)
            evaluation.evaluate()
            evaluation.accumulate()
            print(f"--- {iou_type} ---")
            evaluation.summarize()
            for name, value in zip(STAT_NAMES, evaluation.stats[: len(STAT_NAMES)]):
                metrics[f"{prefix}_{name}"] = None if value < 0 else 100.0 * float(value)
    return metrics


def evaluate_network(model, category_ids: list[int], annotations_path: str | Path, images_dir: str | Path,
                     predictions_path: str | Path, batch_size: int, evaluator: str = "faster_coco_eval",
                     dataset_check: dict | None = None) -> dict:
    """Predict the val set, write the COCO results file, and evaluate that very file.

    With a ``dataset_check`` report, the images and annotations it excludes are left out of both.
    """
    coco = usable_coco(annotations_path, dataset_check)
    unknown = sorted(set(category_ids) - {category["id"] for category in coco["categories"]})
    if unknown:
        raise ValueError(f"the model predicts category ids {unknown} that {annotations_path} does not define")
    with torch.inference_mode():
        results = predict_dataset(model, coco, images_dir, category_ids, batch_size)
    write_json(predictions_path, results)
    metrics = coco_metrics(coco if dataset_check else annotations_path, predictions_path, evaluator)
    metrics["num_images"] = len(coco["images"])
    return metrics


def evaluate_run(config: dict, checkpoint: str | Path, run_record: str | Path, annotations_path: str | Path,
                 images_dir: str | Path, predictions_dir: str | Path, metrics_path: str | Path,
                 dataset_check: dict | None = None, cityscapes_ground_truth: str | Path | None = None,
                 galleries: tuple | None = None) -> dict:
    """``gdis evaluate``: AP of every network of a finished run (the student, and after distillation the EMA
    teacher), each a row of the results table (``gdis.report.metrics_row``), written to ``metrics_path`` as
    {network: row}; each network's COCO results to ``predictions_dir/<network>.json``.

    With ``cityscapes_ground_truth`` (gtFine/val), the official Cityscapes AP and AP50 are added. With
    ``galleries`` = (RunGalleryFiles, val PNG, unlabelled PNG), the run's galleries are drawn from the same
    networks (``gdis.visualize.draw_run_galleries``).
    """
    from gdis.report import metrics_row
    from gdis.visualize import draw_run_galleries, load_run_networks

    torch.set_num_threads(config["evaluate"]["threads"])
    run = read_json(run_record, "run record")
    networks, state = load_run_networks(checkpoint, config["model"])
    rows = {}
    for name, network in networks.items():
        predictions = Path(predictions_dir) / f"{name}.json"
        metrics = evaluate_network(network, state["category_ids"], annotations_path, images_dir, predictions,
                                   config["evaluate"]["batch_size"], config["evaluate"]["evaluator"], dataset_check)
        if cityscapes_ground_truth:
            metrics.update(_cityscapes_metrics(predictions, annotations_path, dataset_check, cityscapes_ground_truth))
        rows[name] = metrics_row(config, run, state, name, metrics)
        log.info("%s %s: mask AP %.2f, box AP %.2f", state["method"], name, metrics["mask_AP"], metrics["box_AP"])
    write_json(metrics_path, rows, indent=1)
    if galleries:
        draw_run_galleries(config, networks, state, *galleries)
    return rows


def _cityscapes_metrics(predictions: Path, annotations_path: str | Path, dataset_check: dict | None,
                        ground_truth: str | Path) -> dict:
    import tempfile

    from gdis.cityscapes_eval import cityscapes_metrics

    images = usable_coco(annotations_path, dataset_check)["images"]
    with tempfile.TemporaryDirectory(prefix="cityscapes-eval-") as work_dir:
        return cityscapes_metrics(read_json(predictions, "predictions file"), images, ground_truth, work_dir)


class ValidationSet:
    """The val set, loaded once, for evaluating networks during training (``train.eval_period``)."""

    def __init__(self, annotations_path: str | Path, images_dir: str | Path, dataset_check: dict | None = None) -> None:
        self.coco = usable_coco(annotations_path, dataset_check)
        self.images_dir = images_dir

    def metrics(self, model, category_ids: list[int], batch_size: int, evaluator: str) -> dict:
        """Mask and box AP of ``model`` on the val set; nothing is written."""
        with torch.inference_mode():
            results = predict_dataset(model, self.coco, self.images_dir, category_ids, batch_size)
        return coco_metrics_of(self.coco, results, evaluator)
