"""Cityscapes instance-level AP by the official evaluator (cityscapesscripts), the metric of the published numbers.

gdis's predictions (COCO results: RLE mask, category id, score) are written in the official result format, per
image a text file of lines ``<mask PNG> <label id> <score>`` beside its mask PNGs, and scored against the gtFine
``*_instanceIds.png`` maps by ``evalInstanceLevelSemanticLabeling.evaluateImgLists``, the function behind the
official script and behind detectron2's ``CityscapesInstanceEvaluator``, which the reference's ``train_net.py``
uses for Cityscapes. AP there averages over IoU 0.5:0.95 and the 8 classes, ignores ground truth under 100 pixels
and predictions lying on void or group regions: it is not COCO mask AP.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import types
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
from PIL import Image
from pycocotools import mask as mask_utils

from gdis.cityscapes import IMAGE_SUFFIX, INSTANCE_CLASSES, INSTANCE_SUFFIX

log = logging.getLogger(__name__)

# gdis's Cityscapes COCO files use the official label ids as category ids (gdis/cityscapes.py, convert_split).
GDIS_LABEL_IDS = {label_id: label_id for label_id in INSTANCE_CLASSES}
OFFICIAL_RESULTS_FILE = "resultInstanceLevelSemanticLabeling.json"
GT_CACHE_FILE = "gtInstances.json"
# The evaluator's own constants, taken from its module: IoU thresholds, minimum ground-truth region (100 px)
# and the distance settings that are unused without depth (distanceAvailable False).
OFFICIAL_PARAMETERS = ("overlaps", "minRegionSizes", "distanceThs", "distanceConfs")


def frame_name(file_name: str) -> str:
    """``<city>_<sequence>_<frame>`` of an image named ``<city>/<city>_<sequence>_<frame>_leftImg8bit.png``."""
    name = Path(file_name).name
    if not name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"image {file_name!r} is not named <city>_<sequence>_<frame>{IMAGE_SUFFIX}")
    return name.removesuffix(IMAGE_SUFFIX)


def ground_truth_file(gt_dir: str | Path, file_name: str) -> Path:
    """The ``*_gtFine_instanceIds.png`` of an image named ``<city>/<frame>_leftImg8bit.png``, under ``gt_dir``."""
    return Path(gt_dir) / Path(file_name).parent / f"{frame_name(file_name)}{INSTANCE_SUFFIX}"


def write_official_predictions(results: list[dict], images: list[dict], category_ids_to_label_ids: Mapping[int, int],
                               gt_dir: str | Path, predictions_dir: str | Path) -> list[tuple[Path, Path]]:
    """Write ``results`` in the official format under ``predictions_dir``; (prediction text, ground truth) per image.

    Every image of ``images`` gets a text file, empty when it has no detection. Empty masks are not written:
    the evaluator skips them.
    """
    not_evaluated = sorted(set(category_ids_to_label_ids.values()) - set(INSTANCE_CLASSES))
    if not_evaluated:
        raise ValueError(f"label id(s) {not_evaluated} are not among the evaluated Cityscapes instance classes "
                         f"{sorted(INSTANCE_CLASSES)}")
    predictions_dir = Path(predictions_dir)
    by_image = defaultdict(list)
    known_ids = {image["id"] for image in images}
    for result in results:
        if result["image_id"] not in known_ids:
            raise ValueError(f"a prediction names image id {result['image_id']}, which is not among the "
                             f"{len(images)} evaluated images")
        if result["category_id"] not in category_ids_to_label_ids:
            raise ValueError(f"a prediction of image id {result['image_id']} has category id {result['category_id']}, "
                             f"which has no Cityscapes label id (known: {sorted(category_ids_to_label_ids)})")
        by_image[result["image_id"]].append(result)
    pairs = []
    for image in sorted(images, key=lambda image: image["file_name"]):
        gt_file = ground_truth_file(gt_dir, image["file_name"])
        if not gt_file.is_file():
            raise FileNotFoundError(f"no ground truth {gt_file} for image id {image['id']} ({image['file_name']})")
        with Image.open(gt_file) as gt_image:
            gt_width, gt_height = gt_image.size
        frame = frame_name(image["file_name"])
        folder = predictions_dir / Path(image["file_name"]).parent.name
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for index, result in enumerate(by_image[image["id"]]):
            rle = result["segmentation"]
            if list(rle["size"]) != [gt_height, gt_width]:
                raise ValueError(f"a prediction of image id {image['id']} has a {rle['size'][0]}x{rle['size'][1]} "
                                 f"mask; its ground truth {gt_file} is {gt_height}x{gt_width}")
            mask = mask_utils.decode(rle).astype(bool)
            if not mask.any():
                continue
            mask_name = f"{frame}_{index:04d}.png"
            Image.fromarray(mask).save(folder / mask_name, format="PNG", compress_level=1)  # 1-bit PNG
            label_id = category_ids_to_label_ids[result["category_id"]]
            lines.append(f"{mask_name} {label_id} {float(result['score'])!r}\n")
        prediction_file = folder / f"{frame}_pred.txt"
        prediction_file.write_text("".join(lines), encoding="utf-8")
        pairs.append((prediction_file, gt_file))
    return pairs


def official_arguments(work_dir: Path, predictions_dir: Path) -> official.CArgs:
    """The evaluator's settings object, every field it reads set here: its caches and outputs stay in ``work_dir``."""
    arguments = official.CArgs()
    for name in OFFICIAL_PARAMETERS:
        setattr(arguments, name, np.copy(getattr(official.args, name)))
    arguments.distanceAvailable = False
    arguments.predictionPath = str(predictions_dir.resolve())  # masks must lie under it
    arguments.predictionWalk = None  # used only to search for prediction files; ours are given
    arguments.gtInstancesFile = str(work_dir.resolve() / GT_CACHE_FILE)
    arguments.exportFile = str(work_dir.resolve() / OFFICIAL_RESULTS_FILE)
    arguments.JSONOutput = True
    arguments.quiet = True
    arguments.csv = False
    arguments.colorized = False
    arguments.instLabels = []  # filled by the evaluator from its label table
    return arguments


class _NumpyForCityscapesScripts(types.ModuleType):
    """NumPy as cityscapesscripts 2.3.0 (the newest release) was written for, seen only by its evaluator module.

    Two NumPy changes break it: ``in1d`` was removed in NumPy 2.4 (``np.isin`` of the flattened array is the
    documented replacement, same values), and ``count_nonzero`` of a whole array now returns ``np.int64``, not
    a Python int, which the evaluator's JSON writer (``writeDict2JSON`` of ``matches.json``) cannot encode.
    """

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)

    @staticmethod
    def count_nonzero(a) -> int:
        return int(np.count_nonzero(a))


@contextlib.contextmanager
def _evaluator_environment(work_dir: Path) -> Iterator[io.StringIO]:
    """Inside ``work_dir`` (the evaluator writes ``matches.json`` to the current directory), the evaluator's module
    seeing ``_NumpyForCityscapesScripts``; both undone on exit. Yields the evaluator's captured standard output."""
    previous_directory, previous_numpy = os.getcwd(), official.np
    output = io.StringIO()
    try:
        official.np = _NumpyForCityscapesScripts("numpy")
        os.chdir(work_dir)
        with contextlib.redirect_stdout(output):
            yield output
    finally:
        os.chdir(previous_directory)
        official.np = previous_numpy


def run_official_evaluator(pairs: list[tuple[Path, Path]], arguments: official.CArgs, work_dir: Path) -> dict:
    """``evaluateImgLists`` on (prediction text, ground truth) pairs; its result dict (``averages`` etc.)."""
    prediction_files = [str(prediction.resolve()) for prediction, _ in pairs]
    gt_files = [str(gt.resolve()) for _, gt in pairs]
    with _evaluator_environment(work_dir) as output:
        try:
            return official.evaluateImgLists(prediction_files, gt_files, arguments)
        except SystemExit:  # its printError prints 'ERROR: ...' and exits
            message = output.getvalue().strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"the official Cityscapes evaluator stopped: {message[0]}") from None


def _percent(value: float) -> float | None:
    """A fraction as percent; None where the evaluator found no ground truth (NaN)."""
    return None if math.isnan(value) else 100.0 * float(value)


def cityscapes_metrics(results: list[dict], images: list[dict], gt_dir: str | Path, work_dir: str | Path,
                       category_ids_to_label_ids: Mapping[int, int] = GDIS_LABEL_IDS) -> dict:
    """Official Cityscapes instance AP and AP50 (percent) of COCO ``results`` on ``images`` (COCO image entries).

    ``gt_dir`` holds ``<city>/*_gtFine_instanceIds.png`` (``data/<name>/gtFine/val`` after ``gdis prepare-dataset``);
    ``work_dir``, created if missing and required empty, receives the predictions in the official format, the
    evaluator's ground-truth cache and its full result file (``resultInstanceLevelSemanticLabeling.json``).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if any(work_dir.iterdir()):
        raise ValueError(f"Cityscapes evaluation folder {work_dir} is not empty: the official evaluator would reuse "
                         f"a stale {GT_CACHE_FILE} there")
    predictions_dir = work_dir / "predictions"
    pairs = write_official_predictions(results, images, category_ids_to_label_ids, gt_dir, predictions_dir)
    if not pairs:
        raise ValueError("no images to evaluate")
    averages = run_official_evaluator(pairs, official_arguments(work_dir, predictions_dir), work_dir)["averages"]
    for name, values in averages["classes"].items():
        log.info("Cityscapes %-10s AP %6.2f  AP50 %6.2f", name, 100 * values["ap"], 100 * values["ap50%"])
    return {"cityscapes_AP": _percent(averages["allAp"]), "cityscapes_AP50": _percent(averages["allAp50%"])}
