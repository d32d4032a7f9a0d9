"""ADE20K: the official layout in (linked or downloaded), COCO annotations of the 100 instance classes out."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from gdis.ade20k import INSTANCE_CLASSES, instance_annotations, prepare_ade20k
from gdis.check_dataset import check_dataset
from gdis.coco import DatasetError, load_coco
from gdis.config import ConfigError, dataset_paths, validate_config
from gdis.download import DownloadError
from gdis.evaluate import coco_metrics
from tests.conftest import REPO
from tests.test_download import serve  # noqa: F401 (the fixture: a local HTTP server with Range support)

HEIGHT, WIDTH = 32, 48
PERSON, CAR, BED, FLAG = 4, 9, 1, 100  # instance classes (red channel) -> category ids 12, 20, 7, 149


def _instance_png(instances: list[tuple[int, int, np.ndarray]], background_class: int = 0) -> np.ndarray:
    """An RGB instance mask: red the class, green the instance number (0 where ``background_class`` is drawn)."""
    png = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    png[..., 0] = background_class  # unlabelled / stuff pixels: instance number 0, whatever the red value
    for number, label, mask in instances:
        png[mask, 0], png[mask, 1] = label, number
    return png


def _box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[top:bottom, left:right] = True
    return mask


RING = _box(20, 30, 20, 30) & ~_box(23, 27, 23, 27)  # a car with a hole: RLE keeps it
TRAIN_INSTANCES = [(1, PERSON, _box(2, 10, 3, 20)), (2, PERSON, _box(12, 20, 30, 45)), (7, CAR, RING)]
VAL_INSTANCES = [(1, BED, _box(0, 16, 0, 24)), (5, FLAG, _box(18, 30, 30, 40))]
# (folder, stem) -> the instance PNG; the second training image has no instance at all.
MASKS = {
    ("training", "ADE_train_00000001"): _instance_png(TRAIN_INSTANCES, background_class=12),
    ("training", "ADE_train_00000002"): _instance_png([]),
    ("validation", "ADE_val_00000001"): _instance_png(VAL_INSTANCES),
}


def _encoded(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def _official_files() -> dict[str, bytes]:
    """Paths inside ADEChallengeData2016 -> bytes: images, instance masks, and files gdis leaves alone."""
    files = {"objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n"}
    for (folder, stem), png in MASKS.items():
        image = np.random.default_rng(len(files)).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        files[f"images/{folder}/{stem}.jpg"] = _encoded(image, "JPEG")
        files[f"annotations/{folder}/{stem}.png"] = _encoded(png[..., 0], "PNG")  # semantic labels: not used
        files[f"annotations_instance/{folder}/{stem}.png"] = _encoded(png, "PNG")
    return files


@pytest.fixture
def local_copy(tmp_path) -> Path:
    folder = tmp_path / "ADEChallengeData2016"
    for name, data in _official_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _ade20k_config(**ade20k) -> dict:
    return validate_config({"dataset": {"name": "ade20k", "source": "ade20k", "ade20k": ade20k}})


def _decoded(annotation: dict) -> np.ndarray:
    return mask_utils.decode({**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()})


def test_categories_are_mask2formers_100_instance_classes():
    ids = [category_id for category_id, _ in INSTANCE_CLASSES]
    assert len(ids) == 100 and ids == sorted(set(ids))
    assert INSTANCE_CLASSES[:4] == ((7, "bed"), (8, "windowpane"), (10, "cabinet"), (12, "person"))
    assert INSTANCE_CLASSES[-2:] == ((148, "clock"), (149, "flag"))
    assert dict(INSTANCE_CLASSES)[20] == "car"


def test_local_copy_is_linked_and_converted_to_coco(local_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _ade20k_config(local_copy=str(local_copy))
    root = Path("data/ade20k")
    prepare_ade20k(config["dataset"]["ade20k"], root, workers=2)
    paths = dataset_paths(config)
    assert all(Path(path).exists() for path in paths.values()), paths
    assert Path(paths["train_images"]).resolve() == local_copy / "images" / "training"
    assert Path(paths["train_images"]).is_symlink() and not (root / "ADEChallengeData2016" / "annotations").exists()

    train = load_coco(paths["train_annotations"])
    assert train["categories"] == [{"id": i, "name": name} for i, name in INSTANCE_CLASSES]
    assert train["images"] == [
        {"id": 1, "file_name": "ADE_train_00000001.jpg", "height": HEIGHT, "width": WIDTH},
        {"id": 2, "file_name": "ADE_train_00000002.jpg", "height": HEIGHT, "width": WIDTH}]
    summary = [(a["id"], a["image_id"], a["category_id"], a["area"], a["bbox"], a["iscrowd"])
               for a in train["annotations"]]
    assert summary == [(1, 1, 12, 136, [3.0, 2.0, 17.0, 8.0], 0), (2, 1, 12, 120, [30.0, 12.0, 15.0, 8.0], 0),
                       (3, 1, 20, 84, [20.0, 20.0, 10.0, 10.0], 0)]
    for annotation, (_, _, mask) in zip(train["annotations"], TRAIN_INSTANCES):
        assert np.array_equal(_decoded(annotation), mask)  # exact masks, the ring's hole included
    val = load_coco(paths["val_annotations"])
    assert [(a["image_id"], a["category_id"], a["area"]) for a in val["annotations"]] == [(1, 7, 384), (1, 149, 120)]

    report = check_dataset(paths["train_annotations"], paths["train_images"])  # the pipeline's own check passes
    assert report["errors"] == [] and report["num_annotations"] == 3

    before = Path(paths["train_annotations"]).read_bytes()
    prepare_ade20k(config["dataset"]["ade20k"], root, workers=1)
    assert Path(paths["train_annotations"]).read_bytes() == before, "same input, same bytes"


def test_perfect_predictions_score_100_with_the_coco_evaluator(local_copy, tmp_path):
    prepare_ade20k(_ade20k_config(local_copy=str(local_copy))["dataset"]["ade20k"], tmp_path / "ade20k")
    val_path = tmp_path / "ade20k" / "annotations" / "instances_val.json"
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "bbox": a["bbox"], "score": 1.0} for a in load_coco(val_path)["annotations"]]
    (tmp_path / "predictions.json").write_text(json.dumps(perfect))
    assert coco_metrics(val_path, tmp_path / "predictions.json")["mask_AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("classes, message", [((PERSON, CAR), r"\[4, 9\]"), ((0,), r"\[0\]"), ((101,), r"\[101\]")])
def test_an_instance_needs_one_class_in_1_to_100(classes, message):
    png = _instance_png([(3, classes[0], _box(0, 4, 0, 4))])
    png[0, 0, 0] = classes[-1]
    with pytest.raises(DatasetError, match=rf"x.png: instance 3 has class value\(s\) {message}"):
        instance_annotations(png, "x.png")


def test_missing_and_mismatched_masks_are_named(local_copy, tmp_path):
    config = _ade20k_config(local_copy=str(local_copy))["dataset"]["ade20k"]
    mask = local_copy / "annotations_instance" / "validation" / "ADE_val_00000001.png"
    mask.write_bytes(_encoded(np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8), "PNG"))
    with pytest.raises(DatasetError, match=r"ADE_val_00000001.png: instance mask is 49x32 but .*ADE_val_00000001.jpg "
                                           r"is 48x32"):
        prepare_ade20k(config, tmp_path / "ade20k")
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 instance mask\(s\) of images/validation missing .* "
                                                r"ADE_val_00000001.png \(from annotations_instance.tar\)"):
        prepare_ade20k(config, tmp_path / "ade20k")
    (local_copy / "annotations_instance" / "validation").rmdir()
    with pytest.raises(FileNotFoundError, match=r"dataset.ade20k.local_copy .* lacks annotations_instance/validation"):
        prepare_ade20k(config, tmp_path / "again")


def test_a_download_needs_a_size_or_an_md5():
    unchecked = {"url": "http://example.org/a.zip", "md5": None, "size": None}
    with pytest.raises(ConfigError, match=r"dataset.ade20k.archives.annotations_instance: md5 and size are both null"):
        _ade20k_config(archives={"annotations_instance": unchecked})
    _ade20k_config(local_copy="/elsewhere", archives={"annotations_instance": unchecked})  # nothing is downloaded


def test_plan_validates_with_the_references_schedule(monkeypatch):
    from gdis.plans import Plans

    monkeypatch.chdir(REPO)
    config = Plans([]).config("ade20k", "mask2former_r50")
    assert config["dataset"]["source"] == "ade20k" and config["splits"]["label_percents"] == [10]
    assert (config["model"]["arch"], config["model"]["backbone"]) == ("mask2former", "resnet50")
    geometry = config["train"]["augment"]["geometry"]
    assert geometry["kind"] == "short_side_crop" and geometry["crop_size"] == [640, 640]
    assert geometry["short_sides"] == [int(x * 0.1 * 640) for x in range(5, 21)] and config["model"]["min_size"] == [640]
    train = config["train"]
    assert (train["iterations"], train["lr_schedule"], train["warmup_iterations"]) == (160000, "poly", 0)
    assert train["augment"]["color_aug_ssd"] and train["augment"]["blur_sigma"] == [0.1, 2.0]
    optimiser = ("optimizer", "lr", "weight_decay", "backbone_lr_multiplier", "grad_clip", "precision", "burn_in")
    assert [train[key] for key in optimiser] == ["adamw", 1e-4, 0.05, 0.1, 0.01, "bf16", 50000]


def _archives() -> dict[str, bytes]:
    """The two official archives, as served: the zip holds ADEChallengeData2016/, the tar annotations_instance/."""
    files = _official_files()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for name, data in files.items():
            if not name.startswith("annotations_instance/"):
                archive.writestr(f"ADEChallengeData2016/{name}", data)
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as archive:
        for name, data in files.items():
            if name.startswith("annotations_instance/"):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return {"/ADEChallengeData2016.zip": zipped.getvalue(), "/annotations_instance.tar": tarred.getvalue()}


def _served_config(base_url: str, archives: dict[str, bytes], **sizes) -> dict:
    specs = {Path(path).stem: {"url": base_url + path, "md5": None, "size": sizes.get(Path(path).stem, len(data))}
             for path, data in archives.items()}
    return _ade20k_config(archives=specs)["dataset"]["ade20k"]


def test_download_resumes_a_partial_file_checks_sizes_and_unpacks(serve, tmp_path):  # noqa: F811
    archives = _archives()
    server = serve(archives, cut_after=1000)  # the first response stops after 1,000 bytes: resumed within the run
    root = tmp_path / "ade20k"
    tar = archives["/annotations_instance.tar"]
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "annotations_instance.tar.part").write_bytes(tar[:5000])  # left by a killed run
    prepare_ade20k(_served_config(server.base_url, archives), root, workers=1, progress=False)
    assert server.requests == [("/ADEChallengeData2016.zip", None), ("/ADEChallengeData2016.zip", "bytes=1000-"),
                               ("/annotations_instance.tar", "bytes=5000-")]
    assert (root / "downloads" / "annotations_instance.tar").read_bytes() == tar
    data = root / "ADEChallengeData2016"
    assert sorted(p.name for p in data.iterdir()) == ["annotations_instance", "images"]
    assert sorted(p.name for p in (data / "annotations_instance").iterdir()) == ["training", "validation"]
    assert len(load_coco(root / "annotations" / "instances_train.json")["annotations"]) == 3

    prepare_ade20k(_served_config(server.base_url, archives), root, workers=1, progress=False)
    assert len(server.requests) == 3, "verified archives are not downloaded again"


def test_download_of_the_wrong_size_is_deleted_and_names_the_key(serve, tmp_path):  # noqa: F811
    archives = _archives()
    server = serve(archives)
    config = _served_config(server.base_url, archives, ADEChallengeData2016=123)
    with pytest.raises(DownloadError, match=r"ADEChallengeData2016.zip: downloaded file has size \d+ bytes, expected "
                                            r"123; .*check dataset.ade20k.archives.ADEChallengeData2016"):
        prepare_ade20k(config, tmp_path / "ade20k", progress=False)
    assert list((tmp_path / "ade20k" / "downloads").iterdir()) == []
