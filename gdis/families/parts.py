"""Held-out family 'parts': industrial-like metal parts, for testing that a recipe generalises (never for tuning).

Every part has the same kind of outline (a rounded plate, stretched and rotated); the class is
its surface: machined grooves, knurling, or plain brushed metal, all in metal greys. The parts
lie on a textured, cluttered background (rubber belt, perforated sheet or cardboard, with wires,
small washers and cast shadows), so texture alone, seen at the right scale, tells the classes
apart. Training masks are written as RLE, validation masks as polygons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdis.synthetic import (DatasetSpec, gaussian_blur, local_coordinates, one_piece_without_holes, pixel_grid,
                            smooth_noise, to_uint8, visible_instances, write_coco_dataset)

CATEGORIES: list[dict] = [
    {"id": 1, "name": "grooved", "supercategory": "part"},
    {"id": 2, "name": "knurled", "supercategory": "part"},
    {"id": 3, "name": "plain", "supercategory": "part"},
]
_MIN_VISIBLE_FRACTION = 0.45
_MIN_VISIBLE_PIXELS = 30
_MAX_ASPECT = 2.2  # long / short side of a plate
_TEXTURE_PERIOD = (3.0, 4.5)  # grooves and knurls, pixels at 128 px; the background's patterns are coarser


@dataclass(frozen=True)
class PartsSpec(DatasetSpec):
    """Everything that determines a parts dataset; equal specs give byte-identical files."""

    min_parts: int = 4
    max_parts: int = 10
    min_part_size: float = 0.16  # longest side as a fraction of image_size
    max_part_size: float = 0.34
    noise_std: float = 0.03  # Gaussian pixel noise (0..1 scale); each image draws its own std around this
    blur_probability: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_count_range("min_parts", "max_parts")
        self._require_fraction_range("min_part_size", "max_part_size")
        self._require(self.min_part_size * self.image_size >= 8, "min_part_size",
                      "times image_size must be >= 8 pixels, or a part is too small to show its surface")
        self._require_unit_interval("noise_std", "blur_probability")


def generate_parts_dataset(out_dir: str | Path, spec: PartsSpec) -> None:
    """Write the parts dataset (train RLE, val polygons) to ``out_dir``; all or nothing."""
    grid = pixel_grid(spec.image_size)
    write_coco_dataset(out_dir, spec, "parts", CATEGORIES, lambda rng: render_parts_image(rng, grid, spec),
                       polygon_splits=("val",))


@dataclass
class Part:
    """A placed part: class, in-image mask, each pixel's coordinates in its frame (u along, v across) and
    level (0 at the centre, 1 on the outline)."""

    category_id: int
    mask: np.ndarray
    u: np.ndarray
    v: np.ndarray
    level: np.ndarray
    half_length: float
    half_width: float


def render_parts_image(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: PartsSpec
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image as uint8 RGB and its (category_id, visible mask) instances."""
    size = spec.image_size
    image = background(rng, grid)
    parts = [_part(rng, grid, spec) for _ in range(int(rng.integers(spec.min_parts, spec.max_parts + 1)))]
    kept = visible_instances([(index, part.mask) for index, part in enumerate(parts)],
                             _MIN_VISIBLE_FRACTION, _MIN_VISIBLE_PIXELS, one_piece_without_holes)
    light = rng.uniform(0, 2 * np.pi)  # one light for the image: shadows fall away from it
    shadow_offset = np.rint(np.array([-math.cos(light), -math.sin(light)]) * rng.uniform(1, 3) * size / 128)
    for index, _, _ in kept:
        _paint_part(rng, image, grid, parts[index], light, shadow_offset.astype(int))
    if rng.random() < spec.blur_probability:
        image = gaussian_blur(image, rng.uniform(0.4, 1.0) * size / 128)
    image = image + rng.normal(0, spec.noise_std * rng.uniform(0.5, 1.5), image.shape)
    return to_uint8(image), [(parts[index].category_id, visible) for index, _, visible in kept]


def _part(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: PartsSpec) -> Part:
    """A rounded plate (superellipse), the same outline distribution for every class."""
    size = spec.image_size
    category_id = int(rng.integers(len(CATEGORIES))) + 1
    half_length = rng.uniform(spec.min_part_size, spec.max_part_size) * size / 2
    half_width = half_length / rng.uniform(1.0, _MAX_ASPECT)
    centre = rng.uniform(0.3 * half_length, size - 0.3 * half_length, 2)
    u, v = local_coordinates(*grid, centre, rng.uniform(0, np.pi), 1.0)
    exponent = rng.uniform(2.5, 6.0)  # 2: an ellipse; larger: squarer corners
    level = (np.abs(u / half_length) ** exponent + np.abs(v / half_width) ** exponent) ** (1 / exponent)
    return Part(category_id, level <= 1, u, v, level, half_length, half_width)


def background(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A belt, perforated sheet or cardboard, under a lighting gradient, with unannotated clutter."""
    xs, ys = grid
    size = xs.shape[0]
    scale = size / 128
    kind = rng.integers(3)
    base = rng.uniform(0.15, 0.6) * (1 + rng.uniform(-0.15, 0.15, 3))
    mottling = smooth_noise(rng, size, int(rng.integers(4, 12)))[..., None]
    image = base * (0.8 + 0.4 * mottling)
    u, v = local_coordinates(xs, ys, np.zeros(2), rng.uniform(0, np.pi), 1.0)
    period = rng.uniform(6, 10) * scale
    if kind == 0:  # rubber belt: a low-contrast weave
        weave = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
        image = image * (1 + 0.08 * weave)[..., None]
    elif kind == 1:  # perforated sheet: dark holes on a lattice
        holes = np.hypot(np.mod(u, period) - period / 2, np.mod(v, period) - period / 2) <= period * rng.uniform(0.18, 0.3)
        image = np.where(holes[..., None], image * 0.35, image)
    else:  # cardboard: soft fibre streaks
        streaks = smooth_noise(rng, size, int(rng.integers(20, 40)))
        image = image * (0.9 + 0.2 * streaks[..., None] * (0.5 + 0.5 * np.cos(2 * np.pi * v / (3 * period))[..., None]))
    for _ in range(int(rng.integers(2, 7))):
        _paint_clutter(rng, image, grid)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = ((xs - size / 2) * math.cos(angle) + (ys - size / 2) * math.sin(angle)) / size
    return image * (1 + rng.uniform(0.1, 0.4) * gradient)[..., None]


def _paint_clutter(rng: np.random.Generator, image: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> None:
    """An unannotated wire (thin curve) or a small washer (ring, well below the smallest part)."""
    xs, ys = grid
    size = xs.shape[0]
    scale = size / 128
    colour = rng.uniform(0.1, 0.9) * (1 + rng.uniform(-0.2, 0.2, 3))
    if rng.random() < 0.5:
        centre = rng.uniform(0, size, 2)
        radius = rng.uniform(0.2, 0.6) * size
        rho = np.hypot(xs - centre[0], ys - centre[1])
        image[np.abs(rho - radius) <= rng.uniform(0.5, 1.2) * scale] = colour
    else:
        rho = np.hypot(xs - rng.uniform(0, size), ys - rng.uniform(0, size))
        outer = rng.uniform(2, 4) * scale
        image[(rho <= outer) & (rho >= 0.5 * outer)] = colour


def _shifted(mask: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``mask`` moved by ``offset`` = (dx, dy) pixels; what leaves the image is lost, what enters is False."""
    dx, dy = int(offset[0]), int(offset[1])
    height, width = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = \
        mask[max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
    return out


def _paint_part(rng: np.random.Generator, image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], part: Part,
                light: float, shadow_offset: np.ndarray) -> None:
    """Cast the part's shadow, then paint its metal surface: the class's texture, shading, a bright bevel."""
    shadow = _shifted(part.mask, shadow_offset) & ~part.mask
    image[shadow] *= rng.uniform(0.45, 0.7)
    u, v = part.u, part.v
    metal = rng.uniform(0.45, 0.8) * (1 + rng.uniform(-0.05, 0.05, 3))
    along = (u * math.cos(light) + v * math.sin(light)) / part.half_length  # lit side brighter
    shade = 1 + 0.18 * along
    period = rng.uniform(*_TEXTURE_PERIOD) * grid[0].shape[0] / 128
    contrast = rng.uniform(0.18, 0.32)
    if part.category_id == 1:  # grooves across or along the part
        axis = u if rng.random() < 0.5 else v
        texture = contrast * np.sign(np.sin(2 * np.pi * axis / period + rng.uniform(0, 2 * np.pi)))
    elif part.category_id == 2:  # diamond knurl: two crossed groove sets at +-45 degrees
        a, b = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
        texture = contrast * (np.cos(2 * np.pi * a / period) + np.cos(2 * np.pi * b / period)) / 2
    else:  # plain: faint fine mottling and a specular band along the part
        texture = 0.03 * (smooth_noise(rng, u.shape[0], int(rng.integers(40, 64))) - 0.5)
        texture = texture + 0.25 * np.exp(-((v / part.half_width - rng.uniform(-0.6, 0.6)) / 0.25) ** 2)
    bevel = np.where(part.level > 0.88, 1.15, 1.0)
    surface = metal * (shade * bevel + texture)[..., None]
    image[part.mask] = surface[part.mask]
