"""Property-based tests: the COCO reader and checker, mask/polygon/RLE conversions, splits, pseudo-label filtering."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gdis.check_dataset import check_dataset, decode_compressed_counts, rle_problem, segmentation_problem, usable_coco
from gdis.coco import DatasetError, annotation_mask, check_coco, encode_mask
from gdis.data import CocoInstances
from gdis.models.mask_rcnn import filter_pseudo_labels
from gdis.splits import labeled_image_ids, num_labeled, split_coco

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_FILES = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- masks, polygons, RLE -----------------------------------------------------------------------

@st.composite
def binary_masks(draw, max_side: int = 24) -> np.ndarray:
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    bits = draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    return np.array(bits, dtype=np.uint8).reshape(height, width)


def column_major_runs(mask: np.ndarray) -> list[int]:
    """COCO run lengths: column-major order, starting with a run of zeros (possibly empty)."""
    flat = mask.flatten(order="F")
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    return runs


@FAST
@given(binary_masks())
def test_rle_round_trip_and_decoding(mask):
    height, width = mask.shape
    rle = encode_mask(mask)
    json.dumps(rle)  # JSON-ready
    assert rle_problem(rle, height, width) is None
    assert decode_compressed_counts(rle["counts"]) == column_major_runs(mask)
    ann = {"id": 1, "segmentation": rle}
    assert np.array_equal(annotation_mask(ann, height, width), mask)
    uncompressed = {"id": 1, "segmentation": {"size": [height, width], "counts": column_major_runs(mask)}}
    assert np.array_equal(annotation_mask(uncompressed, height, width), mask)
    expected = None if mask.any() else "empty_mask"
    problem = segmentation_problem(rle, height, width)
    assert (problem and problem[0]) == expected


@FAST
@given(binary_masks(), st.integers(-3, 3))
def test_rle_with_wrong_total_is_refused(mask, change):
    height, width = mask.shape
    runs = column_major_runs(mask)
    runs[-1] += change
    problem = rle_problem({"size": [height, width], "counts": runs}, height, width)
    assert (problem is None) == (change == 0)


@FAST
@given(st.data(), st.integers(1, 32), st.integers(1, 32))
def test_integer_rectangle_polygon_rasterises_to_its_pixels(data, height, width):
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
    mask = annotation_mask({"id": 1, "segmentation": [polygon]}, height, width)
    expected = np.zeros((height, width), np.uint8)
    expected[y0:y1, x0:x1] = 1
    assert np.array_equal(mask, expected)
    assert segmentation_problem([polygon], height, width) is None


@FAST
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=12), st.integers(4, 32))
def test_polygon_checker_accepts_only_what_rasterises(coordinates, side):
    """Whatever the checker accepts, pycocotools rasterises into a non-empty mask inside the image."""
    problem = segmentation_problem([coordinates], side, side)
    if problem is None:
        mask = annotation_mask({"id": 1, "segmentation": [coordinates]}, side, side)
        assert mask.shape == (side, side) and mask.any()
    else:
        assert problem[0] in {"bad_polygon", "polygon_too_few_points", "polygon_not_finite", "polygon_outside_image",
                              "empty_mask"}


# -- the COCO reader and the dataset checker ----------------------------------------------------

@st.composite
def coco_datasets(draw) -> dict:
    """A valid COCO dict: 1-3 small images, 1-2 categories, rectangle polygons inside their image."""
    categories = [{"id": 10 + i, "name": f"c{i}"} for i in range(draw(st.integers(1, 2)))]
    images, annotations = [], []
    for image_index in range(draw(st.integers(1, 3))):
        image_id = image_index * 7 + 1
        height, width = draw(st.integers(4, 20)), draw(st.integers(4, 20))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        for _ in range(draw(st.integers(0, 3))):
            x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
            x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
            annotations.append({
                "id": len(annotations) + 100, "image_id": image_id,
                "category_id": draw(st.sampled_from(categories))["id"],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_dataset(root: Path, coco: dict) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        pixels = np.full((image["height"], image["width"], 3), image["id"] % 256, np.uint8)
        Image.fromarray(pixels).save(root / "images" / image["file_name"])
    path = root / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


@WITH_FILES
@given(coco_datasets())
def test_valid_datasets_pass_and_read_back(coco):
    with tempfile.TemporaryDirectory() as directory:
        path = _write_dataset(Path(directory), coco)
        report = check_dataset(path, Path(directory) / "images", "fail")
        assert report["errors"] == [] and report["skipped_images"] == report["skipped_annotations"] == 0
        annotated = {ann["image_id"] for ann in coco["annotations"]}
        assert {n["image_id"] for n in report["notes"]} == {i["id"] for i in coco["images"]} - annotated
        assert usable_coco(path, report) == coco
        dataset = CocoInstances(coco, Path(directory) / "images")
        for index, (image, target) in enumerate(dataset):
            info = dataset.images[index]
            anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
            assert image.shape == (3, info["height"], info["width"])
            assert len(target["labels"]) == len(anns)
            assert sorted(int(m.sum()) for m in target["masks"]) == sorted(a["area"] for a in anns)
            boxes = target["boxes"]
            assert bool((boxes[:, 2] <= info["width"]).all() and (boxes[:, 3] <= info["height"]).all())


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.sampled_from(["size", "counts", "x"]), children,
                                                                      max_size=3),
    max_leaves=12,
)
FIELDS = ["id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd"]


@WITH_FILES
@given(coco_datasets(), st.data())
def test_junk_annotation_fields_never_crash_and_skip_leaves_a_readable_dataset(coco, data):
    """Any value in any annotation field: the checker answers (never crashes), and what it keeps is readable."""
    if not coco["annotations"]:
        return
    ann = data.draw(st.sampled_from(coco["annotations"]))
    field = data.draw(st.sampled_from(FIELDS))
    ann[field] = data.draw(JUNK)
    with tempfile.TemporaryDirectory() as directory:
        path = _write_dataset(Path(directory), coco)
        try:
            report = check_dataset(path, Path(directory) / "images", "skip")
        except DatasetError as error:
            assert "no usable image" in str(error)
            return
        usable = usable_coco(path, report)
        check_coco(usable, path)
        for _ in CocoInstances(usable, Path(directory) / "images"):
            pass


# -- splits -------------------------------------------------------------------------------------

image_id_sets = st.sets(st.integers(0, 10_000), min_size=1, max_size=300).map(sorted)
percents = st.floats(min_value=0.01, max_value=100, allow_nan=False)


@FAST
@given(image_id_sets, percents, st.integers(1, 5), st.integers(0, 100), st.randoms(use_true_random=False))
def test_split_sizes_subset_determinism(ids, percent, fold, seed, rng):
    chosen = labeled_image_ids(ids, percent, fold, seed)
    assert len(chosen) == len(set(chosen)) == num_labeled(len(ids), percent)
    assert 1 <= len(chosen) <= len(ids) and set(chosen) <= set(ids)
    assert chosen == sorted(chosen)
    shuffled = list(ids)
    rng.shuffle(shuffled)
    assert labeled_image_ids(shuffled, percent, fold, seed) == chosen


@FAST
@given(image_id_sets, percents, percents, st.integers(1, 5), st.integers(0, 100))
def test_splits_of_one_fold_are_nested(ids, first, second, fold, seed):
    small, large = sorted((first, second))
    assert set(labeled_image_ids(ids, small, fold, seed)) <= set(labeled_image_ids(ids, large, fold, seed))


@FAST
@given(coco_datasets(), percents, st.integers(1, 3), st.sampled_from(["all", "unlabeled_only"]))
def test_split_coco_partitions_images_and_hides_labels(coco, percent, fold, unlabeled_mode):
    ids = [image["id"] for image in coco["images"]]
    chosen = set(labeled_image_ids(ids, percent, fold, seed=0))
    labeled, unlabeled = split_coco(coco, chosen, unlabeled_mode)
    assert {image["id"] for image in labeled["images"]} == chosen
    assert all(ann["image_id"] in chosen for ann in labeled["annotations"])
    assert len(labeled["annotations"]) == sum(ann["image_id"] in chosen for ann in coco["annotations"])
    assert unlabeled["annotations"] == []
    unlabeled_ids = {image["id"] for image in unlabeled["images"]}
    assert unlabeled_ids == (set(ids) if unlabeled_mode == "all" else set(ids) - chosen)
    check_coco(labeled, "labeled")
    check_coco(unlabeled, "unlabeled")


# -- pseudo-label filtering ---------------------------------------------------------------------

@st.composite
def predictions(draw) -> dict:
    count, height, width = draw(st.integers(0, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand((count, height, width), generator=generator) ** draw(st.sampled_from([0.5, 1.0, 4.0]))
    return {
        "scores": torch.tensor(draw(st.lists(st.floats(0, 1), min_size=count, max_size=count)), dtype=torch.float32),
        "labels": torch.randint(1, 5, (count,), generator=generator),
        "masks": masks,
        "boxes": torch.zeros((count, 4)),
    }


thresholds = st.floats(0, 0.99)


@FAST
@given(predictions(), thresholds, st.floats(0.05, 0.95), st.integers(0, 20))
def test_pseudo_labels_keep_exactly_the_confident_large_masks(prediction, score_threshold, mask_threshold, min_area):
    kept = filter_pseudo_labels(prediction, score_threshold, mask_threshold, min_area)
    binary = prediction["masks"] > mask_threshold
    expected = [i for i in range(len(prediction["scores"]))
                if prediction["scores"][i] > score_threshold and int(binary[i].sum()) >= max(min_area, 1)]
    assert len(kept["labels"]) == len(kept["masks"]) == len(kept["boxes"]) == len(expected)
    assert torch.equal(kept["labels"], prediction["labels"][expected])
    assert kept["masks"].dtype == torch.uint8 and torch.equal(kept["masks"].bool(), binary[expected])
    for box, mask in zip(kept["boxes"], kept["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@FAST
@given(predictions(), thresholds, thresholds, st.integers(0, 20))
def test_a_higher_score_threshold_never_keeps_more(prediction, first, second, min_area):
    low, high = sorted((first, second))
    assert len(filter_pseudo_labels(prediction, high, 0.5, min_area)["labels"]) <= len(
        filter_pseudo_labels(prediction, low, 0.5, min_area)["labels"])
