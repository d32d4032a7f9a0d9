"""Reading COCO instance annotations, with errors that name the file and the id at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from gdis.io import read_json


class DatasetError(ValueError):
    """An annotation file or image is not usable; the message names the file or id."""


def load_coco(path: str | Path) -> dict:
    """Load a COCO instance annotation file and check its structure."""
    try:
        coco = read_json(path, "annotation file")
    except ValueError as error:
        raise DatasetError(str(error)) from None
    check_coco(coco, path)
    return coco


def check_coco(coco: object, path: str | Path) -> None:
    if not isinstance(coco, dict):
        raise DatasetError(f"{path} is not COCO: the top level must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"{path} is not COCO: '{key}' must be a list")
    image_ids = set()
    for image in coco["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                raise DatasetError(f"{path}: image {image.get('id', image)} has no '{key}'")
        if image["id"] in image_ids:
            raise DatasetError(f"{path}: image id {image['id']} appears twice")
        image_ids.add(image["id"])
    category_ids = {category["id"] for category in coco["categories"]}
    if not category_ids:
        raise DatasetError(f"{path}: no categories")
    for ann in coco["annotations"]:
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetError(f"{path}: annotation {ann.get('id', ann)} has no '{key}'")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{path}: annotation {ann['id']} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise DatasetError(f"{path}: annotation {ann['id']} has unknown category id {ann['category_id']}")


def category_ids(coco: dict) -> list[int]:
    """COCO category ids in increasing order; contiguous label i + 1 stands for ``category_ids[i]``."""
    return sorted(category["id"] for category in coco["categories"])


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary (H, W) uint8 mask of an annotation given as polygons or RLE."""
    segmentation = ann.get("segmentation")
    if not segmentation:
        raise DatasetError(f"annotation {ann['id']} has no segmentation")
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed RLE of a binary mask, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
