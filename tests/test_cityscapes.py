"""Cityscapes: official archives in, COCO annotations of the 8 instance classes out, evaluated by pycocotools."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from gdis.cityscapes import INSTANCE_CLASSES, instance_annotations, prepare_cityscapes
from gdis.coco import load_coco
from gdis.evaluate import coco_metrics

FRAMES = {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["frankfurt_000000_000294"]}


def _instance_map(seed: int) -> np.ndarray:
    """A 32 x 64 instanceIds map: road (7), two cars, one person, a rider group, a caravan (not evaluated)."""
    ids = np.full((32, 64), 7, dtype=np.int32)
    ids[2:10, 3:20] = 26 * 1000 + 0
    ids[12:20, 30 + seed:50] = 26 * 1000 + 1
    ids[20:31, 5:9] = 24 * 1000 + 0
    ids[22:30, 40:60] = 25  # a group of riders: crowd region
    ids[0:4, 50:60] = 29 * 1000 + 0  # caravan: has instances but is not evaluated
    return ids


def _png(array: np.ndarray) -> bytes:
    """PNG bytes; an integer map is written 16-bit, like the official instanceIds files."""
    buffer = io.BytesIO()
    Image.fromarray(array if array.ndim == 3 else array.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def archives(tmp_path):
    """The two official archives with the official folder layout (README and test split included)."""
    folder = tmp_path / "archives"
    folder.mkdir()
    with zipfile.ZipFile(folder / "gtFine_trainvaltest.zip", "w") as gt, \
            zipfile.ZipFile(folder / "leftImg8bit_trainvaltest.zip", "w") as images:
        gt.writestr("README", "gtFine")
        images.writestr("license.txt", "license")
        for split, frames in {**FRAMES, "test": ["berlin_000000_000019"]}.items():
            for seed, frame in enumerate(frames):
                city = frame.split("_")[0]
                gt.writestr(f"gtFine/{split}/{city}/{frame}_gtFine_instanceIds.png", _png(_instance_map(seed)))
                gt.writestr(f"gtFine/{split}/{city}/{frame}_gtFine_polygons.json", "{}")
                images.writestr(f"leftImg8bit/{split}/{city}/{frame}_leftImg8bit.png",
                                _png(np.zeros((32, 64, 3), np.uint8)))
    return folder


def test_instance_annotations_keep_the_8_classes_and_mark_groups_as_crowd():
    annotations = instance_annotations(_instance_map(0))
    summary = sorted((a["category_id"], a["iscrowd"], a["area"], tuple(a["bbox"])) for a in annotations)
    assert summary == [(24, 0, 44, (5.0, 20.0, 4.0, 11.0)), (25, 1, 160, (40.0, 22.0, 20.0, 8.0)),
                       (26, 0, 136, (3.0, 2.0, 17.0, 8.0)), (26, 0, 160, (30.0, 12.0, 20.0, 8.0))]
    assert len(INSTANCE_CLASSES) == 8


def test_prepare_converts_the_official_layout_and_the_coco_evaluator_runs(archives, tmp_path):
    root = tmp_path / "cityscapes"
    for _ in range(2):  # unpacking again gives the same tree
        prepare_cityscapes(archives, root, workers=1)
    assert sorted(p.name for p in (root / "leftImg8bit").iterdir()) == ["train", "val"]
    train = load_coco(root / "annotations" / "instances_train.json")
    assert [image["file_name"] for image in train["images"]] == [
        "aachen/aachen_000000_000019_leftImg8bit.png", "bochum/bochum_000000_000313_leftImg8bit.png"]
    assert all((root / "leftImg8bit" / "train" / image["file_name"]).is_file() for image in train["images"])
    assert [c["name"] for c in train["categories"]] == list(INSTANCE_CLASSES.values())
    assert len(train["annotations"]) == 8 and sum(a["iscrowd"] for a in train["annotations"]) == 2

    val_path = root / "annotations" / "instances_val.json"
    val = load_coco(val_path)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "bbox": a["bbox"], "score": 1.0} for a in val["annotations"] if not a["iscrowd"]]
    (tmp_path / "predictions.json").write_text(json.dumps(perfect))
    metrics = coco_metrics(val_path, tmp_path / "predictions.json")
    assert metrics["mask_AP"] == pytest.approx(100.0) and metrics["box_AP"] == pytest.approx(100.0)
    (tmp_path / "predictions.json").write_text(json.dumps(perfect[:1]))
    assert coco_metrics(val_path, tmp_path / "predictions.json")["mask_AP"] < 100.0


def test_missing_archives_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip not found in "
                                                r".*dataset.cityscapes.archives_dir"):
        prepare_cityscapes(tmp_path, tmp_path / "cityscapes")
