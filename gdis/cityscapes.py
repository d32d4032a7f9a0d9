"""Cityscapes fine instance annotations as COCO, for the 8 classes that have instances.

In ``gtFine/<split>/<city>/*_gtFine_instanceIds.png`` a pixel holds ``label_id * 1000 + k``
for the k-th instance of an instance class, and the bare ``label_id`` where the annotators
drew a group (e.g. a crowd of people) instead of instances. Instances become COCO
annotations; groups become ``iscrowd`` regions, which COCO evaluation ignores, as the
official Cityscapes evaluation does. Label ids are those of the official label table.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from gdis.coco import encode_mask
from gdis.download import unpack
from gdis.io import write_json

log = logging.getLogger(__name__)

# The official label ids of the classes evaluated on instances (hasInstances and not ignoreInEval).
INSTANCE_CLASSES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
                    32: "motorcycle", 33: "bicycle"}
ARCHIVES = {"gtFine_trainvaltest.zip": ["gtFine/train", "gtFine/val"],
            "leftImg8bit_trainvaltest.zip": ["leftImg8bit/train", "leftImg8bit/val"]}
SPLITS = ("train", "val")
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


def instance_annotations(instance_ids: np.ndarray) -> list[dict]:
    """COCO annotations (no ids yet) of one ``instanceIds`` map, instances and groups of the 8 classes."""
    annotations = []
    for value in np.unique(instance_ids).tolist():
        label = value // 1000 if value >= 1000 else value
        if label not in INSTANCE_CLASSES:
            continue
        mask = instance_ids == value
        rle = encode_mask(mask)
        annotations.append({
            "category_id": label,
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [float(x) for x in mask_utils.toBbox({**rle, "counts": rle["counts"].encode("ascii")})],
            "iscrowd": int(value < 1000),
        })
    return annotations


def _convert_image(path: Path) -> tuple[int, int, list[dict]]:
    with Image.open(path) as image:
        instance_ids = np.asarray(image, dtype=np.int32)
    height, width = instance_ids.shape
    return height, width, instance_annotations(instance_ids)


def convert_split(root: str | Path, split: str, workers: int = 1) -> dict:
    """COCO dict of one split; images are named ``<city>/<frame>_leftImg8bit.png`` under ``leftImg8bit/<split>``."""
    root = Path(root)
    label_files = sorted((root / "gtFine" / split).glob(f"*/*{INSTANCE_SUFFIX}"))
    if not label_files:
        raise FileNotFoundError(f"no *{INSTANCE_SUFFIX} files under {root / 'gtFine' / split}")
    file_names = [f"{path.parent.name}/{path.name.removesuffix(INSTANCE_SUFFIX)}{IMAGE_SUFFIX}" for path in label_files]
    missing = [name for name in file_names if not (root / "leftImg8bit" / split / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of gtFine/{split} missing under "
                                f"{root / 'leftImg8bit' / split}, e.g. {missing[0]}")
    with ProcessPoolExecutor(workers) as pool:
        converted = list(pool.map(_convert_image, label_files, chunksize=16))
    images, annotations = [], []
    for image_id, (file_name, (height, width, image_annotations)) in enumerate(zip(file_names, converted), start=1):
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    categories = [{"id": label, "name": name} for label, name in INSTANCE_CLASSES.items()]
    return {"info": {"description": f"Cityscapes gtFine {split}, 8 instance classes"},
            "images": images, "annotations": annotations, "categories": categories}


def prepare_cityscapes(archives_dir: str | Path, root: str | Path, workers: int = 1) -> None:
    """Unpack the official archives' train and val folders into ``root`` and write ``annotations/instances_<split>.json``."""
    archives_dir, root = Path(archives_dir), Path(root)
    missing = [name for name in ARCHIVES if not (archives_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Cityscapes archive(s) {', '.join(missing)} not found in {archives_dir} "
            "(dataset.cityscapes.archives_dir): download them from cityscapes-dataset.com (login needed), "
            "as docs/datasets.md (section Cityscapes) says")
    for name, members in ARCHIVES.items():
        unpack(archives_dir / name, root, members)
        log.info("unpacked %s into %s", name, root)
    for split in SPLITS:
        coco = convert_split(root, split, workers)
        write_json(root / "annotations" / f"instances_{split}.json", coco)
        log.info("Cityscapes %s: %d images, %d annotations", split, len(coco["images"]), len(coco["annotations"]))
