"""Views in the data-loader workers (gdis.augment): the reference's geometry, shared by weak and strong views,
masks and boxes following the image, padding, determinism across workers and resumes, the demo's recipe."""

from __future__ import annotations

import colorsys
import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from gdis.augment import (CITYSCAPES_SHORT_SIDES, Geometry, LabeledViews, Recipe, UnlabeledViews, _saturated,
                          apply_to_image, apply_to_masks, color_aug_ssd, draw_geometry,
                          scale_to_fit, shortest_edge_size, views_loader)
from gdis.coco import encode_mask
from gdis.config import load_schema
from gdis.data import CocoInstances, StepBatchSampler
from gdis.pseudo_quality import HiddenGroundTruth, measure_views
from gdis.sampling import RepeatFactorBatchSampler

AUGMENT_SCHEMA = load_schema()["properties"]["train"]["properties"]["augment"]
RED, BLUE = (250, 10, 10), (10, 10, 250)
NO_NOISE = {"color_jitter_probability": 0.0, "grayscale_probability": 0.0, "blur_probability": 0.0}


def augment_config(geometry: dict | None = None, **overrides) -> dict:
    """``train.augment`` with the schema's defaults, ``geometry`` keys and other keys overridden."""
    defaults = {key: copy.deepcopy(spec["default"]) for key, spec in AUGMENT_SCHEMA["properties"].items()}
    defaults["geometry"] = {key: copy.deepcopy(spec["default"])
                            for key, spec in AUGMENT_SCHEMA["properties"]["geometry"]["properties"].items()}
    defaults["geometry"].update(geometry or {})
    return {**defaults, **overrides}


def small_lsj(**overrides) -> dict:
    return augment_config({"kind": "large_scale_jitter", "target_size": [40, 48], "scale_range": [0.2, 2.0]},
                          **overrides)


def small_crop(**overrides) -> dict:
    return augment_config({"kind": "short_side_crop", "short_sides": [24, 36, 60, 96], "max_size": 200,
                           "crop_size": [20, 40]}, **overrides)


def object_mask(height: int, width: int) -> np.ndarray:
    """A disc and a bar (one object), off-centre so that flips show."""
    ys, xs = np.mgrid[:height, :width]
    disc = (ys - 0.4 * height) ** 2 + (xs - 0.3 * width) ** 2 <= (0.22 * height) ** 2
    bar = (ys > 0.65 * height) & (ys < 0.8 * height) & (xs > 0.1 * width) & (xs < 0.55 * width)
    return (disc | bar).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two images (48x64 and 60x50): a red object (category 3) on blue; image 2 also a small category-5 square."""
    root = tmp_path_factory.mktemp("views")
    coco = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]}
    for image_id, (height, width) in ((1, (48, 64)), (2, (60, 50))):
        mask = object_mask(height, width)
        pixels = np.where(mask[..., None] == 1, RED, BLUE).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{image_id}.png")
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
        objects = [(3, mask)]
        if image_id == 2:
            square = np.zeros((height, width), np.uint8)
            square[5:9, 40:44] = 1
            objects.append((5, square))
        for category, object_pixels in objects:
            ys, xs = np.nonzero(object_pixels)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "area": float(object_pixels.sum()), "segmentation": encode_mask(object_pixels)})
    (root / "train.json").write_text(json.dumps(coco))
    return root, coco


def labeled(dataset, augment: dict, seed: int = 0) -> LabeledViews:
    root, coco = dataset
    return LabeledViews(CocoInstances(coco, root), augment, seed)


def unlabeled(dataset, augment: dict, seed: int = 0) -> UnlabeledViews:
    root, coco = dataset
    return UnlabeledViews(CocoInstances(coco, root, with_targets=False), augment, seed)


# -- the reference's size rules ------------------------------------------------------------------------
def test_resize_rules_are_detectron2s():
    # ResizeScale: fit the image into target x scale, aspect kept, sizes rounded (np.round)
    assert scale_to_fit(480, 640, (1024, 1024), 0.5) == (384, 512)
    assert scale_to_fit(480, 640, (1024, 1024), 2.0) == (1536, 2048)
    assert scale_to_fit(427, 640, (1024, 1024), 1.0) == (683, 1024)  # 427 * 1.6 = 683.2
    # ResizeShortestEdge: short side to the choice, long side capped, int(x + 0.5)
    assert shortest_edge_size(1024, 2048, 512, 4096) == (512, 1024)
    assert shortest_edge_size(1024, 2048, 2048, 4096) == (2048, 4096)
    assert shortest_edge_size(480, 640, 2048, 2000) == (1500, 2000)
    assert shortest_edge_size(640, 427, 819, 4096) == (1228, 819)  # 640 * 819 / 427 = 1227.6
    # The Cityscapes short sides of the reference config
    assert list(CITYSCAPES_SHORT_SIDES) == [int(x * 0.1 * 1024) for x in range(5, 21)]
    assert AUGMENT_SCHEMA["properties"]["geometry"]["properties"]["short_sides"]["default"] == list(CITYSCAPES_SHORT_SIDES)


def test_large_scale_jitter_draws_as_resize_scale_and_fixed_size_crop():
    recipe = Recipe.from_config(augment_config({"kind": "large_scale_jitter"}))
    generator = torch.Generator().manual_seed(0)
    scales, padded = [], 0
    for _ in range(300):
        geometry = draw_geometry(recipe, 480, 640, generator)
        assert geometry.canvas == (1024, 1024)
        height, width = geometry.resized
        scales.append(width / 640 * 1024 / 1024 / (1024 / 640))  # the drawn scale: 640 wide fits 1024 * scale
        top, left, crop_height, crop_width = geometry.crop
        assert (crop_height, crop_width) == (min(1024, height), min(1024, width))
        # one uniform draw places the window on both axes
        max_top, max_left = max(height - 1024, 0), max(width - 1024, 0)
        if max_top and max_left:
            assert abs(top / max_top - left / max_left) <= 0.5 / max_top + 0.5 / max_left
        padded += crop_height < 1024
    assert min(scales) >= 0.1 - 1e-3 and max(scales) <= 2.0 + 1e-3
    assert np.mean(scales) == pytest.approx(1.05, abs=0.06)  # uniform on [0.1, 2]
    # the window is smaller than 1024 (padded) when 480 * 1.6 * s < 1024, s < 4 / 3: (4/3 - 0.1) / 1.9 of draws
    assert padded / 300 == pytest.approx((4 / 3 - 0.1) / 1.9, abs=0.08)


def test_short_side_crop_draws_as_resize_shortest_edge_and_random_crop():
    recipe = Recipe.from_config(augment_config({"kind": "short_side_crop"}))
    generator = torch.Generator().manual_seed(0)
    shorts, lefts = set(), []
    for _ in range(400):
        geometry = draw_geometry(recipe, 1024, 2048, generator)
        shorts.add(geometry.resized[0])
        assert geometry.resized == shortest_edge_size(1024, 2048, geometry.resized[0], 4096)
        assert geometry.canvas == (512, 1024) and geometry.crop[2:] == (512, 1024)
        top, left = geometry.crop[:2]
        assert 0 <= top <= geometry.resized[0] - 512 and 0 <= left <= geometry.resized[1] - 1024
        if geometry.resized[0] == 2048:
            lefts.append(left / (4096 - 1024))
    assert shorts == set(CITYSCAPES_SHORT_SIDES)
    assert np.mean(lefts) == pytest.approx(0.5, abs=0.15)  # offsets uniform, independent of the short side


def test_short_side_crops_are_padded_to_the_crop_size_as_the_ade20k_mapper_does():
    """The ADE20K plan's short sides 320-576 leave a ~512 x 683 image below its 640 x 640 crop: Mask2Former's mapper
    (INPUT.SIZE_DIVISIBILITY 640) pads the view to 640 x 640 with 128 and the masks with 0; without
    pad_to_crop_size (Cityscapes) the same draw keeps the view at the image's size."""
    from gdis.plans import Plans
    from tests.conftest import REPO

    augment = Plans([], default=str(REPO / "config" / "config.yaml")).config("ade20k", "mask2former_r50")["train"]["augment"]
    assert augment["geometry"]["pad_to_crop_size"] and augment["geometry"]["crop_size"] == [640, 640]
    padded = Recipe.from_config(augment)
    unpadded = Recipe.from_config({**augment, "geometry": {**augment["geometry"], "pad_to_crop_size": False}})
    image, masks = torch.full((3, 512, 683), 90, dtype=torch.uint8), torch.ones((1, 512, 683), dtype=torch.uint8)
    small = 0
    for seed in range(60):
        geometry = draw_geometry(padded, 512, 683, torch.Generator().manual_seed(seed))
        plain = draw_geometry(unpadded, 512, 683, torch.Generator().manual_seed(seed))
        assert geometry.canvas == (640, 640) and (geometry.crop, geometry.resized) == (plain.crop, plain.resized)
        assert plain.canvas == plain.valid_size == geometry.valid_size
        height, width = geometry.valid_size
        view, mask = apply_to_image(image, geometry, padded.pad_value), apply_to_masks(masks, geometry)
        assert view.shape == (3, 640, 640) and mask.shape == (1, 640, 640)
        assert (view[:, :height, :width] == 90).all() and (view[:, height:] == 128).all() and (view[:, :, width:] == 128).all()
        assert mask[0, :height, :width].all() and mask.sum() == height * width
        small += height < 640
    assert small > 10  # short sides 320-576: 5 of the 16


# -- images, masks, boxes -------------------------------------------------------------------------------
def test_masks_are_torchvisions_nearest_exact_resize_then_crop():
    masks = (torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0)) > 0.7).to(torch.uint8)
    for geometry in (Geometry(True, (80, 110), (13, 40, 50, 70), (50, 70)),
                     Geometry(False, (9, 13), (0, 0, 9, 13), (20, 30)),
                     Geometry(False, (40, 57), (0, 5, 40, 52), (48, 52))):
        expected = masks.flip(-1) if geometry.flip else masks
        expected = F.resize(tv_tensors.Mask(expected), list(geometry.resized),
                            interpolation=v2.InterpolationMode.NEAREST_EXACT)
        expected = F.crop(expected, *geometry.crop)  # crops inside the image: no padding by crop
        expected = nnf.pad(expected, (0, geometry.canvas[1] - expected.shape[-1], 0, geometry.canvas[0] - expected.shape[-2]))
        assert torch.equal(apply_to_masks(masks, geometry), expected.as_subclass(torch.Tensor))


def band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` of the boundary of a binary (H, W) mask."""
    m = mask[None, None].float()
    grown = nnf.max_pool2d(m, 2 * width + 1, stride=1, padding=width)
    shrunk = -nnf.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (grown != shrunk)[0, 0]


@pytest.mark.parametrize("make_augment", [small_lsj, small_crop, lambda **keys: augment_config(**keys)],
                         ids=["lsj", "crop", "flip"])
def test_masks_and_boxes_follow_the_image(dataset, make_augment):
    views = labeled(dataset, make_augment(color_aug_ssd=False))
    flips = 0
    for position in range(40):
        for index in range(2):
            view, target = views[(index, position)]
            red = (view[0] > 127) & (view[2] < 128)
            valid_h, valid_w = target["valid_size"]
            assert view.dtype == torch.uint8 and target["masks"].shape[-2:] == view.shape[-2:]
            union = target["masks"].amax(0) if len(target["masks"]) else torch.zeros(view.shape[-2:], dtype=torch.uint8)
            objects = target["masks"][target["labels"] == 1]  # category 3 is label 1 (5 is label 2)
            red_object = objects[0].bool() if len(objects) else torch.zeros_like(red)
            # exactly the red pixels, up to interpolation along the object's edge
            disagree = red ^ red_object
            assert not (disagree & ~band(red_object, 1) & ~band(red, 1)).any(), (index, position)
            if red_object.sum() >= 200:
                assert disagree.sum() <= 0.1 * red_object.sum()
            # boxes are the tight boxes of the masks, at pixel edges
            for mask, box in zip(target["masks"], target["boxes"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if make_augment is not small_lsj and make_augment is not small_crop:
                    continue  # the flip recipe keeps the annotation's boxes, mirrored
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # padding: right and bottom of the valid region, value 128, no mask there
            assert (view[:, valid_h:, :] == 128).all() and (view[:, :, valid_w:] == 128).all()
            assert not union[valid_h:, :].any() and not union[:, valid_w:].any()
            if make_augment is small_crop:  # narrower where the resized image is
                size = ((48, 64), (60, 50))[index]
                widths = {min(40, shortest_edge_size(*size, side, 200)[1]) for side in (24, 36, 60, 96)}
                assert view.shape[-2] == 20 and view.shape[-1] in widths
            if make_augment is small_lsj:
                assert tuple(view.shape[-2:]) == (40, 48)
            flips += bool(red[:, : view.shape[-1] // 2].sum() < red[:, view.shape[-1] // 2:].sum())
    assert 10 < flips < 70  # the object (left of centre) is mirrored about half the time


def test_objects_cropped_away_are_dropped(dataset):
    """Image 2's small square lies top right: crops that miss it leave one instance, with its label."""
    views = labeled(dataset, small_crop())
    counts = set()
    for position in range(60):
        _, target = views[(1, position)]
        assert len(target["masks"]) == len(target["labels"]) == len(target["boxes"])
        assert target["masks"].flatten(1).any(1).all()
        counts.add(len(target["labels"]))
    assert counts == {1, 2}


def test_demo_recipe_is_a_flip_of_the_image_at_its_size(dataset):
    root, coco = dataset
    images = CocoInstances(coco, root)
    views = labeled(dataset, augment_config())
    flipped = 0
    for position in range(50):
        image, target = images[1]
        view, view_target = views[(1, position)]
        mirrored = not torch.equal(view, image)
        flipped += mirrored
        assert torch.equal(view, image.flip(-1) if mirrored else image)
        assert torch.equal(view_target["masks"], target["masks"].flip(-1) if mirrored else target["masks"])
        assert torch.equal(view_target["labels"], target["labels"])
        x1, y1, x2, y2 = target["boxes"].unbind(-1)
        boxes = torch.stack([image.shape[-1] - x2, y1, image.shape[-1] - x1, y2], -1) if mirrored else target["boxes"]
        assert torch.equal(view_target["boxes"], boxes)
        assert view_target["valid_size"] == (60, 50) and view_target["image_id"] == 2
    assert 12 < flipped < 38


def test_reference_sizes_on_a_coco_sized_image(tmp_path):
    """The paper's recipes: 1024x1024 views of a 480x640 image; Cityscapes' 512x1024 crops of 1024x2048."""
    for (height, width), geometry, shape in (((480, 640), {"kind": "large_scale_jitter"}, (1024, 1024)),
                                             ((1024, 2048), {"kind": "short_side_crop"}, (512, 1024))):
        Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(tmp_path / f"{height}.jpg")
        coco = {"images": [{"id": 1, "file_name": f"{height}.jpg", "height": height, "width": width}],
                "annotations": [], "categories": [{"id": 1, "name": "a"}]}
        weak, strong, info = UnlabeledViews(CocoInstances(coco, tmp_path, with_targets=False),
                                            augment_config(geometry), 0)[(0, 7)]
        assert weak.shape == strong.shape == (3, *shape) and info["geometry"].canvas == shape


# -- weak and strong views -------------------------------------------------------------------------------
@pytest.mark.parametrize("make_augment", [small_lsj, small_crop])
def test_strong_view_is_the_weak_view_plus_noise(dataset, make_augment):
    quiet = unlabeled(dataset, make_augment(**NO_NOISE))
    for position in range(10):
        weak, strong, _ = quiet[(0, position)]
        assert torch.equal(weak, strong)
    # colour jitter and grayscale map each pixel's colour alone: equal weak pixels are equal strong pixels
    pointwise = unlabeled(dataset, make_augment(color_jitter_probability=1.0, grayscale_probability=0.5,
                                                blur_probability=0.0))
    changed = 0
    for position in range(10):
        weak, strong, _ = pointwise[(0, position)]
        colour = (weak.long() * torch.tensor([65536, 256, 1])[:, None, None]).sum(0).flatten()
        for value in colour.unique():
            same = strong.flatten(1)[:, colour == value]
            assert (same == same[:, :1]).all()
        changed += not torch.equal(weak, strong)
    assert changed >= 8
    # with blur too, the strong view's pixels still fall on the weak view's object and background
    noisy = unlabeled(dataset, make_augment(color_jitter_probability=1.0, blur_probability=1.0))
    for position in range(10):
        weak, strong, info = noisy[(0, position)]
        red, valid = regions(weak, info["geometry"])
        if not red.any() or not (~red & valid).any():
            continue
        colours = strong.float()
        inside, outside = colours[:, red].mean(1), colours[:, ~red & valid].mean(1)
        nearer_inside = (colours - inside[:, None, None]).norm(dim=0) < (colours - outside[:, None, None]).norm(dim=0)
        wrong = (nearer_inside ^ red) & valid & ~band(red, 3)
        assert wrong.sum() <= 0.02 * valid.sum(), position


def regions(weak: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak view's red pixels and its image (not padding) pixels."""
    red = (weak[0] > 127) & (weak[2] < 128)
    valid = torch.zeros_like(red)
    valid[: geometry.valid_size[0], : geometry.valid_size[1]] = True
    return red, valid


def test_ssd_colour_distortion_reaches_the_weak_and_strong_views(dataset):
    plain = unlabeled(dataset, small_crop(**NO_NOISE))
    ssd = unlabeled(dataset, small_crop(color_aug_ssd=True, **NO_NOISE))
    differs = 0
    for position in range(12):
        weak, _, info = plain[(0, position)]
        weak_ssd, strong_ssd, info_ssd = ssd[(0, position)]
        assert info["geometry"] == info_ssd["geometry"] and torch.equal(weak_ssd, strong_ssd)
        differs += not torch.equal(weak, weak_ssd)
    assert differs >= 6


def test_ssd_saturation_and_hue_are_hsv_operations():
    pixels = torch.tensor([[200, 30, 90], [10, 240, 20], [128, 128, 128], [255, 200, 0], [40, 50, 60]],
                          dtype=torch.uint8).T.reshape(3, 1, 5)
    for alpha in (0.5, 1.3):
        out = _saturated(pixels, alpha)
        for column in range(5):
            h, s, v = colorsys.rgb_to_hsv(*(pixels[:, 0, column].double() / 255).tolist())
            expected = colorsys.hsv_to_rgb(h, min(s * alpha, 1.0), v)
            assert out[:, 0, column].tolist() == pytest.approx([round(c * 255) for c in expected], abs=1)
    # hue by 18 OpenCV units of 2 degrees = 36 degrees
    shifted = F.adjust_hue(pixels, 18 / 180)
    for column in (0, 1, 3):
        h, s, v = colorsys.rgb_to_hsv(*(pixels[:, 0, column].double() / 255).tolist())
        expected = colorsys.hsv_to_rgb((h + 36 / 360) % 1, s, v)
        assert shifted[:, 0, column].tolist() == pytest.approx([c * 255 for c in expected], abs=2)


def test_ssd_distortion_range():
    image = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    means = [float(color_aug_ssd(image, torch.Generator().manual_seed(seed)).float().mean()) for seed in range(200)]
    assert min(means) >= 100 * 0.5 - 32 - 1 and max(means) <= 100 * 1.5 + 32 + 1
    assert sum(m == 100 for m in means) >= 10  # every step is skipped with probability 1/2: ~1/8 unchanged


# -- determinism -----------------------------------------------------------------------------------------
def batches(views, sampler, workers):
    return list(views_loader(views, sampler, workers))


def assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys() and all(
                torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
        else:
            assert_same(a, b)


@pytest.mark.parametrize("make_augment", [small_lsj, small_crop])
def test_batches_do_not_depend_on_workers_or_resume(dataset, make_augment):
    augment = make_augment(color_aug_ssd=True)
    lab, unl = labeled(dataset, augment, seed=4), unlabeled(dataset, augment, seed=5)
    whole = batches(lab, RepeatFactorBatchSampler([1.0, 2.5], 3, seed=1, start_step=0, num_steps=6), 0)
    assert_same(whole, batches(lab, RepeatFactorBatchSampler([1.0, 2.5], 3, seed=1, start_step=0, num_steps=6), 2))
    assert_same(whole[4:], batches(lab, RepeatFactorBatchSampler([1.0, 2.5], 3, seed=1, start_step=4, num_steps=2), 2))
    # two ranks together make the single-process batch, each sample's augmentation included
    ranks = [batches(lab, RepeatFactorBatchSampler([1.0, 2.5], 3, 1, 0, 6, rank=r, world_size=2), 0) for r in (0, 1)]
    for (views, targets), (views0, targets0), (views1, targets1) in zip(whole, *ranks):
        assert_same(views[0::2], views0) and assert_same(views[1::2], views1)
        assert_same(targets[0::2], targets0) and assert_same(targets[1::2], targets1)
    whole = batches(unl, StepBatchSampler(2, 4, seed=2, start_step=0, num_steps=4), 0)
    assert_same(whole, batches(unl, StepBatchSampler(2, 4, seed=2, start_step=0, num_steps=4), 2))
    assert_same(whole[3:], batches(unl, StepBatchSampler(2, 4, seed=2, start_step=3, num_steps=1), 0))
    # the global generator is left alone (its state is the trainer's)
    state = torch.get_rng_state()
    unl[(0, 0)]
    assert torch.equal(state, torch.get_rng_state())


def test_views_need_positions(dataset):
    with pytest.raises(TypeError, match="PositionedBatchSampler"):
        labeled(dataset, small_lsj())[0]


# -- hidden ground truth in the views' frame -------------------------------------------------------------
def test_hidden_truth_is_carried_into_each_view(dataset):
    root, _ = dataset
    truth = HiddenGroundTruth(root / "train.json", [3, 5])
    views = unlabeled(dataset, small_lsj(**NO_NOISE))
    for position in range(8):
        weak, _, info = views[(0, position)]
        red = ((weak[0] > 127) & (weak[2] < 128)).to(torch.uint8)
        if not red.any():
            continue
        # a teacher that segments the red object exactly is fully right; one that marks the mirror image is not
        right = measure_views(truth, [info], [{"masks": red[None], "labels": torch.tensor([1])}])
        assert right["pseudo_label_precision"] == 1.0 and right["pseudo_label_recall"] == 1.0
        mirrored = red.flip(-1)
        if (mirrored & red).sum() * 2 < red.sum():
            wrong = measure_views(truth, [info], [{"masks": mirrored[None], "labels": torch.tensor([1])}])
            assert wrong["pseudo_label_precision"] == 0.0


# -- config -----------------------------------------------------------------------------------------------
def test_config_problems_name_the_keys():
    from gdis.config import _augment_problems as config_problems

    config = {"train": {"augment": augment_config({"kind": "large_scale_jitter", "scale_range": [2.0, 0.1]})},
              "model": {"min_size": [800], "max_size": 1333}}
    problems = config_problems(config)
    assert any(p.startswith("train.augment.geometry.scale_range") for p in problems)
    assert any(p.startswith("model.min_size: [800]") and "[1024]" in p for p in problems)
    fine = {"train": {"augment": augment_config({"kind": "large_scale_jitter"})},
            "model": {"min_size": [1024], "max_size": 1333}}
    assert config_problems(fine) == []
    demo = {"train": {"augment": augment_config()}, "model": {"min_size": [112, 128, 144], "max_size": 1333}}
    assert config_problems(demo) == []
    cityscapes = {"train": {"augment": augment_config({"kind": "short_side_crop", "max_size": 1024})},
                  "model": {"min_size": [512], "max_size": 1024}}
    assert [p.split(":")[0] for p in config_problems(cityscapes)] == ["train.augment.geometry.short_sides"]
    with pytest.raises(ValueError, match="train.augment.geometry.kind"):
        Recipe.from_config(augment_config({"kind": "mosaic"}))


def test_image_and_masks_move_alike():
    """apply_to_image moves pixels where apply_to_masks moves mask pixels (an image of an indicator mask)."""
    mask = torch.zeros(1, 30, 44, dtype=torch.uint8)
    mask[0, 5:20, 3:17] = 1
    image = (mask * 255).expand(3, -1, -1).contiguous()
    geometry = Geometry(True, (60, 88), (10, 30, 45, 58), (50, 64))
    view, view_mask = apply_to_image(image, geometry, 0), apply_to_masks(mask, geometry)[0]
    assert not (((view[0] > 127) ^ view_mask.bool()) & ~band(view_mask.bool(), 1)).any()
    assert math.isclose(float((view[0] > 127).sum()), float(view_mask.sum()), rel_tol=0.1)
