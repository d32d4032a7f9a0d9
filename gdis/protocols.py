"""Split protocols: which training images keep their labels, by the rule a paper used.

- ``gdis``: our seeded, file-order-independent, nested protocol (``gdis.splits.labeled_image_ids``).
- ``stac``: the split files of STAC and mmdetection's ``split_coco`` tool, to the image. The legacy
  NumPy generator is seeded with the fold, ``int(percent / 100 * N)`` indices are drawn *with
  replacement* over the images in file order, and the labelled images keep file order. Draws
  repeat, so fewer than ``int(percent / 100 * N)`` distinct images are labelled.
- ``list``: a file the user supplies (one image id or file name per line), e.g. the fixed
  Cityscapes lists of the Guided Distillation reference code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gdis.config import format_percent

PROTOCOLS = ("gdis", "stac", "list")
# A Cityscapes annotation file named in a list stands for its image (the reference code's lists name them).
CITYSCAPES_ANNOTATION_SUFFIXES = ("_gtFine_instanceIds.png", "_gtFine_polygons.json")


def stac_labeled_indices(num_images: int, label_percent: float, fold: int) -> list[int]:
    """Positions (in file order) of the labelled images of the STAC / mmdetection split ``{fold}@{percent}``."""
    draws = int(label_percent / 100.0 * num_images)
    if draws < 1:
        raise ValueError(f"the stac protocol draws int({label_percent} / 100 * {num_images}) = 0 images")
    chosen = np.random.RandomState(fold).choice(num_images, size=draws)
    return np.unique(chosen).tolist()


def split_name(label_percent: float, fold: int) -> str:
    """The field's name of a split, ``{fold}@{percent}`` (``instances_train2017.{fold}@{percent}.json``)."""
    return f"{fold}@{format_percent(label_percent)}"


def list_path(template: str, label_percent: float, fold: int) -> Path:
    """The list file of a split: ``splits.list_file`` with ``{percent}`` and ``{fold}`` filled in."""
    return Path(template.format(percent=format_percent(label_percent), fold=fold))


def read_image_list(path: str | Path, images: list[dict]) -> list[int]:
    """Image ids named by a list file: one image id or file name per line ('#' starts a comment).

    A name matches an image whose ``file_name`` equals it or ends with ``/`` + it, so both
    ``aachen/aachen_000000_000019_leftImg8bit.png`` and its base name work, as does the name of
    its Cityscapes annotation, ``aachen_000000_000019_gtFine_instanceIds.png``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"split list file not found: {path} (splits.list_file)") from None
    by_id = {str(image["id"]): image["id"] for image in images}
    by_name: dict[str, list[int]] = {}
    for image in images:
        parts = image["file_name"].split("/")
        for start in range(len(parts)):
            by_name.setdefault("/".join(parts[start:]), []).append(image["id"])
    chosen = []
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry in by_id:
            chosen.append(by_id[entry])
            continue
        name = entry.lstrip("./")
        for annotation_suffix in CITYSCAPES_ANNOTATION_SUFFIXES:
            name = name.removesuffix(annotation_suffix) + "_leftImg8bit.png" if name.endswith(annotation_suffix) else name
        matches = by_name.get(name, [])
        if len(matches) != 1:
            problem = "matches no image id or file name" if not matches else f"matches {len(matches)} images"
            raise ValueError(f"split list {path}, line {number}: {entry!r} {problem} of the training annotations")
        chosen.append(matches[0])
    if not chosen:
        raise ValueError(f"split list {path} names no image")
    return sorted(set(chosen))
