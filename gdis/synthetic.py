"""Built-in synthetic instance-segmentation dataset (COCO format), generated deterministically from a seed.

Class = shape (never colour). Random rotation, scale, aspect, textures, clutter, occlusion, noise and blur
make the task hard enough that mask AP clearly grows with the number of labelled images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import contourpy
import numpy as np
from PIL import Image, ImageFilter
from pycocotools import mask as mask_util
from scipy import ndimage

from gdis.io import atomic_directory, dumps_json

CATEGORIES: list[dict] = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "ring", "supercategory": "shape"},
]

SPLITS = ("train", "val")

# Largest width/height stretch per shape; beyond this a square reads as a bar, a disc as a blob.
_MAX_ASPECT = {"disc": 1.3, "square": 1.35, "triangle": 1.4, "star": 1.2, "ring": 1.25}
_MIN_VISIBLE_FRACTION = 0.35
_MIN_VISIBLE_PIXELS = 20
_MIN_COLOUR_DISTANCE = 0.3  # RGB distance (0..1 scale) between an object and what lies under it
_MAX_LAYOUT_ATTEMPTS = 100


@dataclass(frozen=True)
class DatasetSpec:
    """What every synthetic family shares: the seed, the split sizes and the image side."""

    seed: int = 0
    num_train: int = 400
    num_val: int = 100
    image_size: int = 128  # square images, pixels

    def __post_init__(self) -> None:
        self._require_types(("seed", "num_train", "num_val", "image_size"), ())
        self._require(self.seed >= 0, "seed", "must be >= 0")
        self._require(self.num_train >= 1, "num_train", "must be >= 1")
        self._require(self.num_val >= 1, "num_val", "must be >= 1")
        self._require(self.image_size >= 32, "image_size", "must be >= 32 pixels")

    def _require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ValueError(f"{type(self).__name__}.{name} {rule}")

    def _require_types(self, integers: tuple[str, ...], numbers: tuple[str, ...]) -> None:
        """Integers must be int (not bool), numbers finite ints or floats; the error names the field."""
        for name in integers:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{type(self).__name__}.{name} must be an integer, got {value!r}")
        for name in numbers:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}.{name} must be a finite number, got {value!r}")

    def _require_order(self, low_name: str, high_name: str) -> None:
        low, high = getattr(self, low_name), getattr(self, high_name)
        if high < low:
            raise ValueError(f"{type(self).__name__}.{high_name} ({high}) must be >= {low_name} ({low})")

    def _require_count_range(self, low_name: str, high_name: str) -> None:
        """Integer counts, at least 1, low <= high."""
        self._require_types((low_name, high_name), ())
        self._require(getattr(self, low_name) >= 1, low_name, "must be >= 1")
        self._require_order(low_name, high_name)

    def _require_fraction_range(self, low_name: str, high_name: str) -> None:
        """Numbers in (0, 1], low <= high."""
        self._require_types((), (low_name, high_name))
        for name in (low_name, high_name):
            self._require(0 < getattr(self, name) <= 1, name, "must be in (0, 1]")
        self._require_order(low_name, high_name)

    def _require_unit_interval(self, *names: str) -> None:
        """Numbers in [0, 1] (probabilities, pixel noise on the 0..1 scale)."""
        self._require_types((), names)
        for name in names:
            self._require(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")


@dataclass(frozen=True)
class SyntheticSpec(DatasetSpec):
    """Everything that determines the shapes dataset; equal specs give byte-identical files."""

    min_objects: int = 2
    max_objects: int = 6
    min_object_size: float = 0.12  # object extent as a fraction of image_size
    max_object_size: float = 0.45
    noise_std: float = 0.04  # Gaussian pixel noise (0..1 scale); each image draws its own std around this
    blur_probability: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_count_range("min_objects", "max_objects")
        self._require_fraction_range("min_object_size", "max_object_size")
        self._require(
            self.max_object_size * self.image_size >= 10,
            "max_object_size",
            f"times image_size must be >= 10 pixels so that objects can stay visible, got "
            f"{self.max_object_size * self.image_size:g}",
        )
        self._require_unit_interval("noise_std", "blur_probability")


def generate_synthetic_dataset(out_dir: str | Path, spec: SyntheticSpec) -> None:
    """Write the shapes dataset's train/val PNGs and COCO annotations to ``out_dir`` (all or nothing)."""
    grid = pixel_grid(spec.image_size)
    write_coco_dataset(out_dir, spec, "shapes", CATEGORIES, lambda rng: _render_image(rng, grid, spec))


# Draws one image from its own random stream: uint8 RGB pixels and (category_id, visible mask) instances.
RenderImage = Callable[[np.random.Generator], tuple[np.ndarray, list[tuple[int, np.ndarray]]]]


def write_coco_dataset(out_dir: str | Path, spec: DatasetSpec, family: str, categories: list[dict],
                       render_image: RenderImage, polygon_splits: tuple[str, ...] = ()) -> None:
    """Write train/val PNGs and COCO annotations to ``out_dir``; all or nothing, replacing any old copy.

    Masks are written as RLE, or as polygons in the splits named in ``polygon_splits``.
    """
    counts = {"train": spec.num_train, "val": spec.num_val}
    with atomic_directory(out_dir) as tmp:
        (tmp / "annotations").mkdir()
        for split_index, split in enumerate(SPLITS):
            (tmp / split).mkdir()
            images, annotations = _generate_split(tmp / split, split_index, counts[split], spec, render_image,
                                                  split in polygon_splits)
            coco = {
                "info": {"description": f"gdis synthetic {family} dataset, {split} split", "seed": spec.seed,
                         "spec": dataclasses.asdict(spec)},
                "images": images,
                "annotations": annotations,
                "categories": [dict(category) for category in categories],
            }
            (tmp / "annotations" / f"{split}.json").write_text(dumps_json(coco), encoding="utf-8")


def _generate_split(image_dir: Path, split_index: int, count: int, spec: DatasetSpec, render_image: RenderImage,
                    polygons: bool) -> tuple[list[dict], list[dict]]:
    """Render and save one split's images; return their COCO image and annotation records."""
    images, annotations = [], []
    for image_index in range(count):
        image_id = image_index + 1
        file_name = f"{image_id:06d}.png"
        # One stream per image, so every image is independent of the others and of the split sizes.
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, split_index, image_index]))
        pixels, instances = render_image(rng)
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG", optimize=False)
        images.append({"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size})
        for category_id, visible in instances:
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            segmentation = (mask_polygons(visible) if polygons
                            else {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")})
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": segmentation,
                    "area": int(visible.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return images, annotations


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons [x1, y1, x2, y2, ...] of a boolean mask without holes; pycocotools rasterises them back to it.

    The outlines are marching-squares contours (contourpy) at level 0.5 through the pixel centres,
    which lie at (column + 0.5, row + 0.5) in COCO coordinates; collinear vertices are dropped.
    COCO merges a mask's polygons by union, so a mask with holes has none: ValueError, as for an
    outline that would not rasterise back to the mask.
    """
    if not mask.any():
        raise ValueError("an empty mask has no polygon")
    if has_holes(mask):
        raise ValueError("a mask with holes cannot be written as COCO polygons")
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    # Padded index i is pixel i - 1, whose centre lies at i - 0.5; a closed line repeats its first point.
    polygons = [_drop_collinear(line[:-1] - 0.5).ravel().tolist() for line in lines]
    height, width = mask.shape
    decoded = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width)))
    if not np.array_equal(decoded.astype(bool), mask):
        raise ValueError("the polygon outline does not rasterise back to the mask")
    return polygons


def has_holes(mask: np.ndarray) -> bool:
    """Whether background pixels of a boolean mask are enclosed by it (8-connected mask, 4-connected holes)."""
    rows, columns = np.nonzero(mask)
    if len(rows) == 0:
        return False
    box = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    return not np.array_equal(ndimage.binary_fill_holes(box), box)


def one_piece_without_holes(mask: np.ndarray) -> bool:
    """A visible part that COCO polygons can hold and that reads as one object: one 8-connected piece, no holes."""
    _, pieces = ndimage.label(mask, structure=np.ones((3, 3)))
    return pieces == 1 and not has_holes(mask)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """The vertices (N, 2) of a closed polygon at which its direction changes."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    return points[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of the pixel centres, each of shape (size, size)."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres)


def _render_image(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: SyntheticSpec
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one image; return it as uint8 RGB and its (category_id, visible mask) instances."""
    image = background(rng, grid)
    _paint_distractors(rng, image, grid, spec)
    instances = _layout(rng, grid, spec)
    for _, mask, _ in instances:
        under = image[mask].mean(axis=0)
        image[mask] = fill(rng, grid, under)[mask]
    if rng.random() < spec.blur_probability:
        image = gaussian_blur(image, rng.uniform(0.5, 1.3))
    image = image + rng.normal(0, spec.noise_std * rng.uniform(0.5, 1.5), image.shape)
    return to_uint8(image), [(category_id, visible) for category_id, _, visible in instances]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] blurred by PIL's Gaussian of ``radius`` pixels (through uint8)."""
    blurred = Image.fromarray(to_uint8(image)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float64) / 255


def background(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A linear gradient or a smooth-noise texture between two random colours, shape (H, W, 3)."""
    xs, ys = grid
    size = xs.shape[0]
    first, second = rng.random(3), rng.random(3)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = ((xs - size / 2) * np.cos(angle) + (ys - size / 2) * np.sin(angle)) / size + 0.5
        weight = np.clip(t, 0, 1)
    else:
        weight = smooth_noise(rng, size, int(rng.integers(2, 7)))
    return first + (second - first) * weight[..., None]


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random values on a (cells+1)^2 lattice, smoothly interpolated to size x size."""
    lattice = rng.random((cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) / size * cells
    index = np.minimum(t.astype(int), cells - 1)
    frac = t - index
    frac = frac * frac * (3 - 2 * frac)  # smoothstep hides the lattice lines
    fy, fx = frac[:, None], frac[None, :]
    top = lattice[np.ix_(index, index)] * (1 - fx) + lattice[np.ix_(index, index + 1)] * fx
    bottom = lattice[np.ix_(index + 1, index)] * (1 - fx) + lattice[np.ix_(index + 1, index + 1)] * fx
    return top * (1 - fy) + bottom * fy


def _paint_distractors(
    rng: np.random.Generator, image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], spec: SyntheticSpec
) -> None:
    """Paint a few unannotated thin lines, tiny elongated blobs and partial thin arcs (nothing shape-like)."""
    xs, ys = grid
    size = spec.image_size
    smallest_radius = spec.min_object_size * size / 2
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.integers(3)
        width = rng.uniform(0.8, 1.8)
        if kind == 0:
            start, end = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            mask = _distance_to_segment(xs, ys, start, end) <= width / 2
        elif kind == 1:
            # Well below the smallest object and at least 1.8:1 elongated, so never a tiny disc.
            length = max(1.5, rng.uniform(0.3, 0.6) * smallest_radius)
            u, v = local_coordinates(xs, ys, rng.uniform(0, size, 2), rng.uniform(0, np.pi), 1.0)
            mask = (u / length) ** 2 + (v / max(0.7, length / rng.uniform(1.8, 3.0))) ** 2 <= 1
        else:
            radius = rng.uniform(0.1, 0.35) * size
            u, v = local_coordinates(xs, ys, rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), 1.0)
            angle = np.mod(np.arctan2(v, u), 2 * np.pi)
            mask = (np.abs(np.hypot(u, v) - radius) <= width / 2) & (angle <= np.deg2rad(rng.uniform(60, 200)))
        image[mask] = rng.random(3)


def _distance_to_segment(xs: np.ndarray, ys: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    direction = end - start
    length_sq = max(float(direction @ direction), 1e-9)
    t = np.clip(((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]) / length_sq, 0, 1)
    return np.hypot(xs - start[0] - t * direction[0], ys - start[1] - t * direction[1])


def local_coordinates(
    xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, rotation: float, aspect: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a shape's own frame: translated, rotated, and stretched by ``aspect`` (area kept)."""
    dx, dy = xs - centre[0], ys - centre[1]
    cos, sin = math.cos(rotation), math.sin(rotation)
    stretch = math.sqrt(aspect)
    return (cos * dx + sin * dy) / stretch, (cos * dy - sin * dx) * stretch


def _layout(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: SyntheticSpec
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Sample shapes until at least one stays visible; return the kept (category_id, mask, visible) in paint order."""
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
        shapes = [_random_shape(rng, grid, spec) for _ in range(count)]
        kept = visible_instances(shapes)
        if kept:
            return kept
    raise RuntimeError(f"no visible object in {_MAX_LAYOUT_ATTEMPTS} layouts; objects too small for {spec}")


def visible_instances(
    shapes: list[tuple[int, np.ndarray]],
    min_fraction: float = _MIN_VISIBLE_FRACTION,
    min_pixels: int = _MIN_VISIBLE_PIXELS,
    accept: Callable[[np.ndarray], bool] | None = None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Decide occlusion before painting: a shape is kept only if enough of it survives the kept shapes above it.

    ``shapes`` are (category_id, mask) in paint order; dropped shapes are never painted, so they occlude nothing.
    ``accept``, when given, must also hold for the visible part (e.g. one piece without holes).
    """
    covered = np.zeros_like(shapes[0][1])
    kept = []
    for category_id, mask in reversed(shapes):
        visible = mask & ~covered
        area = int(visible.sum())
        if area >= min_pixels and area >= min_fraction * mask.sum() and (accept is None or accept(visible)):
            kept.append((category_id, mask, visible))
            covered |= mask
    return kept[::-1]


def _random_shape(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: SyntheticSpec
) -> tuple[int, np.ndarray]:
    """One randomly placed, rotated, scaled and stretched shape as (category_id, full in-image mask)."""
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    name = category["name"]
    size = spec.image_size
    radius = rng.uniform(spec.min_object_size, spec.max_object_size) * size / 2
    centre = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)  # up to 40 % of the radius may leave the image
    log_aspect = math.log(_MAX_ASPECT[name])
    u, v = local_coordinates(*grid, centre, rng.uniform(0, 2 * np.pi), math.exp(rng.uniform(-log_aspect, log_aspect)))
    if name == "disc":
        mask = np.hypot(u, v) <= radius
    elif name == "ring":
        rho = np.hypot(u, v)
        mask = (rho <= radius) & (rho >= rng.uniform(0.45, 0.7) * radius)
    elif name == "star":
        mask = star_polygon(u, v, 5, radius, rng.uniform(0.38, 0.55) * radius)
    else:
        corners = 4 if name == "square" else 3
        mask = star_polygon(u, v, corners, radius, radius * math.cos(math.pi / corners))
    return category["id"], mask


def star_polygon(u: np.ndarray, v: np.ndarray, points: int, outer: float, inner: float) -> np.ndarray:
    """Inside test for a star with ``points`` tips at radius ``outer`` and notches at radius ``inner``.

    With inner = outer * cos(pi / points) the notches lie on the edges, giving a regular polygon.
    """
    # Fold every angle into the wedge between a tip (angle 0) and the next notch (angle pi / points).
    wedge = 2 * math.pi / points
    angle = np.mod(np.arctan2(v, u), wedge)
    angle = np.minimum(angle, wedge - angle)
    rho = np.hypot(u, v)
    x, y = rho * np.cos(angle), rho * np.sin(angle)
    # Inside = on the centre's side of the edge from the tip (outer, 0) to the notch.
    edge_x = inner * math.cos(wedge / 2) - outer
    edge_y = inner * math.sin(wedge / 2)
    return edge_x * y - edge_y * (x - outer) >= 0


def fill(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], under: np.ndarray) -> np.ndarray:
    """A full-image fill (solid, stripes, checkerboard or noise texture) whose colours stand out from ``under``."""
    xs, ys = grid
    size = xs.shape[0]
    first = _colour_far_from(rng, under)
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(first, (size, size, 3))
    second = _colour_far_from(rng, under, first)
    if kind == 3:
        weight = smooth_noise(rng, size, int(rng.integers(4, 17)))
    else:
        period = max(3.0, rng.uniform(0.03, 0.08) * size)
        u, v = local_coordinates(xs, ys, np.zeros(2), rng.uniform(0, np.pi), 1.0)
        if kind == 1:
            weight = np.mod(u / period, 1.0) < 0.5
        else:
            weight = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    return first + (second - first) * weight[..., None]


def _colour_far_from(rng: np.random.Generator, *others: np.ndarray) -> np.ndarray:
    """A random RGB colour at least _MIN_COLOUR_DISTANCE from each of ``others`` (rejection sampling)."""
    while True:
        colour = rng.random(3)
        if all(np.linalg.norm(colour - other) >= _MIN_COLOUR_DISTANCE for other in others):
            return colour
