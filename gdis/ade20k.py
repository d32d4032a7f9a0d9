"""ADE20K instance segmentation as COCO: the 100 "thing" classes of Mask2Former's ADE20K instance setup.

The images come from ADEChallengeData2016.zip (``ADEChallengeData2016/images/{training,validation}``),
the instance masks from the Places Challenge 2017's annotations_instance.tar
(``annotations_instance/{training,validation}``, one PNG per image, unpacked into
``ADEChallengeData2016`` as Mask2Former's datasets/README.md does). In an instance PNG the red
channel holds the instance class (1-100) and the green channel the instance number (0: no
instance: unlabelled pixels, stuff and the classes outside the 100).

Each instance becomes one RLE annotation, ``iscrowd`` 0: the masks are pixel maps, which RLE keeps
exactly (polygons would not keep holes), and the data have no crowd regions, so nothing is
ignored (Mask2Former's datasets/prepare_ade20k_ins_seg.py does the same). Images without
instances are kept.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from gdis.coco import DatasetError, encode_mask
from gdis.download import download, link_local_copy, unpack
from gdis.io import write_json

log = logging.getLogger(__name__)

# Instance class k of the PNGs' red channel is INSTANCE_CLASSES[k - 1]: (COCO category id, name).
# Ids and names are those of Mask2Former's ADE20K instance setup (ADE_CATEGORIES in
# mask2former/data/datasets/register_ade20k_instance.py): the class's SceneParse150 label minus one
# (datasets/ade20k_instance_catid_mapping.txt), so instance and panoptic annotations share ids.
INSTANCE_CLASSES = (
    (7, "bed"), (8, "windowpane"), (10, "cabinet"), (12, "person"), (14, "door"), (15, "table"), (18, "curtain"),
    (19, "chair"), (20, "car"), (22, "painting"), (23, "sofa"), (24, "shelf"), (27, "mirror"), (30, "armchair"),
    (31, "seat"), (32, "fence"), (33, "desk"), (35, "wardrobe"), (36, "lamp"), (37, "bathtub"), (38, "railing"),
    (39, "cushion"), (41, "box"), (42, "column"), (43, "signboard"), (44, "chest of drawers"), (45, "counter"),
    (47, "sink"), (49, "fireplace"), (50, "refrigerator"), (53, "stairs"), (55, "case"), (56, "pool table"),
    (57, "pillow"), (58, "screen door"), (62, "bookcase"), (64, "coffee table"), (65, "toilet"), (66, "flower"),
    (67, "book"), (69, "bench"), (70, "countertop"), (71, "stove"), (72, "palm"), (73, "kitchen island"),
    (74, "computer"), (75, "swivel chair"), (76, "boat"), (78, "arcade machine"), (80, "bus"), (81, "towel"),
    (82, "light"), (83, "truck"), (85, "chandelier"), (86, "awning"), (87, "streetlight"), (88, "booth"),
    (89, "television receiver"), (90, "airplane"), (92, "apparel"), (93, "pole"), (95, "bannister"), (97, "ottoman"),
    (98, "bottle"), (102, "van"), (103, "ship"), (104, "fountain"), (107, "washer"), (108, "plaything"), (110, "stool"),
    (111, "barrel"), (112, "basket"), (115, "bag"), (116, "minibike"), (118, "oven"), (119, "ball"), (120, "food"),
    (121, "step"), (123, "trade name"), (124, "microwave"), (125, "pot"), (126, "animal"), (127, "bicycle"),
    (129, "dishwasher"), (130, "screen"), (132, "sculpture"), (133, "hood"), (134, "sconce"), (135, "vase"),
    (136, "traffic light"), (137, "tray"), (138, "ashcan"), (139, "fan"), (142, "plate"), (143, "monitor"),
    (144, "bulletin board"), (146, "radiator"), (147, "glass"), (148, "clock"), (149, "flag"),
)
DATA_DIR = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
# Folders of ADEChallengeData2016 that gdis uses (not the semantic annotations/).
MEMBERS = [f"{kind}/{folder}" for kind in ("images", "annotations_instance") for folder in SPLIT_FOLDERS.values()]
# Archive -> (folder under the dataset root it unpacks into, the folders it holds that gdis uses).
ARCHIVE_CONTENTS = {
    "ADEChallengeData2016": ("", [f"{DATA_DIR}/images/{folder}" for folder in SPLIT_FOLDERS.values()]),
    "annotations_instance": (DATA_DIR, [f"annotations_instance/{folder}" for folder in SPLIT_FOLDERS.values()]),
}
IMAGE_NAME = re.compile(r"ADE_[a-z]+_(\d+)")


def instance_annotations(instance_png: np.ndarray, source: str | Path = "instance mask") -> list[dict]:
    """COCO annotations (no ids yet) of one instance PNG (H, W, >=2 channels), in instance-number order."""
    classes, instances = instance_png[..., 0], instance_png[..., 1]
    annotations = []
    for number in np.unique(instances).tolist():
        if number == 0:
            continue
        mask = instances == number
        labels = np.unique(classes[mask]).tolist()
        if len(labels) != 1 or not 1 <= labels[0] <= len(INSTANCE_CLASSES):
            raise DatasetError(f"{source}: instance {number} has class value(s) {labels} in the red channel; "
                               f"expected one class in 1-{len(INSTANCE_CLASSES)}")
        rle = encode_mask(mask)
        annotations.append({
            "category_id": INSTANCE_CLASSES[labels[0] - 1][0],
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [float(x) for x in mask_utils.toBbox({**rle, "counts": rle["counts"].encode("ascii")})],
            "iscrowd": 0,
        })
    return annotations


def _convert_image(paths: tuple[Path, Path]) -> tuple[int, int, list[dict]]:
    image_path, png_path = paths
    with Image.open(image_path) as image:
        width, height = image.size
    with Image.open(png_path) as png:
        if png.mode not in ("RGB", "RGBA"):
            raise DatasetError(f"{png_path}: instance mask has mode {png.mode}, expected RGB (class, instance, -)")
        instance_png = np.asarray(png)
    if instance_png.shape[:2] != (height, width):
        raise DatasetError(f"{png_path}: instance mask is {instance_png.shape[1]}x{instance_png.shape[0]} but "
                           f"{image_path} is {width}x{height}")
    return width, height, instance_annotations(instance_png, png_path)


def image_id(image_path: Path) -> int:
    """The number in an ADE20K file name: ``ADE_train_00000042.jpg`` -> 42 (unique within a split)."""
    match = IMAGE_NAME.fullmatch(image_path.stem)
    if not match:
        raise DatasetError(f"{image_path}: expected an ADE20K image name such as ADE_train_00000001.jpg")
    return int(match[1])


def convert_split(data_dir: str | Path, split: str, workers: int = 1) -> dict:
    """COCO dict of ``split`` ('train' or 'val'); file names are relative to ``<data_dir>/images/<folder>``."""
    data_dir, folder = Path(data_dir), SPLIT_FOLDERS[split]
    image_paths = sorted((data_dir / "images" / folder).glob("*.jpg"))
    if not image_paths:
        raise FileNotFoundError(f"no *.jpg images under {data_dir / 'images' / folder}")
    png_paths = [data_dir / "annotations_instance" / folder / (path.stem + ".png") for path in image_paths]
    missing = [path for path in png_paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} instance mask(s) of images/{folder} missing under "
                                f"{data_dir / 'annotations_instance' / folder}, e.g. {missing[0].name} "
                                "(from annotations_instance.tar)")
    ids = [image_id(path) for path in image_paths]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{data_dir / 'images' / folder}: two images have the same number in their name")
    with ProcessPoolExecutor(workers) as pool:
        converted = list(pool.map(_convert_image, zip(image_paths, png_paths), chunksize=16))
    images, annotations = [], []
    for path, identifier, (width, height, image_annotations) in zip(image_paths, ids, converted):
        images.append({"id": identifier, "file_name": path.name, "height": height, "width": width})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": identifier, **annotation})
    categories = [{"id": category_id, "name": name} for category_id, name in INSTANCE_CLASSES]
    description = f"ADE20K {folder}, the 100 instance classes of Mask2Former's ADE20K instance setup"
    return {"info": {"description": description}, "images": images, "annotations": annotations, "categories": categories}


def fetch_ade20k(ade20k: dict, root: Path, progress: bool = True) -> None:
    """Put ``MEMBERS`` under ``root/ADEChallengeData2016``: linked from ``local_copy``, or downloaded and unpacked."""
    if ade20k["local_copy"]:
        link_local_copy(ade20k["local_copy"], root / DATA_DIR, MEMBERS, config_key="dataset.ade20k.local_copy")
        log.info("linked %s from %s into %s", ", ".join(MEMBERS), ade20k["local_copy"], root / DATA_DIR)
        return
    for name, (into, members) in ARCHIVE_CONTENTS.items():
        spec = ade20k["archives"][name]
        archive = download(spec["url"], root / "downloads" / spec["url"].rsplit("/", 1)[-1], spec["md5"], spec["size"],
                           ade20k["retries"], progress, config_keys=f"dataset.ade20k.archives.{name}")
        unpack(archive, root / into, members)
        log.info("unpacked %s into %s", archive, root / into)


def prepare_ade20k(ade_config: dict, root: str | Path, workers: int = 1, progress: bool = True) -> None:
    """Assemble ADE20K in ``root`` (config ``dataset.ade20k``) and write ``annotations/instances_{train,val}.json``."""
    root = Path(root)
    fetch_ade20k(ade_config, root, progress)
    for split in SPLIT_FOLDERS:
        coco = convert_split(root / DATA_DIR, split, workers)
        write_json(root / "annotations" / f"instances_{split}.json", coco)
        log.info("ADE20K %s: %d images, %d annotations", split, len(coco["images"]), len(coco["annotations"]))
