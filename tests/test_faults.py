"""Fault injection: bad datasets, bad configs, malicious checkpoints, kills mid-write, NaN losses, full disks.

Every fault must end in a clear error that names the culprit, or in a correct recovery, and never
in a finished-looking corrupt file. The suite counts what it tried and prints the tally at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pathlib
import pickle
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gdis.check_dataset import (
    ANNOTATION_ERRORS,
    IMAGE_ERRORS,
    NOTES,
    POLICIES,
    check_dataset,
    usable_coco,
)
from gdis.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from gdis.coco import DatasetError, encode_mask
from gdis.config import ConfigError, load_config, validate_config
from gdis.data import CocoInstances, read_image
from gdis.io import write_json, write_text
from gdis.models import build_model
from gdis.models.weights import load_backbone_state
from gdis.splits import write_split
from gdis.synthetic import SyntheticSpec, generate_synthetic_dataset
from gdis.trainer import TrainingError
from tests.conftest import split_trainer, train_file_args

TALLY: Counter = Counter()
MINIMUM = {"bad dataset input": 25, "bad config": 10}


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    """Print what the suite tried once the module is done."""
    yield
    lines = ["", "fault-injection tally:"] + [f"  {kind}: {count}" for kind, count in sorted(TALLY.items())]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even without -s
        print("\n".join(lines), file=sys.stderr)


# -- bad dataset input --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "dataset"
    generate_synthetic_dataset(root, SyntheticSpec(seed=5, num_train=4, num_val=1, image_size=32, max_objects=2,
                                                   min_object_size=0.3))
    return root


@pytest.fixture
def dataset(tiny_dataset, tmp_path, monkeypatch) -> tuple[Path, dict]:
    """A private copy of the tiny dataset and its training annotations, to break."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after a breaker lowers it
    root = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, root)
    return root, json.loads((root / "annotations" / "train.json").read_text())


def _image_file(root: Path, coco: dict, index: int = 0) -> Path:
    return root / "train" / coco["images"][index]["file_name"]


def _first_ann(coco: dict) -> dict:
    return coco["annotations"][0]


def _rewrite(path: Path, mode: str, **save) -> None:
    with Image.open(path) as handle:
        rgb = handle.convert("RGB")
    rgb.convert(mode).save(path, **save)


def _sixteen_bit(path: Path) -> None:
    with Image.open(path) as handle:
        gray = np.asarray(handle.convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(path)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(path) as handle:
        rgb = handle.convert("RGB")
    rgb.save(path, exif=exif)


def _set(obj: dict, key: str, value) -> None:
    obj[key] = value


BOMB_SIDE = 14000  # 196M pixels: over 2 x PIL.Image.MAX_IMAGE_PIXELS (~179M), so Pillow refuses to open it


def _flat_png(path: Path, side: int = BOMB_SIDE) -> None:
    """A real, valid black 8-bit grayscale PNG of side x side pixels; a flat image compresses to ~1/1000."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    compressor, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0, then the row
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _outside(root: Path, coco: dict, absolute: bool) -> None:
    """Point image 0 at a real, readable copy of its file outside the images folder."""
    outside = root / "outside.png"
    shutil.copy(_image_file(root, coco), outside)
    coco["images"][0]["file_name"] = str(outside) if absolute else "../outside.png"


def _collinear(coco: dict) -> None:
    _first_ann(coco)["segmentation"] = [[1, 1, 5, 5, 10, 10]]


def _bad_uncompressed_rle(coco: dict) -> None:
    image = coco["images"][0]
    _first_ann(coco)["segmentation"] = {"size": [image["height"], image["width"]], "counts": [5, 10]}


def _bad_compressed_rle(coco: dict) -> None:
    image = coco["images"][0]
    _first_ann(coco)["segmentation"] = {"size": [image["height"], image["width"]], "counts": "0{}\x7f"}


def _short_compressed_rle(coco: dict) -> None:
    image = coco["images"][0]
    mask = np.zeros((image["height"], image["width"]), np.uint8)
    mask[2:9, 3:7] = 1
    rle = encode_mask(mask)
    rle["counts"] = rle["counts"][:-2]  # a truncated RLE must never reach pycocotools' unchecked decoder
    _first_ann(coco)["segmentation"] = rle


def _rle_wrong_size(coco: dict) -> None:
    mask = np.ones((8, 8), np.uint8)
    _first_ann(coco)["segmentation"] = encode_mask(mask)


# (name, expected kind, breaker(root, coco)); the breaker hits image index 0 or the first annotation.
IMAGE_CASES = [
    ("missing file", "missing_file", lambda root, coco: _image_file(root, coco).unlink()),
    ("not an image", "unreadable_file", lambda root, coco: _image_file(root, coco).write_text("hello")),
    ("empty file", "unreadable_file", lambda root, coco: _image_file(root, coco).write_bytes(b"")),
    ("truncated image", "corrupt_image",
     lambda root, coco: _image_file(root, coco).write_bytes(_image_file(root, coco).read_bytes()[:300])),
    ("corrupt image data", "corrupt_image", lambda root, coco: _image_file(root, coco).write_bytes(
        _image_file(root, coco).read_bytes()[:200] + bytes(64) + _image_file(root, coco).read_bytes()[264:])),
    ("size mismatch with the JSON", "size_mismatch", lambda root, coco: _set(coco["images"][0], "width", 40)),
    ("decompression bomb", "decompression_bomb", lambda root, coco: _flat_png(_image_file(root, coco))),
    ("file_name going up out of the folder", "file_outside_images", lambda root, coco: _outside(root, coco, False)),
    ("absolute file_name", "file_outside_images", lambda root, coco: _outside(root, coco, True)),
    ("image without file_name", "image_missing_field", lambda root, coco: coco["images"][0].pop("file_name")),
    ("image id not an integer", "image_missing_field", lambda root, coco: _set(coco["images"][0], "id", "one")),
    ("zero image height", "image_bad_size", lambda root, coco: _set(coco["images"][0], "height", 0)),
    ("duplicate image id", "duplicate_image_id", lambda root, coco: _set(coco["images"][1], "id", coco["images"][0]["id"])),
]
ANNOTATION_CASES = [
    ("unknown image id", "unknown_image_id", lambda root, coco: _set(_first_ann(coco), "image_id", 999)),
    ("unknown category id", "unknown_category_id", lambda root, coco: _set(_first_ann(coco), "category_id", 999)),
    ("duplicate annotation id", "duplicate_annotation_id",
     lambda root, coco: _set(coco["annotations"][1], "id", _first_ann(coco)["id"])),
    ("annotation without segmentation", "annotation_missing_field", lambda root, coco: _first_ann(coco).pop("segmentation")),
    ("polygon with two points", "polygon_too_few_points",
     lambda root, coco: _set(_first_ann(coco), "segmentation", [[1, 1, 9, 9]])),
    ("polygon with an odd length", "bad_polygon",
     lambda root, coco: _set(_first_ann(coco), "segmentation", [[1, 1, 9, 1, 9]])),
    ("polygon with NaN", "polygon_not_finite",
     lambda root, coco: _set(_first_ann(coco), "segmentation", [[1, 1, 9, 1, float("nan"), 9]])),
    ("polygon outside the image", "polygon_outside_image",
     lambda root, coco: _set(_first_ann(coco), "segmentation", [[1, 1, 90, 1, 90, 90]])),
    ("empty segmentation", "empty_segmentation", lambda root, coco: _set(_first_ann(coco), "segmentation", [])),
    ("zero-area polygon", "empty_mask", lambda root, coco: _collinear(coco)),
    ("RLE counts not covering the image", "invalid_rle", lambda root, coco: _bad_uncompressed_rle(coco)),
    ("RLE string with foreign characters", "invalid_rle", lambda root, coco: _bad_compressed_rle(coco)),
    ("truncated RLE string", "invalid_rle", lambda root, coco: _short_compressed_rle(coco)),
    ("RLE of another size", "rle_size_mismatch", lambda root, coco: _rle_wrong_size(coco)),
    ("bbox of three numbers", "bad_bbox", lambda root, coco: _set(_first_ann(coco), "bbox", [1, 2, 3])),
    ("bbox with infinity", "bad_bbox", lambda root, coco: _set(_first_ann(coco), "bbox", [1, 2, float("inf"), 3])),
    ("zero-width bbox", "degenerate_bbox", lambda root, coco: _set(_first_ann(coco), "bbox", [1, 2, 0, 3])),
    ("bbox outside the image", "bbox_outside_image", lambda root, coco: _set(_first_ann(coco), "bbox", [20, 20, 50, 50])),
    ("negative area", "bad_area", lambda root, coco: _set(_first_ann(coco), "area", -1.0)),
    ("area not a number", "bad_area", lambda root, coco: _set(_first_ann(coco), "area", "12")),
    ("iscrowd of 2", "bad_iscrowd", lambda root, coco: _set(_first_ann(coco), "iscrowd", 2)),
]
NOTE_CASES = [
    ("crowd region", "crowd_region", lambda root, coco: _set(_first_ann(coco), "iscrowd", 1)),
    ("image without annotations", "no_annotations", lambda root, coco: coco.update(
        annotations=[a for a in coco["annotations"] if a["image_id"] != coco["images"][0]["id"]])),
    ("grayscale image", "grayscale_image", lambda root, coco: _rewrite(_image_file(root, coco), "L")),
    ("RGBA image", "alpha_channel", lambda root, coco: _rewrite(_image_file(root, coco), "RGBA")),
    ("16-bit image", "sixteen_bit_image", lambda root, coco: _sixteen_bit(_image_file(root, coco))),
    ("EXIF-rotated image", "exif_rotated", lambda root, coco: _exif_rotated(_image_file(root, coco))),
    ("CMYK image", "other_color_mode", lambda root, coco: _rewrite(_image_file(root, coco), "CMYK", format="JPEG")),
    ("annotation without area", "missing_area", lambda root, coco: _first_ann(coco).pop("area")),
    ("annotation with a null area", "missing_area", lambda root, coco: _set(_first_ann(coco), "area", None)),
    # 32 x 32 = 1024 pixels: over the limit (Pillow warns), not over twice the limit (Pillow refuses).
    ("image over MAX_IMAGE_PIXELS", "large_image", lambda root, coco: setattr(Image, "MAX_IMAGE_PIXELS", 600)),
]


def _break(dataset, breaker) -> tuple[Path, dict]:
    root, coco = dataset
    original = copy.deepcopy(coco)
    breaker(root, coco)
    (root / "annotations" / "train.json").write_text(json.dumps(coco))
    return root, original


def _read_everything(coco: dict, images_dir: Path) -> int:
    """Read every image and target the way training does; return the number of instances."""
    instances = 0
    for image, target in CocoInstances(coco, images_dir):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert len(target["masks"]) == len(target["boxes"]) == len(target["labels"])
        instances += len(target["labels"])
    return instances


@pytest.mark.parametrize("name, kind, breaker", IMAGE_CASES + ANNOTATION_CASES, ids=[c[0] for c in IMAGE_CASES + ANNOTATION_CASES])
def test_bad_dataset_input(dataset, name, kind, breaker):
    """Fail: an error listing the item. Skip: the item (and nothing else usable) left out, the rest reads."""
    root, original = _break(dataset, breaker)
    annotations, images = root / "annotations" / "train.json", root / "train"
    with pytest.raises(DatasetError) as failed:
        check_dataset(annotations, images, "fail")
    message = str(failed.value)
    assert "dataset.on_bad_input: skip" in message

    report = check_dataset(annotations, images, "skip")
    assert f"{len(report['errors'])} problem(s)" in message
    assert all(f["message"] in message for f in report["errors"])
    kinds = [f["kind"] for f in report["errors"]]
    finding = report["errors"][0]
    first_image, first_ann = original["images"][0], original["annotations"][0]
    if kind in IMAGE_ERRORS:
        # Changing an image id also orphans the annotations that pointed at the old one.
        assert kind in kinds and set(kinds) <= {kind, "unknown_image_id"}
        assert report["skipped_images"] == kinds.count(kind)
        assert finding["image_id"] == first_image["id"] or kind == "image_missing_field"
        assert f"image {first_image['id']}" in finding["message"] or "images[0]" in finding["message"]
        if kind in ("missing_file", "unreadable_file", "corrupt_image", "size_mismatch", "decompression_bomb"):
            assert finding["file"] == str(images / first_image["file_name"]) and finding["file"] in finding["message"]
        if kind == "decompression_bomb":
            assert f"{BOMB_SIDE * BOMB_SIDE} pixels" in finding["message"] and "decompression bomb" in finding["message"]
        if kind == "file_outside_images":
            assert finding["file"].endswith("outside.png") and repr(finding["file"]) in finding["message"]
    else:
        assert kind in ANNOTATION_ERRORS and set(kinds) == {kind}
        assert report["skipped_images"] == 0 and report["skipped_annotations"] == len(report["errors"])
        assert finding["annotation_id"] == first_ann["id"] and f"annotation {first_ann['id']} " in finding["message"] \
            or kind == "annotation_missing_field" and "annotations[0]" in finding["message"]

    usable = usable_coco(annotations, report)
    assert len(usable["images"]) == report["num_images"] - report["skipped_images"]
    assert len(usable["annotations"]) == report["num_annotations"] - report["skipped_annotations"]
    assert _read_everything(usable, images) > 0
    TALLY["bad dataset input"] += 1


@pytest.mark.parametrize("name, kind, breaker", NOTE_CASES, ids=[c[0] for c in NOTE_CASES])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # read_image below, as training reads it
def test_handled_dataset_oddity(dataset, name, kind, breaker):
    """Notes do not stop a run; the reader handles the image correctly."""
    root, original = _break(dataset, breaker)
    annotations, images = root / "annotations" / "train.json", root / "train"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the check turns Pillow's warnings into notes, also under -W error
        report = check_dataset(annotations, images, "fail")
    assert not report["errors"] and report["skipped_images"] == report["skipped_annotations"] == 0
    assert kind in [f["kind"] for f in report["notes"]]
    if kind == "missing_area":  # computed from the segmentation, and in what splits and evaluation read
        assert report["computed_areas"] == {"0": float(_first_ann(original)["area"])}
        assert usable_coco(annotations, report)["annotations"][0]["area"] == _first_ann(original)["area"]
    info = original["images"][0]
    pixels = read_image(images / info["file_name"], info)
    assert pixels.shape == (3, info["height"], info["width"])
    if kind in ("grayscale_image", "sixteen_bit_image"):
        assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])
        assert 0 < int(pixels.float().mean()) < 250, "16-bit pixels must be scaled, not saturated"
    _read_everything(usable_coco(annotations, report), images)
    TALLY["bad dataset input"] += 1


def test_computed_area_is_what_evaluation_reads(dataset, tmp_path):
    """pycocotools' COCOeval needs every ground-truth area (its area ranges); the checked file has them."""
    from gdis.evaluate import coco_metrics

    root, _ = dataset
    path = root / "annotations" / "val.json"
    coco = json.loads(path.read_text())
    results = [{key: ann[key] for key in ("image_id", "category_id", "segmentation", "bbox")} | {"score": 1.0}
               for ann in coco["annotations"]]
    write_json(tmp_path / "results.json", results)
    _without_areas(root, coco)
    path.write_text(json.dumps(coco))
    with pytest.raises(KeyError, match="area"):
        coco_metrics(coco, tmp_path / "results.json", "pycocotools")
    usable = usable_coco(path, check_dataset(path, root / "val", "fail"))
    assert coco_metrics(usable, tmp_path / "results.json", "pycocotools")["mask_AP"] == pytest.approx(100.0)
    TALLY["bad dataset input"] += 1


FATAL_CASES = [
    ("annotation file is not JSON", lambda path: path.write_text("{not json"), "is not valid JSON"),
    ("annotation file missing", lambda path: path.unlink(), "annotation file not found"),
    ("top level is a list", lambda path: path.write_text("[]"), "is not COCO"),
    ("duplicate category id", lambda path: path.write_text(json.dumps(
        {**json.loads(path.read_text()), "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]})), r"\[1\] appear"),
    ("no categories", lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "categories": []})),
     "no categories"),
]


@pytest.mark.parametrize("name, breaker, expected", FATAL_CASES, ids=[c[0] for c in FATAL_CASES])
def test_unusable_annotation_file_stops_under_both_policies(dataset, name, breaker, expected):
    root, _ = dataset
    path = root / "annotations" / "train.json"
    breaker(path)
    for policy in ("fail", "skip"):
        with pytest.raises(DatasetError, match=expected) as error:
            check_dataset(path, root / "train", policy)
        assert str(path) in str(error.value)
    TALLY["bad dataset input"] += 1


def test_every_problem_is_listed_at_once(dataset):
    """Fail-fast still lists everything: three broken items give three lines, not the first one only."""
    root, coco = dataset
    _image_file(root, coco, 1).unlink()
    coco["annotations"][0]["segmentation"] = [[1, 1, 2, 2]]
    coco["annotations"][-1]["category_id"] = 77
    (root / "annotations" / "train.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError) as error:
        check_dataset(root / "annotations" / "train.json", root / "train", "fail")
    message = str(error.value)
    assert "3 problem(s)" in message
    assert f"image {coco['images'][1]['id']}: file not found" in message
    assert f"annotation {coco['annotations'][0]['id']} " in message and "category id 77" in message


def test_fail_policy_through_the_cli_writes_no_report(dataset, tmp_path, capsys):
    from gdis.cli import main

    root, coco = dataset
    _image_file(root, coco, 1).write_bytes(b"GIF89a")
    report = tmp_path / "check.json"
    code = main(["check-dataset", "--annotations", str(root / "annotations" / "train.json"), "--images",
                 str(root / "train"), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1 and "gdis check-dataset: error: " in err
    assert f"image {coco['images'][1]['id']}: " in err and str(_image_file(root, coco, 1)) in err
    assert not report.exists()
    TALLY["bad dataset input"] += 1


def test_skip_policy_through_the_cli_is_recorded_in_run_json(dataset, micro_config_file, tmp_path, caplog, capsys):
    """check-dataset (skip) -> split -> train: the unusable items are left out, counted in manifest and run.json."""
    from gdis.cli import main

    root, coco = dataset
    _image_file(root, coco, 2).write_bytes(b"broken")
    coco["annotations"][0]["segmentation"] = [[1, 1, 2, 2]]
    (root / "annotations" / "train.json").write_text(json.dumps(coco))
    config = yaml.safe_load(micro_config_file.read_text())
    config["dataset"].update(train_images=str(root / "train"), train_annotations=str(root / "annotations" / "train.json"),
                             on_bad_input="skip")
    config["methods"] = ["supervised"]
    config["train"].update(iterations=1, checkpoint_period=1, lr_steps=[1])
    config_file = tmp_path / "skip.yaml"
    config_file.write_text(yaml.safe_dump(config))
    report, split, run = tmp_path / "check.json", tmp_path / "split", tmp_path / "run"
    caplog.set_level(logging.INFO)
    train_set = ["--annotations", str(root / "annotations" / "train.json"), "--images", str(root / "train")]
    assert main(["check-dataset", *train_set, "--on-bad-input", "skip", "--report", str(report)]) == 0
    assert "skipped 1 image(s) and " in caplog.text and "polygon has 2 point(s)" in caplog.text
    assert main(["split", "--config", str(config_file), *train_set, "--label-percent", "50", "--fold", "1",
                 "--out-dir", str(split), "--dataset-check", str(report)]) == 0
    manifest = json.loads((split / "manifest.json").read_text())
    assert manifest["num_images"] == len(coco["images"]) - 1
    assert coco["images"][2]["id"] not in [image["id"] for image in json.loads((split / "unlabeled.json").read_text())["images"]]
    assert main(["train", "--config", str(config_file), "--method", "supervised", "--label-percent", "50", "--fold", "1",
                 *train_file_args(split, root / "train"), "--out-dir", str(run)]) == 0
    record = json.loads((run / "run.json").read_text())["dataset_check"]
    assert record["policy"] == "skip" and record["skipped_images"] == 1
    assert record["errors_by_kind"] == {"polygon_too_few_points": 1, "unreadable_file": 1}
    # A report of an older version of the file is refused rather than applied to the wrong items.
    (root / "annotations" / "train.json").write_text(json.dumps(coco, indent=1))
    assert main(["split", "--config", str(config_file), *train_set, "--label-percent", "50", "--fold", "1",
                 "--out-dir", str(tmp_path / "split2"), "--dataset-check", str(report)]) == 1
    assert "changed since it was checked" in capsys.readouterr().err
    TALLY["skip-and-count run"] += 1


def test_symlinked_images_folder_and_files_are_not_outside(dataset):
    """A linked images folder, and files in it that are links (DataLad, DVC caches), are not file_outside_images."""
    root, coco = dataset
    store = root / "store"
    store.mkdir()
    shutil.move(_image_file(root, coco), store / "0.png")
    _image_file(root, coco).symlink_to(store / "0.png")
    (root / "linked").symlink_to(root / "train", target_is_directory=True)
    report = check_dataset(root / "annotations" / "train.json", root / "linked", "fail")
    assert not report["errors"] and "file_outside_images" not in report["counts"]
    TALLY["bad dataset input"] += 1


def _without_areas(root: Path, coco: dict) -> None:
    for ann in coco["annotations"]:
        del ann["area"]


# (name, kind, breaker, what the message says): each new kind of bad input through `gdis check-dataset` and Snakemake.
END_TO_END_CASES = [
    ("decompression bomb", "decompression_bomb", lambda root, coco: _flat_png(_image_file(root, coco)),
     f"has {BOMB_SIDE * BOMB_SIDE} pixels, over Pillow's limit"),
    ("file_name outside the images folder", "file_outside_images", lambda root, coco: _outside(root, coco, False),
     "file_name '../outside.png' has a '..' part"),
    ("annotations without area", "missing_area", _without_areas, "has no area"),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name, kind, breaker, says", END_TO_END_CASES, ids=[c[0] for c in END_TO_END_CASES])
def test_new_bad_inputs_through_the_gdis_command(dataset, tmp_path, name, kind, breaker, says, policy):
    """fail: exit 1 with the named problem, no traceback, no report; skip: left out and counted; a note: neither."""
    root, original = _break(dataset, breaker)
    annotations, report = root / "annotations" / "train.json", tmp_path / "check.json"
    result = subprocess.run(["gdis", "check-dataset", "--annotations", str(annotations), "--images", str(root / "train"),
                             "--on-bad-input", policy, "--report", str(report)], capture_output=True, text=True,
                            timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    image = original["images"][0]
    if kind in NOTES:
        assert result.returncode == 0, result.stderr
        checked = json.loads(report.read_text())
        assert checked["counts"][kind] == len(original["annotations"]) and not checked["errors"]
        assert checked["skipped_images"] == checked["skipped_annotations"] == 0
        assert f"note: annotation {original['annotations'][0]['id']} (image {image['id']}) {says}" in result.stderr
        usable = usable_coco(annotations, checked)
        assert [ann["area"] for ann in usable["annotations"]] == [ann["area"] for ann in original["annotations"]]
    elif policy == "fail":
        assert result.returncode == 1
        assert f"gdis check-dataset: error: {annotations}: 1 problem(s) make 1 image(s)" in result.stderr
        assert f"image {image['id']}: " in result.stderr and says in result.stderr
        assert not report.exists()
    else:
        assert result.returncode == 0, result.stderr
        checked = json.loads(report.read_text())
        assert [f["kind"] for f in checked["errors"]] == [kind] and checked["errors"][0]["image_id"] == image["id"]
        assert checked["skipped_images"] == 1 and checked["excluded_image_indices"] == [0]
        assert f"skipped: image {image['id']}: " in result.stderr and says in result.stderr
        assert "skipped 1 image(s)" in result.stderr
        usable = usable_coco(annotations, checked)
        assert image["id"] not in [i["id"] for i in usable["images"]]
    TALLY["bad dataset input"] += 1


def test_the_table_of_cases_is_big_enough():
    kinds = {kind for _, kind, _ in IMAGE_CASES + ANNOTATION_CASES + NOTE_CASES}
    assert len(IMAGE_CASES + ANNOTATION_CASES + NOTE_CASES + FATAL_CASES) >= MINIMUM["bad dataset input"]
    assert kinds == set(IMAGE_ERRORS) | set(ANNOTATION_ERRORS) | set(NOTES)


# -- bad config ---------------------------------------------------------------------------------

def _with(path: str, value):
    def change(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return change


CONFIG_CASES = [
    ("typo in a key", _with("train.burnin", 3), ["unknown key train.burnin", "burn_in"]),
    ("wrong type", _with("train.iterations", "ten"), ["train.iterations", "'ten'", "integer"]),
    ("burn_in beyond iterations", _with("train.burn_in", 10), ["train.burn_in: 10", "train.iterations (4)"]),
    ("percentage 0", _with("splits.label_percents", [0]), ["splits.label_percents.0", "0", "(0, 100]"]),
    ("percentage above 100", _with("splits.label_percents", [150]), ["splits.label_percents.0", "150", "(0, 100]"]),
    ("repeated percentage", _with("splits.label_percents", [5, 5]), ["splits.label_percents", "twice"]),
    ("unknown method", _with("methods", ["supervised", "mean_teacher"]), ["methods.1", "'mean_teacher'", "guided_distillation"]),
    ("unknown architecture", _with("model.arch", "detr"), ["model.arch", "'detr'", "mask_rcnn"]),
    ("unknown backbone", _with("model.backbone", "vit"), ["model.backbone", "'vit'", "resnet50_fpn"]),
    ("guided without supervised", _with("methods", ["guided_distillation"]), ["methods", "needs 'supervised'"]),
    ("warm-up beyond iterations", _with("train.warmup_iterations", 50), ["train.warmup_iterations: 50", "never reach"]),
    ("lr steps out of order", _with("train.lr_steps", [3, 2]), ["train.lr_steps: [3, 2]", "increasing"]),
    ("lr step beyond iterations", _with("train.lr_steps", [40]), ["train.lr_steps: [40]", "beyond train.iterations"]),
    ("ImageNet weights for the tiny backbone", _with("model.backbone_weights", "imagenet"),
     ["model.backbone_weights", "'imagenet'", "tiny"]),
    ("unknown network", _with("networks", ["mask rcnn"]), ["networks.0", "'mask rcnn'"]),
    ("test size above max size", _with("model.max_size", 32), ["model.max_size: 32", "[64, 64]"]),
    ("score threshold keeping nothing", _with("train.pseudo_label.score_threshold", 1.0),
     ["train.pseudo_label.score_threshold: 1.0", "no detection"]),
    ("hue jitter above 0.5", _with("train.augment.color_jitter", [0.4, 0.4, 0.4, 0.9]), ["train.augment.color_jitter", "0.9"]),
    ("unknown bad-input policy", _with("dataset.on_bad_input", "ignore"), ["dataset.on_bad_input", "'ignore'", "skip"]),
    ("unknown non-finite policy", _with("train.on_nonfinite", "retry"), ["train.on_nonfinite", "'retry'", "fail"]),
    ("coco dataset without paths", lambda config: config["dataset"].pop("val_images"), ["dataset.val_images", "required"]),
    ("negative learning rate", _with("train.lr", -0.1), ["train.lr", "-0.1"]),
]


@pytest.mark.parametrize("name, change, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(micro_config_file, name, change, expected):
    config = yaml.safe_load(micro_config_file.read_text())
    change(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    for text in expected:
        assert text in str(error.value), f"{text!r} missing from: {error.value}"
    TALLY["bad config"] += 1


@pytest.mark.parametrize("text, expected", [("train: [1, 2", "is not valid YAML"), ("- a list", "must hold a mapping")])
def test_bad_config_file(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as error:
        load_config([path])
    assert str(path) in str(error.value)
    TALLY["bad config"] += 1


def test_missing_backbone_weights_file_names_the_key_and_the_file(micro_config):
    """A weights file is a file the train rule hands over, or the user's: missing, it stops the run at the start."""
    model = {**micro_config["model"], "backbone_weights": "no/such/file.pt"}
    with pytest.raises(FileNotFoundError, match=r"model\.backbone_weights: weights file not found: no/such/file\.pt"):
        build_model(model, 3)
    TALLY["bad config"] += 1


def test_enough_config_cases():
    assert len(CONFIG_CASES) + 2 >= MINIMUM["bad config"]


# -- a malicious checkpoint ---------------------------------------------------------------------

class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, micro_config):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "model_final.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "step": 1, "student": Payload(marker)}, evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))

    for path in (evil, plain):
        with pytest.raises(ValueError, match=f"cannot load weights from {path}") as error:
            load_checkpoint(path)
        assert "Unsupported global" in str(error.value) or "weights_only" in str(error.value)
        with pytest.raises(ValueError, match="cannot load weights"):
            load_backbone_state(torch.nn.Linear(2, 2), path)
    # The run directory of a resumable run: a planted last.pt is refused too, before training starts.
    split = tmp_path / "split"
    dataset = Path(micro_config["dataset"]["train_annotations"]).parents[1]
    write_split(dataset / "annotations" / "train.json", split, 25, fold=1, seed=0)
    trainer = split_trainer(micro_config, "supervised", split, dataset / "train", tmp_path / "run")
    (tmp_path / "run" / "work").mkdir(parents=True)
    shutil.copy(evil, tmp_path / "run" / "work" / "last.pt")
    with pytest.raises(ValueError, match="cannot load weights"):
        trainer.run()
    assert not marker.exists(), "the payload ran"

    # The control: the same files loaded unsafely do run the payload, so the checks above prove something.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(plain.read_bytes())
    assert marker.exists()
    TALLY["malicious checkpoint"] += 1


# -- SIGKILL while checkpoints are written ------------------------------------------------------

def test_sigkill_during_checkpoint_writing_leaves_only_loadable_checkpoints(tmp_path):
    """A child rewrites last.pt in a loop and is SIGKILLed at random instants; every surviving file loads."""
    weights = torch.arange(1_500_000, dtype=torch.float32)  # 6 MB: most of a save is spent writing
    directory = tmp_path / "work"
    directory.mkdir()
    rng = random.Random(0)
    kills, mid_write = 0, 0
    while kills < 12 or (mid_write == 0 and kills < 40):
        pid = os.fork()
        if pid == 0:  # child: write checkpoints until killed
            try:
                for step in range(10_000):
                    save_checkpoint(directory / "last.pt", step=step, weights=weights, check=float(weights[-1]) + step)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        leftovers = [p for p in directory.iterdir() if p.name != "last.pt"]
        mid_write += bool(leftovers)
        assert all(p.name.startswith(".last.pt.") and ".tmp" in p.name for p in leftovers), leftovers
        for leftover in leftovers:
            leftover.unlink()  # a hidden temporary: never mistaken for a checkpoint
        if (directory / "last.pt").exists():
            state = load_checkpoint(directory / "last.pt")
            assert torch.equal(state["weights"], weights) and state["check"] == float(weights[-1]) + state["step"]
    assert mid_write > 0, "no kill landed during a write"
    TALLY["SIGKILL during checkpoint write"] += kills


# -- non-finite loss ----------------------------------------------------------------------------

def _micro_trainer(config, tmp_path, name):
    split = tmp_path / "split"
    dataset = Path(config["dataset"]["train_annotations"]).parents[1]
    if not split.exists():
        write_split(dataset / "annotations" / "train.json", split, 25, fold=1, seed=0)
    torch.set_num_threads(1)
    return split_trainer(config, "supervised", split, dataset / "train", tmp_path / name)


def _poison(trainer, monkeypatch, steps: set[int]) -> None:
    original = trainer.student.losses

    def poisoned(images, targets):
        losses = original(images, targets)
        if trainer.iteration in steps:
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("inf")
        return losses

    monkeypatch.setattr(trainer.student, "losses", poisoned)


def test_non_finite_loss_stops_then_resumes_from_the_last_good_checkpoint(micro_config, tmp_path, monkeypatch):
    trainer = _micro_trainer(micro_config, tmp_path, "run")  # 4 steps, a checkpoint every 2
    _poison(trainer, monkeypatch, {3})
    with pytest.raises(TrainingError, match=r"step 3: non-finite loss term\(s\) \{'loss_supervised/loss_box_reg': inf\}"):
        trainer.run()
    assert not (tmp_path / "run" / "model_final.pt").exists()
    assert load_checkpoint(tmp_path / "run" / "work" / "last.pt")["step"] == 2
    resumed = _micro_trainer(micro_config, tmp_path, "run")
    resumed.run()
    final = load_checkpoint(tmp_path / "run" / "model_final.pt")
    assert final["step"] == 4 and all(torch.isfinite(v).all() for v in final["student"].values() if v.is_floating_point())
    TALLY["non-finite loss"] += 1


def test_non_finite_loss_skipped_and_counted(micro_config, tmp_path, monkeypatch):
    config = copy.deepcopy(micro_config)
    config["train"]["on_nonfinite"] = "skip"
    trainer = _micro_trainer(config, tmp_path, "run")
    _poison(trainer, monkeypatch, {0, 2})
    trainer.run()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["nonfinite_skips"] == 2 and record["iterations"] == 4
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite_skips") for r in logged] == [1, None, 2, None]
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)
    final = load_checkpoint(tmp_path / "run" / "model_final.pt")
    assert all(torch.isfinite(v).all() for v in final["student"].values() if v.is_floating_point())
    TALLY["non-finite loss"] += 1


# -- full disk and permission denied -----------------------------------------------------------

def _in_child(function, file_size_limit: int | None = None, user: int | None = None) -> str:
    """Run ``function`` in a forked child (optionally with RLIMIT_FSIZE or as another user); return its error text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        outcome = "no error"
        try:
            if file_size_limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
            if user is not None:
                os.setgid(user)
                os.setuid(user)
            function()
        except BaseException as error:  # reported to the parent
            outcome = f"{type(error).__name__}: {error}"
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        ready, _, _ = select.select([pipe], [], [], 120)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        text = pipe.read() if ready else ""
    os.waitpid(pid, 0)
    assert ready, "the child process hung"
    return text


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem: a tmpfs mount when allowed, else a file-size limit the writers run under."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode == 0:
        yield mount, None
        subprocess.run(["umount", str(mount)], check=True)
    else:
        yield mount, 1 << 20


LARGE_WEIGHTS = torch.ones(400_000)  # made here: a forked child must not start torch's thread pool

FULL_DISK_CASES = [
    ("metrics JSON", "metrics.json", lambda path: write_json(path, {"mask_AP": 1.0}),
     lambda path: write_json(path, list(range(300_000))), lambda path: json.loads(path.read_text()) == {"mask_AP": 1.0}),
    ("checkpoint", "last.pt", lambda path: save_checkpoint(path, step=1, weights=torch.ones(10)),
     lambda path: save_checkpoint(path, step=2, weights=LARGE_WEIGHTS), lambda path: load_checkpoint(path)["step"] == 1),
    ("table", "table.md", lambda path: write_text(path, "| a |\n"),
     lambda path: write_text(path, "x" * 2_000_000), lambda path: path.read_text() == "| a |\n"),
]


@pytest.mark.parametrize("name, file_name, write_small, write_large, unchanged", FULL_DISK_CASES,
                         ids=[c[0] for c in FULL_DISK_CASES])
def test_full_disk_keeps_the_previous_file(small_disk, name, file_name, write_small, write_large, unchanged):
    directory, limit = small_disk
    path = directory / file_name
    write_small(path)
    if limit is None:  # fill the tmpfs up to its last 100 KB
        used = path.stat().st_size
        (directory / "filler").write_bytes(bytes((1 << 20) - 100_000 - used))
    error = _in_child(lambda: write_large(path), file_size_limit=limit)
    assert error.startswith(f"OutputError: could not write {path}: "), error
    assert "No space left on device" in error or "too large" in error, error
    assert unchanged(path), f"the previous {name} was damaged"
    assert sorted(p.name for p in directory.iterdir() if p.name != "filler") == [file_name], "temporary file left"
    TALLY["full disk" + (" (1 MiB tmpfs)" if limit is None else " (RLIMIT_FSIZE)")] += 1


@pytest.fixture
def shared_directory():
    """A directory that an unprivileged user can reach (pytest's own tmp tree is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="gdis-faults-"))
    os.chmod(directory, 0o755)
    yield directory
    for sub in directory.rglob("*"):
        if sub.is_dir():
            os.chmod(sub, 0o755)
    shutil.rmtree(directory)


def test_permission_denied_names_the_file(shared_directory):
    results = shared_directory / "results"
    results.mkdir()
    path = results / "metrics.json"
    write_json(path, {"ok": 1})
    os.chmod(results, 0o555)  # root ignores this, so as root the write runs as user nobody
    user = 65534 if os.geteuid() == 0 else None
    for target in (path, results / "new" / "metrics.json"):
        error = _in_child(lambda: write_json(target, {"ok": 2}), user=user)
        assert error.startswith(f"OutputError: could not write {target}: Permission denied"), error
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in results.iterdir()] == ["metrics.json"]
    TALLY["permission denied"] += 1


# -- the pipeline -------------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_checks_the_dataset_before_any_split(workflow_copy, micro_dataset):
    """Snakemake: a missing image stops the run at check_dataset (fail); with skip, the split leaves it out."""
    dataset = workflow_copy / "mine"
    shutil.copytree(micro_dataset, dataset)
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    missing = coco["images"][3]
    (dataset / "train" / missing["file_name"]).unlink()
    paths = {"train_images": "mine/train", "train_annotations": "mine/annotations/train.json",
             "val_images": "mine/val", "val_annotations": "mine/annotations/val.json"}
    (workflow_copy / "mine.yaml").write_text(yaml.safe_dump({"dataset": {"name": "micro", "source": "coco", **paths}}))
    target = "results/splits/micro/25pct/fold1/manifest.json"

    def snakemake(*configs):
        return subprocess.run(["snakemake", target, "--cores", "1", "--configfile", *configs], cwd=workflow_copy,
                              capture_output=True, text=True, timeout=600)

    failed = snakemake("config/micro.yaml", "mine.yaml")
    assert failed.returncode != 0
    log = (workflow_copy / "results" / "logs" / "micro" / "check_dataset" / "train.log").read_text()
    assert f"image {missing['id']}: file not found: mine/train/{missing['file_name']}" in log
    assert not (workflow_copy / "results" / "splits").exists()
    assert not (workflow_copy / "results" / "checks" / "micro" / "train.json").exists()

    (workflow_copy / "skip.yaml").write_text("dataset:\n  on_bad_input: skip\n")
    skipped = snakemake("config/micro.yaml", "mine.yaml", "skip.yaml")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    manifest = json.loads((workflow_copy / target).read_text())
    assert manifest["num_images"] == len(coco["images"]) - 1
    assert manifest["dataset_check"]["skipped_images"] == 1
    TALLY["pipeline runs with a broken dataset"] += 2


@pytest.mark.slow
@pytest.mark.parametrize("name, kind, breaker, says", END_TO_END_CASES, ids=[c[0] for c in END_TO_END_CASES])
def test_pipeline_handles_new_bad_inputs(workflow_copy, micro_dataset, name, kind, breaker, says):
    """Snakemake: a bomb or an outside file_name stops check_dataset (fail) without a traceback and is left out
    (skip); annotations without area go through either way, with their computed area in the split."""
    dataset = workflow_copy / "mine"
    shutil.copytree(micro_dataset, dataset)
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    _, original = _break((dataset, coco), breaker)
    image = original["images"][0]
    paths = {"train_images": "mine/train", "train_annotations": "mine/annotations/train.json",
             "val_images": "mine/val", "val_annotations": "mine/annotations/val.json"}
    (workflow_copy / "mine.yaml").write_text(yaml.safe_dump({"dataset": {"name": "micro", "source": "coco", **paths}}))
    (workflow_copy / "skip.yaml").write_text("dataset:\n  on_bad_input: skip\n")
    target = "results/splits/micro/25pct/fold1/manifest.json"
    log = workflow_copy / "results" / "logs" / "micro" / "check_dataset" / "train.log"

    def snakemake(*configs):
        return subprocess.run(["snakemake", target, "--cores", "1", "--configfile", "config/micro.yaml", "mine.yaml",
                               *configs], cwd=workflow_copy, capture_output=True, text=True, timeout=600)

    if kind in NOTES:
        passed = snakemake()  # dataset.on_bad_input: fail
        assert passed.returncode == 0, passed.stderr[-3000:]
        assert f"note: annotation {original['annotations'][0]['id']} (image {image['id']}) {says}" in log.read_text()
        manifest = json.loads((workflow_copy / target).read_text())
        assert manifest["num_images"] == len(original["images"]) and manifest["dataset_check"]["skipped_images"] == 0
        labeled = json.loads((workflow_copy / target).with_name("labeled.json").read_text())
        area = {ann["id"]: ann["area"] for ann in original["annotations"]}
        assert labeled["annotations"] and all(ann["area"] == area[ann["id"]] for ann in labeled["annotations"])
        TALLY["pipeline runs with a broken dataset"] += 1
        return

    failed = snakemake()
    assert failed.returncode != 0
    text = log.read_text()
    assert "Traceback" not in text and "gdis check-dataset: error: " in text
    assert f"image {image['id']}: " in text and says in text
    assert not (workflow_copy / "results" / "splits").exists()

    skipped = snakemake("skip.yaml")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "Traceback" not in log.read_text()
    manifest = json.loads((workflow_copy / target).read_text())
    assert manifest["num_images"] == len(original["images"]) - 1
    assert manifest["dataset_check"]["skipped_images"] == 1
    assert manifest["dataset_check"]["errors_by_kind"] == {kind: 1}
    TALLY["pipeline runs with a broken dataset"] += 2
