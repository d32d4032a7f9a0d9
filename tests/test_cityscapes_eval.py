"""Official Cityscapes instance AP (cityscapesscripts) of gdis predictions on a tiny fabricated val tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
from PIL import Image

from gdis.cityscapes import convert_split
from gdis.cityscapes_eval import cityscapes_metrics
from gdis.coco import encode_mask

FRAMES = ["frankfurt_000000_000294", "frankfurt_000001_000538", "lindau_000000_000019"]
HEIGHT, WIDTH = 64, 128  # any size works: the evaluator only compares each mask with its ground-truth map
CAR, PERSON, TRUCK = 26, 24, 27


def _instance_map(shift: int) -> np.ndarray:
    """Road (7), a void strip (0, unlabeled), one car (400 px), one person (240 px) and a car group (26)."""
    ids = np.full((HEIGHT, WIDTH), 7, dtype=np.uint16)
    ids[0:4, :] = 0
    ids[10:30, 10 + shift:30 + shift] = CAR * 1000
    ids[34:54, 50 + shift:62 + shift] = PERSON * 1000
    ids[40:60, 90:120] = CAR
    return ids


@pytest.fixture
def val_tree(tmp_path) -> tuple[Path, dict]:
    """data/<name>/{gtFine,leftImg8bit}/val as 'gdis prepare-dataset' leaves it, and its COCO conversion."""
    root = tmp_path / "cityscapes"
    for shift, frame in enumerate(FRAMES):
        city = frame.split("_")[0]
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_instance_map(3 * shift)).save(root / "gtFine" / "val" / city / f"{frame}_gtFine_instanceIds.png")
        Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(
            root / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png")
    return root / "gtFine" / "val", convert_split(root, "val")


def _oracle(coco: dict, car_shift: int = 0, car_label: int = CAR, score: float = 0.9) -> list[dict]:
    """COCO results made from the ground truth's instances: cars moved right by ``car_shift`` px and given
    ``car_label``, persons exact."""
    results = []
    for ann in coco["annotations"]:
        if ann["iscrowd"]:
            continue
        mask = _decode(ann)
        category = ann["category_id"]
        if category == CAR:
            mask, category = np.roll(mask, car_shift, axis=1), car_label
        results.append({"image_id": ann["image_id"], "category_id": category, "score": score,
                        "segmentation": encode_mask(mask)})
    return results


def _decode(ann: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode("ascii")})


def _extra(image_id: int, rows: slice, columns: slice, label: int, score: float) -> dict:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[rows, columns] = 1
    return {"image_id": image_id, "category_id": label, "score": score, "segmentation": encode_mask(mask)}


def _metrics(val_tree, results, work_dir, **kwargs) -> dict:
    gt_dir, coco = val_tree
    return cityscapes_metrics(results, coco["images"], gt_dir, work_dir, **kwargs)


def test_perfect_predictions_score_100(val_tree, tmp_path):
    metrics = _metrics(val_tree, _oracle(val_tree[1]), tmp_path / "eval")
    assert metrics == {"cityscapes_AP": pytest.approx(100), "cityscapes_AP50": pytest.approx(100)}


def test_predictions_on_void_and_group_regions_are_ignored(val_tree, tmp_path):
    """Confident cars on the unlabeled strip and on the car group are neither hits nor false positives."""
    results = _oracle(val_tree[1]) + [_extra(1, slice(0, 4), slice(40, 80), CAR, 0.99),
                                      _extra(1, slice(40, 60), slice(90, 120), CAR, 0.99)]
    assert _metrics(val_tree, results, tmp_path / "eval")["cityscapes_AP"] == pytest.approx(100)


def test_shifted_cars_match_below_iou_two_thirds(val_tree, tmp_path):
    """A 20 x 20 car moved 4 px has IoU 320 / 480 = 2/3: a hit at IoU thresholds 0.5-0.65 (4 of 10), so car AP is
    40 and AP50 100; the exact persons keep 100; the mean over the two classes with ground truth is 70."""
    metrics = _metrics(val_tree, _oracle(val_tree[1], car_shift=4), tmp_path / "eval")
    assert metrics == {"cityscapes_AP": pytest.approx(70), "cityscapes_AP50": pytest.approx(100)}


def test_wrong_class_scores_zero_for_the_class_it_misses(val_tree, tmp_path):
    """Cars called trucks: car AP 0, truck (no ground truth) left out of the mean, persons 100: AP 50."""
    metrics = _metrics(val_tree, _oracle(val_tree[1], car_label=TRUCK), tmp_path / "eval")
    assert metrics == {"cityscapes_AP": pytest.approx(50), "cityscapes_AP50": pytest.approx(50)}


def test_false_positive_above_the_hit_uses_the_official_integration(val_tree, tmp_path):
    """Each image's exact person (score 0.5) ranks below a confident person on the road (0.9). The person
    precision-recall points are (recall 1, precision 0.5), (0, 0) and the evaluator's artificial (0, 1); its step
    widths [0.5, 0.5, 0] give person AP 0.5 * 0.5 = 25 % at every IoU threshold (COCO's interpolation: 50 %).
    With the exact cars (100) the mean is 62.5."""
    coco = val_tree[1]
    results = _oracle(coco, score=0.5)
    results += [_extra(image["id"], slice(10, 30), slice(70, 85), PERSON, 0.9) for image in coco["images"]]
    metrics = _metrics(val_tree, results, tmp_path / "eval")
    assert metrics == {"cityscapes_AP": pytest.approx(62.5), "cityscapes_AP50": pytest.approx(62.5)}


def test_category_ids_are_mapped_to_label_ids(val_tree, tmp_path):
    contiguous = {CAR: 1, PERSON: 2}
    results = [{**result, "category_id": contiguous[result["category_id"]]} for result in _oracle(val_tree[1])]
    metrics = _metrics(val_tree, results, tmp_path / "eval", category_ids_to_label_ids={1: CAR, 2: PERSON})
    assert metrics["cityscapes_AP"] == pytest.approx(100)


def test_official_format_and_nothing_written_outside_the_work_dir(val_tree, tmp_path, monkeypatch):
    gt_dir, coco = val_tree
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    package_dir = Path(official.__file__).parents[1]
    package_files = sorted(package_dir.rglob("*"))
    gt_files = {path: path.stat().st_mtime_ns for path in gt_dir.parents[1].rglob("*")}
    work_dir = tmp_path / "eval"
    _metrics(val_tree, _oracle(coco), work_dir)
    assert list(cwd.iterdir()) == [] and Path.cwd() == cwd
    assert sorted(package_dir.rglob("*")) == package_files
    assert {path: path.stat().st_mtime_ns for path in gt_dir.parents[1].rglob("*")} == gt_files
    assert official.np is np  # the NumPy stand-in is gone
    assert {path.name for path in work_dir.iterdir()} == {"predictions", "gtInstances.json", "matches.json",
                                                          "resultInstanceLevelSemanticLabeling.json"}
    lines = (work_dir / "predictions" / "frankfurt" / f"{FRAMES[0]}_pred.txt").read_text().splitlines()
    assert lines == [f"{FRAMES[0]}_0000.png {PERSON} 0.9", f"{FRAMES[0]}_0001.png {CAR} 0.9"]
    mask = np.array(Image.open(work_dir / "predictions" / "frankfurt" / f"{FRAMES[0]}_0001.png"))
    assert mask.shape == (HEIGHT, WIDTH) and mask.sum() == 400


def test_bad_input_is_named(val_tree, tmp_path):
    gt_dir, coco = val_tree
    results = _oracle(coco)
    with pytest.raises(ValueError, match="category id 99"):
        cityscapes_metrics([{**results[0], "category_id": 99}], coco["images"], gt_dir, tmp_path / "a")
    with pytest.raises(ValueError, match=r"label id\(s\) \[29\] are not among"):  # caravan: not evaluated
        cityscapes_metrics(results, coco["images"], gt_dir, tmp_path / "f", category_ids_to_label_ids={CAR: 29})
    with pytest.raises(ValueError, match="image id 42"):
        cityscapes_metrics([{**results[0], "image_id": 42}], coco["images"], gt_dir, tmp_path / "b")
    small = {**results[0], "segmentation": encode_mask(np.ones((32, 64), np.uint8))}
    with pytest.raises(ValueError, match=r"32x64 mask; its ground truth .* is 64x128"):
        cityscapes_metrics([small], coco["images"], gt_dir, tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gtInstances.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        cityscapes_metrics(results, coco["images"], gt_dir, tmp_path / "d")
    (gt_dir / "lindau" / f"{FRAMES[2]}_gtFine_instanceIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{FRAMES[2]}_gtFine_instanceIds.png"):
        cityscapes_metrics(results, coco["images"], gt_dir, tmp_path / "e")
