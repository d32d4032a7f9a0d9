"""Training views made in the data-loader workers, with the reference's geometry (``train.augment``).

Recipes (``train.augment.geometry.kind``):

- ``flip``: horizontal flip only, at the image's own size; the model's multi-scale resize
  (``model.min_size``) does the rest. The demo's recipe.
- ``large_scale_jitter``: COCO's (GuidedDistillation's coco_instance_new_baseline_dataset_mapper.py for
  labelled, coco_image_dataset_mapper.py for unlabelled images): detectron2's RandomFlip, then
  ResizeScale(min_scale 0.1, max_scale 2.0, 1024 x 1024) and FixedSizeCrop(1024 x 1024), which pads the
  right and bottom with 128 (INPUT.IMAGE_SIZE, MIN_SCALE, MAX_SCALE of Base-COCO-InstanceSegmentation.yaml).
- ``short_side_crop``: Cityscapes' (mask_former_instance_dataset_mapper.py and
  mask_former_image_dataset_mapper.py, Base-Cityscapes-InstanceSegmentation.yaml): ResizeShortestEdge to a
  short side chosen from INPUT.MIN_SIZE_TRAIN (512 ... 2048, "choice"), long side at most MAX_SIZE_TRAIN 4096,
  then RandomCrop "absolute" 512 x 1024 (INPUT.CROP; no padding: SIZE_DIVISIBILITY -1), then RandomFlip.
  The instance mapper uses the plain RandomCrop: INPUT.CROP.SINGLE_CATEGORY_MAX_AREA only acts in
  the semantic mapper. With ``pad_to_crop_size`` a view smaller than the crop (an image whose resized side
  is below it) is padded on the right and bottom with ``pad_value`` to the crop size, as the mapper does
  when INPUT.SIZE_DIVISIBILITY is the crop's side (Mask2Former's ADE20K instance config: 640). With ``train.augment.color_aug_ssd`` (INPUT.COLOR_AUG_SSD) the view gets SSD's
  photometric distortion, in the weak view, so the student's strong view has it too.

Every view is drawn as one ``Geometry``: flip, resize, crop window, canvas (padding on the right and
bottom). Flipping before the resize and crop is the reference's order for COCO; for Cityscapes, which
flips after the crop, it gives the same distribution (the crop offset is uniform, so its mirror is too).

An unlabelled image gives a weak view (the teacher's) and a strong view (the student's): the weak one
plus the paper's photometric noise (``gdis.data.photometric_augmentation``), so the teacher pseudo-labels
the very crop the student sees. Views are uint8 (3, H, W) tensors, as the reference's mappers give;
the trainer converts them to float on its device (``gdis.data.to_float``).

Randomness: each sample's draws come from generators seeded by (seed, stream position) — the
position of ``gdis.sampling.PositionedBatchSampler`` — so a batch is the same whichever worker makes it,
with any number of workers, and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from gdis.data import CocoInstances, mask_boxes, photometric_augmentation

GEOMETRIES = ("flip", "large_scale_jitter", "short_side_crop")
# INPUT.MIN_SIZE_TRAIN of Base-Cityscapes-InstanceSegmentation.yaml: [int(x * 0.1 * 1024) for x in range(5, 21)].
CITYSCAPES_SHORT_SIDES = (512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740, 1843, 1945, 2048)
# detectron2's ColorAugSSDTransform defaults (projects/PointRend/point_rend/color_augmentation.py).
SSD_BRIGHTNESS_DELTA = 32
SSD_CONTRAST_RANGE = (0.5, 1.5)
SSD_SATURATION_RANGE = (0.5, 1.5)
SSD_HUE_DELTA = 18  # in OpenCV's 8-bit hue unit, 2 degrees: at most 36 degrees either way
GEOMETRY_STREAM, PHOTOMETRIC_STREAM = 0, 1  # the two generators a sample draws from


@dataclass(frozen=True)
class Recipe:
    """``train.augment`` as the views need it (see the schema for each key)."""

    kind: str
    flip_probability: float
    target_size: tuple[int, int]
    scale_range: tuple[float, float]
    short_sides: tuple[int, ...]
    max_size: int
    crop_size: tuple[int, int]
    pad_value: int
    pad_to_crop_size: bool
    color_aug_ssd: bool

    @classmethod
    def from_config(cls, augment: dict) -> Recipe:
        geometry = augment["geometry"]
        if geometry["kind"] not in GEOMETRIES:
            raise ValueError(f"train.augment.geometry.kind: {geometry['kind']!r} is none of {', '.join(GEOMETRIES)}")
        return cls(kind=geometry["kind"], flip_probability=augment["flip_probability"],
                   target_size=tuple(geometry["target_size"]), scale_range=tuple(geometry["scale_range"]),
                   short_sides=tuple(geometry["short_sides"]), max_size=geometry["max_size"],
                   crop_size=tuple(geometry["crop_size"]), pad_value=geometry["pad_value"],
                   pad_to_crop_size=geometry["pad_to_crop_size"], color_aug_ssd=augment["color_aug_ssd"])


@dataclass(frozen=True)
class Geometry:
    """Where a view's pixels come from: the image, flipped or not, resized to ``resized`` (h, w); the window
    ``crop`` (top, left, height, width) of that; placed at the top left of a ``canvas`` (h, w), the rest padding."""

    flip: bool
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    canvas: tuple[int, int]

    @property
    def valid_size(self) -> tuple[int, int]:
        """(h, w) of the image content at the top left of the view; below and right of it is padding."""
        return self.crop[2], self.crop[3]


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _integer(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


def scale_to_fit(height: int, width: int, target: tuple[int, int], scale: float) -> tuple[int, int]:
    """detectron2's ResizeScale: the size that fits the image, aspect kept, into ``target`` × ``scale``, rounded."""
    factor = min(target[0] * scale / height, target[1] * scale / width)
    return max(1, int(np.round(height * factor))), max(1, int(np.round(width * factor)))


def shortest_edge_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape: short side ``short_side``, long side at most ``max_size``."""
    scale = short_side / min(height, width)
    new_height, new_width = (short_side, scale * width) if height < width else (scale * height, short_side)
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def draw_geometry(recipe: Recipe, height: int, width: int, generator: torch.Generator) -> Geometry:
    """One random view geometry of a ``height`` × ``width`` image."""
    flip = bool(torch.rand((), generator=generator) < recipe.flip_probability)
    if recipe.kind == "flip":
        return Geometry(flip, (height, width), (0, 0, height, width), (height, width))
    if recipe.kind == "large_scale_jitter":
        resized = scale_to_fit(height, width, recipe.target_size, _uniform(*recipe.scale_range, generator))
        # FixedSizeCrop: one uniform draw places the window along both axes; a smaller image is padded.
        where = _uniform(0.0, 1.0, generator)
        top, left = (int(np.round(max(r - t, 0) * where)) for r, t in zip(resized, recipe.target_size))
        crop = (top, left, min(recipe.target_size[0], resized[0]), min(recipe.target_size[1], resized[1]))
        return Geometry(flip, resized, crop, recipe.target_size)
    if recipe.kind == "short_side_crop":
        short_side = recipe.short_sides[_integer(len(recipe.short_sides), generator)]
        resized = shortest_edge_size(height, width, short_side, recipe.max_size)
        # RandomCrop "absolute": the crop size, or the image's side where it is smaller; padded to the crop size
        # when the mapper pads (pad_to_crop_size), otherwise left as it is.
        crop_height, crop_width = min(recipe.crop_size[0], resized[0]), min(recipe.crop_size[1], resized[1])
        top, left = _integer(resized[0] - crop_height + 1, generator), _integer(resized[1] - crop_width + 1, generator)
        canvas = recipe.crop_size if recipe.pad_to_crop_size else (crop_height, crop_width)
        return Geometry(flip, resized, (top, left, crop_height, crop_width), canvas)
    raise ValueError(f"train.augment.geometry.kind: {recipe.kind!r} is none of {', '.join(GEOMETRIES)}")


def _pad(view: torch.Tensor, geometry: Geometry, value: int) -> torch.Tensor:
    bottom, right = geometry.canvas[0] - view.shape[-2], geometry.canvas[1] - view.shape[-1]
    if bottom == 0 and right == 0:
        return view
    return F.pad(view, [0, 0, right, bottom], fill=value)


def apply_to_image(image: torch.Tensor, geometry: Geometry, pad_value: int) -> torch.Tensor:
    """The view of a uint8 (3, H, W) image: flip, bilinear resize with antialiasing (as PIL's, which the
    reference uses), crop, pad with ``pad_value`` (FixedSizeCrop's 128)."""
    if geometry.flip:
        image = F.horizontal_flip(image)
    if tuple(image.shape[-2:]) != geometry.resized:
        image = F.resize(image, list(geometry.resized), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    image = F.crop(image, *geometry.crop)
    return _pad(image, geometry, pad_value)


def source_indices(size: int, resized: int, start: int, length: int) -> torch.Tensor:
    """Source pixel of each of ``length`` pixels from ``start`` of a nearest-exact resize of ``size`` to ``resized``."""
    scale = size / resized
    return ((torch.arange(start, start + length, dtype=torch.float64) + 0.5) * scale).floor().long().clamp(max=size - 1)


def apply_to_masks(masks: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The view of binary (N, H, W) masks: as torchvision's nearest-exact resize (pixel centres) followed by the
    crop and zero padding, but reading only the window's pixels (a 2x-scaled crop reads a quarter of them)."""
    if geometry.flip:
        masks = masks.flip(-1)
    if geometry.resized == tuple(masks.shape[-2:]) and geometry.crop == (0, 0, *geometry.resized):
        return _pad(masks, geometry, 0)
    top, left, height, width = geometry.crop
    columns = source_indices(masks.shape[-1], geometry.resized[1], left, width)
    rows = source_indices(masks.shape[-2], geometry.resized[0], top, height)
    view = masks.index_select(-1, columns).index_select(-2, rows)
    return _pad(view, geometry, 0)


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    flipped = boxes.clone()
    flipped[:, [0, 2]] = width - boxes[:, [2, 0]]
    return flipped


def apply_to_target(target: dict, geometry: Geometry, image_width: int) -> dict:
    """A target (boxes, labels, masks) in the view's frame.

    When the view is the whole image (flip only) the boxes are mirrored and kept, as the demo did. Otherwise
    masks that the crop leaves empty are dropped and each box is the tight box of its cropped mask, as
    the reference's LSJ mapper does (``gt_masks.get_bounding_boxes()`` then ``filter_empty_instances``).
    The reference's Cityscapes instance mapper keeps instances cropped away, as empty masks; gdis drops
    them there too: an empty mask is no object, and Mask R-CNN rejects empty boxes.
    """
    masks = apply_to_masks(target["masks"], geometry)
    view = {**target, "masks": masks}
    whole_image = geometry.resized == tuple(target["masks"].shape[-2:]) and geometry.canvas == geometry.resized
    if whole_image:
        view["boxes"] = flip_boxes(target["boxes"], image_width) if geometry.flip else target["boxes"]
        return view
    keep = masks.flatten(1).any(1).bool()  # any() of uint8 is uint8
    view.update(masks=masks[keep], labels=target["labels"][keep], boxes=mask_boxes(masks[keep]))
    return view


# -- SSD's photometric distortion (detectron2's ColorAugSSDTransform) ------------------------------------
def _scaled(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """alpha × image + beta, clipped to [0, 255] and truncated to uint8 (as the reference's ``convert``)."""
    return (image.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def _saturated(image: torch.Tensor, alpha: float) -> torch.Tensor:
    """HSV saturation times ``alpha`` (at most 1), hue and value kept.

    In HSV each RGB channel is V - S V g(H) with g depending on the hue only, so scaling S by k moves every
    channel towards V by k: c' = V - k (V - c), k = min(alpha, V / (V - min)). The reference converts to
    8-bit HSV with OpenCV and back; this is the same map without the 8-bit HSV rounding.
    """
    rgb = image.float()
    value, low = rgb.amax(0), rgb.amin(0)
    spread = value - low
    factor = torch.where(spread > 0, torch.minimum(torch.full_like(value, alpha), value / spread.clamp(min=1e-6)),
                         torch.ones_like(value))
    return (value - factor * (value - rgb)).round_().clamp_(0, 255).to(torch.uint8)


def color_aug_ssd(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SSD's photometric distortion of a uint8 (3, H, W) image (detectron2's ColorAugSSDTransform).

    Each step happens with probability 1/2: brightness (add a value in ±32); then, in one of two orders
    chosen with probability 1/2, contrast (times [0.5, 1.5]) first or last around saturation (HSV S times
    [0.5, 1.5]) and hue (shifted by up to 18 OpenCV units of 2 degrees).
    """
    def coin() -> bool:
        return bool(_integer(2, generator))

    def contrast(view):
        return _scaled(view, alpha=_uniform(*SSD_CONTRAST_RANGE, generator)) if coin() else view

    def saturation(view):
        return _saturated(view, _uniform(*SSD_SATURATION_RANGE, generator)) if coin() else view

    def hue(view):
        if not coin():
            return view
        shift = _integer(2 * SSD_HUE_DELTA + 1, generator) - SSD_HUE_DELTA
        return F.adjust_hue(view, shift / 180)  # 180 OpenCV hue units make the whole circle

    if coin():
        image = _scaled(image, beta=_uniform(-SSD_BRIGHTNESS_DELTA, SSD_BRIGHTNESS_DELTA, generator))
    if coin():
        return hue(saturation(contrast(image)))
    return contrast(hue(saturation(image)))


# -- per-sample randomness ---------------------------------------------------------------------------------
def sample_seed(seed: int, position: int, stream: int) -> int:
    """A 63-bit seed for one sample's generator ``stream``, from the run's seed and the sample's stream position."""
    return int(np.random.SeedSequence([seed, position, stream]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_generator(seed: int, position: int, stream: int = GEOMETRY_STREAM) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, position, stream))


def _key(item) -> tuple[int, int]:
    if not (isinstance(item, tuple) and len(item) == 2):
        raise TypeError("views datasets take (index, stream position) pairs: load them through "
                        f"gdis.sampling.PositionedBatchSampler (got {item!r})")
    return int(item[0]), int(item[1])


class LabeledViews(Dataset):
    """(view, target) of labelled images: uint8 (3, H, W) view; target with image_id, boxes, labels (1..K),
    masks (uint8, N × H × W) and ``valid_size`` (h, w), all in the view's frame. Items are (index, position)."""

    def __init__(self, images: CocoInstances, augment: dict, seed: int) -> None:
        if not images.with_targets:
            raise ValueError("LabeledViews needs a CocoInstances with targets")
        self.images, self.recipe, self.seed = images, Recipe.from_config(augment), seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item) -> tuple[torch.Tensor, dict]:
        index, position = _key(item)
        image, target = self.images[index]
        generator = sample_generator(self.seed, position)
        geometry = draw_geometry(self.recipe, image.shape[-2], image.shape[-1], generator)
        view = apply_to_image(image, geometry, self.recipe.pad_value)
        if self.recipe.color_aug_ssd:
            view = color_aug_ssd(view, generator)
        target = apply_to_target(target, geometry, image.shape[-1])
        target["valid_size"] = geometry.valid_size
        return view, target


class UnlabeledViews(Dataset):
    """(weak, strong, info) of unlabelled images: uint8 (3, H, W) views sharing one geometry, the strong one
    the weak one plus the photometric noise; info has ``image_id`` and the ``geometry`` (``apply_to_masks``
    maps the image's hidden ground truth into the views' frame). Items are (index, position)."""

    def __init__(self, images: CocoInstances, augment: dict, seed: int) -> None:
        self.images, self.recipe, self.seed = images, Recipe.from_config(augment), seed
        self.strong = photometric_augmentation(augment)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor, dict]:
        index, position = _key(item)
        image, info = self.images[index]
        generator = sample_generator(self.seed, position)
        geometry = draw_geometry(self.recipe, image.shape[-2], image.shape[-1], generator)
        weak = apply_to_image(image, geometry, self.recipe.pad_value)
        if self.recipe.color_aug_ssd:
            weak = color_aug_ssd(weak, generator)
        # torchvision's random transforms draw from torch's global generator: seed it for this sample alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, position, PHOTOMETRIC_STREAM))
            strong = self.strong(weak)
        return weak, strong, {"image_id": info["image_id"], "geometry": geometry}


def collate_labeled(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    views, targets = zip(*batch)
    return list(views), list(targets)


def collate_unlabeled(batch: list) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict]]:
    weak, strong, infos = zip(*batch)
    return list(weak), list(strong), list(infos)


def views_loader(views: LabeledViews | UnlabeledViews, batch_sampler, workers: int) -> torch.utils.data.DataLoader:
    """Batches of ``views`` for a step batch sampler (``gdis.data.StepBatchSampler`` or
    ``gdis.sampling.RepeatFactorBatchSampler``), made by ``workers`` processes (0: this one)."""
    from gdis.sampling import PositionedBatchSampler

    collate = collate_labeled if isinstance(views, LabeledViews) else collate_unlabeled
    return torch.utils.data.DataLoader(views, batch_sampler=PositionedBatchSampler(batch_sampler), collate_fn=collate,
                                       num_workers=workers)


def step_views_loader(views: LabeledViews | UnlabeledViews, batch_size: int, seed: int, start_step: int,
                      num_steps: int, workers: int, rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """``views_loader`` over uniformly drawn batches (``gdis.data.StepBatchSampler``) of steps start_step, ..."""
    from gdis.data import StepBatchSampler

    sampler = StepBatchSampler(len(views), batch_size, seed, start_step, num_steps, rank, world_size)
    return views_loader(views, sampler, workers)
