"""Images and instance targets from COCO files, step-indexed sampling and the weak/strong views."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from gdis.coco import DatasetError, annotation_mask, category_ids


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xyxy boxes at pixel edges (so a one-pixel mask has a positive size) of binary (N, H, W) masks, on the
    masks' device; an empty mask gets a zero box."""
    boxes = torch.zeros((len(masks), 4), device=masks.device)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        found = masks_to_boxes(masks[nonempty]).float()  # pixel indices of the extreme pixels
        found[:, 2:] += 1
        boxes[nonempty] = found
    return boxes


class CocoInstances(Dataset):
    """Images of a COCO dict as uint8 (3, H, W) tensors, with their instance targets when ``with_targets``."""

    def __init__(self, coco: dict, images_dir: str | Path, with_targets: bool = True) -> None:
        self.images = sorted(coco["images"], key=lambda image: image["id"])
        self.images_dir = Path(images_dir)
        self.with_targets = with_targets
        self.label_of = {category_id: index + 1 for index, category_id in enumerate(category_ids(coco))}
        self.annotations: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0):
                self.annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def check_files(self) -> None:
        """Fail before training, not hours into it, when image files are missing (all are listed)."""
        missing = [image for image in self.images if not (self.images_dir / image["file_name"]).is_file()]
        if missing:
            listed = "; ".join(f"image {image['id']}: {self.images_dir / image['file_name']}" for image in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetError(f"{len(missing)} image file(s) not found: {listed}{more}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        info = self.images[index]
        image = read_image(self.images_dir / info["file_name"], info)
        target = {"image_id": info["id"]}
        if self.with_targets:
            target.update(self._target(info))
        return image, target

    def _target(self, info: dict) -> dict:
        height, width = info["height"], info["width"]
        masks, boxes, labels = [], [], []
        for ann in self.annotations[info["id"]]:
            mask = annotation_mask(ann, height, width)
            if not mask.any():
                continue
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                continue
            masks.append(mask)
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.uint8),
        }


def read_image(path: Path, info: dict) -> torch.Tensor:
    """Read an image as RGB uint8 (3, H, W); errors name the image id and file."""
    try:
        with Image.open(path) as handle:
            rgb = rgb_array(handle)
    except FileNotFoundError:
        raise DatasetError(f"image {info['id']}: file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"image {info['id']}: cannot read {path}: {error}") from None
    if rgb.shape[:2] != (info["height"], info["width"]):
        raise DatasetError(
            f"image {info['id']}: {path} is {rgb.shape[1]}x{rgb.shape[0]} but the annotations say "
            f"{info['width']}x{info['height']}"
        )
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels; 16-bit grayscale is scaled to 8 bits (Pillow's RGB conversion would saturate it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


class StepBatchSampler(Sampler):
    """Batches for steps ``start_step, start_step + 1, ...``: batch s is a pure function of (seed, s).

    The stream walks through seeded permutations of the dataset, epoch after epoch, so a
    resumed run sees exactly the batches the uninterrupted run would have seen.
    ``batch_size`` is the global batch; process ``rank`` of ``world_size`` takes its items
    ``rank, rank + world_size, ...``, so the processes together see the single-process batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, num_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1:
            raise DatasetError("cannot sample from an empty image set")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.rank, self.world_size = rank, world_size
        self._cached_epoch, self._cached_permutation = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            self._cached_epoch, self._cached_permutation = epoch, rng.permutation(self.num_items)
        return self._cached_permutation

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.batch_size + self.rank, (step + 1) * self.batch_size, self.world_size)
        return [int(self._permutation(p // self.num_items)[p % self.num_items]) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.start_step + self.num_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.num_steps


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def to_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().div_(255)


def photometric_augmentation(augment: dict) -> v2.Transform:
    """The strong view's noise: colour jitter, grayscale and Gaussian blur (the paper's settings by default)."""
    sigma = tuple(augment["blur_sigma"])
    kernel = 2 * int(np.ceil(3 * sigma[1])) + 1
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(*augment["color_jitter"])], p=augment["color_jitter_probability"]),
        v2.RandomGrayscale(p=augment["grayscale_probability"]),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=augment["blur_probability"]),
    ])
