"""Tests for the synthetic COCO dataset generator: determinism, annotation validity, validation, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from gdis import synthetic
from gdis.synthetic import CATEGORIES, SyntheticSpec, generate_synthetic_dataset

TINY = SyntheticSpec(seed=7, num_train=6, num_val=3, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out_dir, TINY)
    return out_dir


def test_layout(tiny_dataset):
    expected = {"annotations/train.json", "annotations/val.json"}
    expected |= {f"train/{i:06d}.png" for i in range(1, 7)} | {f"val/{i:06d}.png" for i in range(1, 4)}
    assert set(_files(tiny_dataset)) == expected


def test_same_seed_gives_identical_bytes(tiny_dataset, tmp_path):
    generate_synthetic_dataset(tmp_path / "again", TINY)
    assert _files(tmp_path / "again") == _files(tiny_dataset)


def test_different_seed_gives_different_images(tiny_dataset, tmp_path):
    other = SyntheticSpec(seed=8, num_train=6, num_val=3, image_size=64)
    generate_synthetic_dataset(tmp_path / "other", other)
    first, second = _files(tiny_dataset), _files(tmp_path / "other")
    for name in first:
        if name.endswith(".png"):
            assert first[name] != second[name], name


def test_images_do_not_depend_on_split_sizes(tiny_dataset, tmp_path):
    smaller = SyntheticSpec(seed=7, num_train=2, num_val=1, image_size=64)
    generate_synthetic_dataset(tmp_path / "smaller", smaller)
    for name, content in _files(tmp_path / "smaller").items():
        if name.endswith(".png"):
            assert content == _files(tiny_dataset)[name], name


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_annotations_are_valid_coco(tiny_dataset, split):
    coco = COCO(str(tiny_dataset / "annotations" / f"{split}.json"))
    category_ids = {category["id"] for category in CATEGORIES}
    assert set(coco.getCatIds()) == category_ids
    annotation_ids = coco.getAnnIds()
    assert sorted(annotation_ids) == list(range(1, len(annotation_ids) + 1))
    assert sorted(coco.getImgIds()) == list(range(1, len(coco.getImgIds()) + 1))
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        with Image.open(tiny_dataset / split / info["file_name"]) as image:
            assert image.mode == "RGB"
            assert image.size == (info["width"], info["height"]) == (TINY.image_size, TINY.image_size)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert annotations, f"image {image_id} has no annotation"
        covered = np.zeros((info["height"], info["width"]), dtype=bool)
        for annotation in annotations:
            assert annotation["category_id"] in category_ids
            assert annotation["iscrowd"] == 0
            mask = mask_util.decode(annotation["segmentation"]).astype(bool)
            assert annotation["area"] == int(mask.sum()) > 0
            rows, cols = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert x <= cols.min() and cols.max() + 1 <= x + w
            assert y <= rows.min() and rows.max() + 1 <= y + h
            assert not (covered & mask).any(), f"visible masks overlap in image {image_id}"
            covered |= mask


def test_info_records_the_spec(tiny_dataset):
    data = json.loads((tiny_dataset / "annotations" / "train.json").read_text(encoding="utf-8"))
    assert data["info"]["seed"] == TINY.seed
    assert SyntheticSpec(**data["info"]["spec"]) == TINY


def test_hidden_shapes_are_dropped_and_occlude_nothing():
    def square(x0, y0, side):
        mask = np.zeros((20, 20), dtype=bool)
        mask[y0 : y0 + side, x0 : x0 + side] = True
        return mask

    bottom = square(0, 0, 10)  # 70 % covered by the middle square -> visible, stays
    middle = square(3, 0, 10)  # 90 % covered by the top square -> dropped, so it hides nothing
    top = square(4, 0, 10)
    kept = synthetic.visible_instances([(1, bottom), (2, middle), (3, top)])
    assert [category_id for category_id, _, _ in kept] == [1, 3]
    assert kept[0][2].sum() == 40  # bottom minus top only
    assert kept[1][2].sum() == 100


def test_visible_parts_can_be_required_to_pass_a_test():
    def band(row0, row1):
        mask = np.zeros((20, 20), dtype=bool)
        mask[row0:row1, :] = True
        return mask

    # the top band cuts the bottom one in two pieces: kept by default, dropped when one piece is required
    shapes = [(1, band(0, 12)), (2, band(5, 7))]
    assert [c for c, _, _ in synthetic.visible_instances(shapes)] == [1, 2]
    assert [c for c, _, _ in synthetic.visible_instances(shapes, accept=synthetic.one_piece_without_holes)] == [2]


def _blob(rng: np.random.Generator, size: int = 30) -> np.ndarray:
    from scipy import ndimage

    mask = ndimage.gaussian_filter(rng.random((size, size)), 1.2) > 0.5
    return ndimage.binary_fill_holes(mask)


def test_polygons_rasterise_back_to_their_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = _blob(rng)
        if not mask.any():
            continue
        polygons = synthetic.mask_polygons(mask)
        assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in polygons)
        decoded = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, 30, 30))).astype(bool)
        assert (decoded == mask).all()


def test_polygon_of_a_square_has_its_corners_cut_through_the_pixel_centres():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 2:5] = True  # rows 1..3, columns 2..4
    (polygon,) = synthetic.mask_polygons(mask)
    points = sorted(zip(polygon[0::2], polygon[1::2]))
    # the contour at level 0.5 runs half a pixel outside the outer pixel centres, cutting the corners
    assert points == sorted([(2.0, 1.5), (2.5, 1.0), (4.5, 1.0), (5.0, 1.5), (5.0, 3.5), (4.5, 4.0),
                             (2.5, 4.0), (2.0, 3.5)])


def test_masks_with_holes_or_nothing_have_no_polygon():
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert synthetic.has_holes(ring) and not synthetic.has_holes(np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="holes"):
        synthetic.mask_polygons(ring)
    with pytest.raises(ValueError, match="empty"):
        synthetic.mask_polygons(np.zeros((4, 4), dtype=bool))


def test_polygon_splits_are_written_as_polygons(tmp_path):
    def render_square(rng):
        x, y = rng.integers(0, 40, 2)
        mask = np.zeros((64, 64), dtype=bool)
        mask[y : y + 20, x : x + 10] = True
        return np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2), [(2, mask)]

    synthetic.write_coco_dataset(tmp_path / "data", TINY, "squares", CATEGORIES, render_square, polygon_splits=("val",))
    rle, polygons = (COCO(str(tmp_path / "data" / "annotations" / f"{split}.json")) for split in ("train", "val"))
    assert all(isinstance(a["segmentation"], dict) for a in rle.dataset["annotations"])
    assert all(isinstance(a["segmentation"], list) for a in polygons.dataset["annotations"])
    for annotation in polygons.dataset["annotations"]:
        assert polygons.annToMask(annotation).sum() == annotation["area"] == 200
    assert polygons.dataset["info"]["description"] == "gdis synthetic squares dataset, val split"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_objects": 5, "max_objects": 3}, "max_objects"),
        ({"min_objects": 0}, "min_objects"),
        ({"min_object_size": 0.0}, "min_object_size"),
        ({"max_object_size": 1.5}, "max_object_size"),
        ({"min_object_size": 0.5, "max_object_size": 0.3}, "max_object_size"),
        ({"image_size": 32, "max_object_size": 0.2}, "max_object_size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": 0}, "num_val"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"blur_probability": 2.0}, "blur_probability"),
    ],
)
def test_invalid_spec_names_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        SyntheticSpec(**fields)


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    real_render = synthetic._render_image
    calls = []

    def failing_render(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real_render(*args)

    monkeypatch.setattr(synthetic, "_render_image", failing_render)
    with pytest.raises(RuntimeError, match="killed"):
        generate_synthetic_dataset(tmp_path / "data", TINY)
    assert list(tmp_path.iterdir()) == []
