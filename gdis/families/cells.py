"""Held-out family 'cells': microscopy-like stained cells, for testing that a recipe generalises (never for tuning).

Many touching and overlapping roundish cells with wobbly outlines on a pale, unevenly lit
background; stain-like colours, a nucleus, granules, out-of-focus blur and noise. The three
classes differ by stain colour, size and inner texture, with overlapping sizes: colour matters,
so the strong view's colour jitter and grayscale change what the student sees. Training
masks are written as polygons and validation masks as RLE, as in the dataset of issue 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdis.synthetic import (DatasetSpec, gaussian_blur, local_coordinates, one_piece_without_holes, pixel_grid,
                            smooth_noise, to_uint8, visible_instances, write_coco_dataset)

CATEGORIES: list[dict] = [
    {"id": 1, "name": "lymphocyte", "supercategory": "cell"},
    {"id": 2, "name": "epithelial", "supercategory": "cell"},
    {"id": 3, "name": "granulocyte", "supercategory": "cell"},
]


@dataclass(frozen=True)
class CellClass:
    """How one class looks; radii are fractions of the image side, colours RGB transmittance in [0, 1]."""

    frequency: float  # share of the cells drawn (before occlusion drops some)
    radius: tuple[float, float]
    max_aspect: float
    wobble: float  # amplitude of the outline's low harmonics, as a fraction of the radius
    cytoplasm: tuple[float, float, float]
    nucleus: tuple[float, float, float]
    nucleus_radius: tuple[float, float]  # fraction of the cell radius
    lobes: int  # nucleus made of this many blobs
    granules: tuple[int, int]  # count range
    granule_colour: tuple[float, float, float]


CLASSES = {
    1: CellClass(0.4, (0.03, 0.06), 1.2, 0.05, (0.76, 0.74, 0.88), (0.3, 0.24, 0.52), (0.6, 0.82), 1, (0, 0),
                 (0, 0, 0)),
    2: CellClass(0.35, (0.04, 0.08), 1.6, 0.1, (0.93, 0.7, 0.8), (0.46, 0.32, 0.62), (0.34, 0.55), 1, (0, 6),
                 (0.84, 0.6, 0.74)),
    3: CellClass(0.25, (0.045, 0.085), 1.35, 0.12, (0.94, 0.68, 0.7), (0.4, 0.26, 0.55), (0.26, 0.36), 2,
                 (4, 14), (0.85, 0.5, 0.5)),
}
BACKGROUND = (0.95, 0.91, 0.94)
_MIN_VISIBLE_FRACTION = 0.5
_MIN_VISIBLE_PIXELS = 12
_MAX_OVERLAP = 0.4  # two cells' centres stay at least (1 - this) * (sum of radii) apart
_CLUSTER_PROBABILITY = 0.8  # a new cell is placed against an existing one, so cells touch
_MAX_PLACEMENT_ATTEMPTS = 30


@dataclass(frozen=True)
class CellsSpec(DatasetSpec):
    """Everything that determines a cells dataset; equal specs give byte-identical files."""

    min_cells: int = 12
    max_cells: int = 28
    noise_std: float = 0.04  # Gaussian pixel noise (0..1 scale); each image draws its own std around this
    blur_probability: float = 0.6  # share of the images out of focus

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_count_range("min_cells", "max_cells")
        self._require_unit_interval("noise_std", "blur_probability")


def generate_cells_dataset(out_dir: str | Path, spec: CellsSpec) -> None:
    """Write the cells dataset (train polygons, val RLE) to ``out_dir``; all or nothing."""
    grid = pixel_grid(spec.image_size)
    write_coco_dataset(out_dir, spec, "cells", CATEGORIES, lambda rng: render_cells_image(rng, grid, spec),
                       polygon_splits=("train",))


def render_cells_image(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: CellsSpec
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image as uint8 RGB and its (category_id, visible mask) instances."""
    size = spec.image_size
    stain = _stain(rng)
    image = background(rng, grid, stain)
    cells = _place_cells(rng, grid, spec)
    kept = visible_instances([(index, cell.mask) for index, cell in enumerate(cells)],
                             _MIN_VISIBLE_FRACTION, _MIN_VISIBLE_PIXELS, one_piece_without_holes)
    for index, _, _ in kept:
        _paint_cell(rng, image, grid, cells[index], stain)
    image = image * _illumination(rng, grid)
    if rng.random() < spec.blur_probability:
        image = gaussian_blur(image, rng.uniform(0.6, 1.8) * size / 128)
    image = image + rng.normal(0, spec.noise_std * rng.uniform(0.5, 1.5), image.shape)
    return to_uint8(image), [(cells[index].category_id, visible) for index, _, visible in kept]


def _stain(rng: np.random.Generator) -> np.ndarray:
    """A per-image 3x3 colour transform: stain strength and a slight hue drift, as between staining batches."""
    strength = rng.uniform(0.6, 1.25)
    return strength * (np.eye(3) + rng.uniform(-0.1, 0.1, (3, 3)))


def _stained(colour: tuple[float, float, float] | np.ndarray, stain: np.ndarray) -> np.ndarray:
    """A transmittance colour under the image's stain: the absorbed part 1 - colour is transformed."""
    return np.clip(1 - stain @ (1 - np.asarray(colour, dtype=np.float64)), 0, 1)


def background(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], stain: np.ndarray) -> np.ndarray:
    """Pale stained medium with faint stroma texture, specks of debris and out-of-focus ghosts (unannotated)."""
    xs, ys = grid
    size = xs.shape[0]
    base = _stained(np.asarray(BACKGROUND) + rng.uniform(-0.03, 0.03, 3), stain)
    stroma = smooth_noise(rng, size, int(rng.integers(3, 9)))
    tint = _stained((0.9, 0.78, 0.86), stain)
    image = base + (tint - base) * (0.5 * stroma**2)[..., None]
    for _ in range(int(rng.integers(1, 6))):  # ghosts: large, faint, blurred discs of cells in another plane
        radius = rng.uniform(0.04, 0.1) * size
        distance = np.hypot(xs - rng.uniform(0, size), ys - rng.uniform(0, size))
        weight = rng.uniform(0.15, 0.35) * np.clip((radius - distance) / (0.5 * radius), 0, 1)
        image = image * (1 - weight[..., None] * (1 - _stained((0.8, 0.6, 0.75), stain)))
    for _ in range(int(rng.integers(3, 12))):  # debris: specks well below the smallest cell
        radius = rng.uniform(0.4, 1.2) * size / 128
        speck = np.hypot(xs - rng.uniform(0, size), ys - rng.uniform(0, size)) <= radius
        image[speck] = _stained(rng.uniform(0.2, 0.6, 3), stain)
    return image


@dataclass
class Cell:
    """A placed cell: class, in-image mask, centre and radius (pixels), and in ``window`` (the part of the image
    around it) each pixel's place in the cell's frame: radial 0 at the centre to 1 on the outline, polar angle."""

    category_id: int
    mask: np.ndarray
    window: tuple[slice, slice]
    radial: np.ndarray
    angle: np.ndarray
    centre: np.ndarray
    radius: float


def _cell(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], category_id: int, centre: np.ndarray,
          radius: float) -> Cell:
    """A cell outline: a stretched, rotated ellipse whose edge is bent and rippled by random harmonics."""
    kind = CLASSES[category_id]
    aspect = math.exp(rng.uniform(-1, 1) * math.log(kind.max_aspect))
    rotation = rng.uniform(0, 2 * np.pi)
    amplitudes = kind.wobble * rng.uniform(0.3, 1.0, 6) / np.arange(1, 7) ** 0.7
    phases = rng.uniform(0, 2 * np.pi, 6)
    reach = radius * math.sqrt(kind.max_aspect) * (1 + amplitudes.sum()) + 1
    size = grid[0].shape[0]
    low = np.clip(np.floor(centre - reach), 0, size).astype(int)
    high = np.clip(np.ceil(centre + reach), 0, size).astype(int)
    window = (slice(low[1], high[1]), slice(low[0], high[0]))
    u, v = local_coordinates(grid[0][window], grid[1][window], centre, rotation, aspect)
    angle = np.arctan2(v, u)
    edge = 1 + sum(a * np.cos(h * angle + phase) for h, a, phase in zip(range(2, 8), amplitudes, phases))
    radial = np.hypot(u, v) / (radius * edge)
    mask = np.zeros((size, size), dtype=bool)
    mask[window] = radial <= 1
    return Cell(category_id, mask, window, radial, angle, centre, radius)


def _place_cells(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], spec: CellsSpec) -> list[Cell]:
    """Cells in paint order; most lean against an earlier cell."""
    size = spec.image_size
    ids = list(CLASSES)
    frequencies = np.array([CLASSES[i].frequency for i in ids])
    placed: list[tuple[np.ndarray, float]] = []
    cells = []
    for _ in range(int(rng.integers(spec.min_cells, spec.max_cells + 1))):
        category_id = ids[int(rng.choice(len(ids), p=frequencies / frequencies.sum()))]
        kind = CLASSES[category_id]
        radius = rng.uniform(*kind.radius) * size
        centre = _free_position(rng, placed, radius, size)
        if centre is None:
            continue
        placed.append((centre, radius))
        cells.append(_cell(rng, grid, category_id, centre, radius))
    return cells


def _free_position(rng: np.random.Generator, placed: list[tuple[np.ndarray, float]], radius: float,
                   size: int) -> np.ndarray | None:
    """A centre overlapping no placed cell by more than _MAX_OVERLAP, near one of them when clustering (or None)."""
    for _ in range(_MAX_PLACEMENT_ATTEMPTS):
        if placed and rng.random() < _CLUSTER_PROBABILITY:
            neighbour, neighbour_radius = placed[int(rng.integers(len(placed)))]
            direction = rng.uniform(0, 2 * np.pi)
            distance = (radius + neighbour_radius) * rng.uniform(1 - _MAX_OVERLAP, 1.05)
            centre = neighbour + distance * np.array([math.cos(direction), math.sin(direction)])
        else:
            centre = rng.uniform(0, size, 2)
        inside = (-0.3 * radius <= centre).all() and (centre <= size + 0.3 * radius).all()
        if inside and all(np.hypot(*(centre - other)) >= (1 - _MAX_OVERLAP) * (radius + other_radius)
                          for other, other_radius in placed):
            return centre
    return None


def _paint_cell(rng: np.random.Generator, image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], cell: Cell,
                stain: np.ndarray) -> None:
    """Paint a cell over its whole outline: textured cytoplasm, a darker membrane, the nucleus, granules."""
    kind, radial, angle = CLASSES[cell.category_id], cell.radial, cell.angle
    xs, ys = grid[0][cell.window], grid[1][cell.window]
    side, scale = max(radial.shape), grid[0].shape[0] / 128
    jitter = rng.uniform(-0.04, 0.04, 3)
    texture = _patch_noise(rng, radial.shape, max(2, round(side / (7 * scale))))
    cytoplasm = _stained(np.clip(np.asarray(kind.cytoplasm) + jitter, 0, 1), stain) * (0.9 + 0.15 * texture)
    cytoplasm = cytoplasm * np.where(radial > 0.82, 0.9, 1.0)[..., None]  # membrane
    nucleus = np.zeros(radial.shape, dtype=bool)
    centre_u, centre_v = rng.uniform(-0.25, 0.25, 2)
    lobe_angle = rng.uniform(0, 2 * np.pi)
    for lobe in range(kind.lobes):
        offset = 0.0 if kind.lobes == 1 else 0.32
        along = lobe_angle + 2 * np.pi * lobe / kind.lobes
        lobe_u, lobe_v = centre_u + offset * math.cos(along), centre_v + offset * math.sin(along)
        lobe_radius = rng.uniform(*kind.nucleus_radius)
        # In the cell's own normalised polar frame, so the nucleus follows the cell's stretch and wobble.
        pu, pv = radial * np.cos(angle) - lobe_u, radial * np.sin(angle) - lobe_v
        nucleus |= np.hypot(pu, pv) <= lobe_radius * (1 + 0.1 * np.cos(3 * np.arctan2(pv, pu) + rng.uniform(0, 6)))
    chromatin = _patch_noise(rng, radial.shape, max(2, round(side / (3.5 * scale))))
    nucleus_colour = _stained(np.clip(np.asarray(kind.nucleus) + jitter, 0, 1), stain) * (0.8 + 0.3 * chromatin)
    painted = np.where(nucleus[..., None], nucleus_colour, cytoplasm)
    for _ in range(int(rng.integers(kind.granules[0], kind.granules[1] + 1))):
        direction, distance = rng.uniform(0, 2 * np.pi), cell.radius * math.sqrt(rng.uniform(0.05, 0.6))
        granule = np.hypot(xs - cell.centre[0] - distance * math.cos(direction),
                           ys - cell.centre[1] - distance * math.sin(direction)) <= rng.uniform(0.5, 0.9) * scale
        painted[granule & ~nucleus] = _stained(kind.granule_colour, stain)
    inside = cell.mask[cell.window]
    image[cell.window][inside] = painted[inside]


def _patch_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth value noise of ``shape`` with about ``cells`` lattice cells along the longer side, shape (H, W, 1)."""
    return smooth_noise(rng, max(shape), cells)[: shape[0], : shape[1], None]


def _illumination(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Uneven lighting: a vignette around an off-centre point times slow smooth variation, shape (H, W, 1)."""
    xs, ys = grid
    size = xs.shape[0]
    centre = rng.uniform(0.2, 0.8, 2) * size
    falloff = np.hypot(xs - centre[0], ys - centre[1]) / size
    field = (1 - rng.uniform(0.1, 0.45) * falloff**2) * (0.92 + 0.12 * smooth_noise(rng, size, 3))
    return field[..., None]
