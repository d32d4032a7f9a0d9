"""Label splits: which training images keep their labels (protocols in ``gdis.protocols``).

The gdis protocol shuffles the image ids (sorted, so file order does not matter) with a
generator seeded by ``(seed, fold)`` and labels the first ``round(percent / 100 * N)``
of them. Splits of one fold are therefore nested: the 1 % images are inside the 5 % ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from gdis.check_dataset import skip_record, usable_coco
from gdis.coco import load_coco
from gdis.io import sha256_file, write_json
from gdis.protocols import (
    PROTOCOLS,
    list_path,
    read_image_list,
    split_name,
    stac_labeled_indices,
)

log = logging.getLogger(__name__)


def num_labeled(num_images: int, label_percent: float) -> int:
    """Number of labelled images: the percentage of ``num_images``, rounded, never below one."""
    if not 0 < label_percent <= 100:
        raise ValueError(f"label_percent must be in (0, 100], got {label_percent}")
    return max(1, int(round(label_percent / 100 * num_images)))


def labeled_image_ids(image_ids: list[int], label_percent: float, fold: int, seed: int) -> list[int]:
    """The labelled image ids of a split, in increasing order."""
    ordered = sorted(image_ids)
    rng = np.random.default_rng(np.random.SeedSequence([seed, fold]))
    permutation = rng.permutation(len(ordered))
    chosen = permutation[: num_labeled(len(ordered), label_percent)]
    return sorted(ordered[i] for i in chosen)


def choose_labeled(images: list[dict], protocol: str, label_percent: float, fold: int, seed: int,
                   label_list: str | Path | None = None) -> list[int]:
    """The labelled image ids (increasing) of one split under ``protocol`` (see ``gdis.protocols``)."""
    if protocol == "gdis":
        return labeled_image_ids([image["id"] for image in images], label_percent, fold, seed)
    if protocol == "stac":
        return sorted(images[index]["id"] for index in stac_labeled_indices(len(images), label_percent, fold))
    if protocol == "list":
        if not label_list:
            raise ValueError("splits.protocol is 'list' but no list of labelled images was given (splits.list_file)")
        return read_image_list(label_list, images)
    raise ValueError(f"splits.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def split_coco(coco: dict, labeled_ids: set[int], unlabeled: str) -> tuple[dict, dict]:
    """Labelled COCO dict (with its annotations) and unlabelled COCO dict (images only, labels hidden)."""
    header = {key: coco[key] for key in ("info", "licenses") if key in coco}
    labeled = {
        **header,
        "images": [image for image in coco["images"] if image["id"] in labeled_ids],
        "annotations": [ann for ann in coco["annotations"] if ann["image_id"] in labeled_ids],
        "categories": coco["categories"],
    }
    if unlabeled == "all":
        unlabeled_images = list(coco["images"])
    elif unlabeled == "unlabeled_only":
        unlabeled_images = [image for image in coco["images"] if image["id"] not in labeled_ids]
    else:
        raise ValueError(f"splits.unlabeled must be 'all' or 'unlabeled_only', got {unlabeled!r}")
    unlabeled_coco = {**header, "images": unlabeled_images, "annotations": [], "categories": coco["categories"]}
    return labeled, unlabeled_coco


def write_split(
    annotations_path: str | Path,
    out_dir: str | Path,
    label_percent: float,
    fold: int,
    seed: int,
    unlabeled: str = "all",
    protocol: str = "gdis",
    label_list: str | Path | None = None,
    extra_unlabeled: list[dict] | None = None,
    dataset_check: dict | None = None,
) -> dict:
    """Write ``labeled.json``, ``unlabeled.json`` and ``manifest.json`` into ``out_dir``; return the manifest.

    ``label_list`` names the labelled images under protocol 'list' (``splits.list_file`` with the split filled
    in). ``extra_unlabeled`` images (e.g. COCO unlabeled2017) are appended to the unlabelled set. With a
    ``dataset_check`` report, the images and annotations it excludes are left out before drawing.
    """
    out_dir = Path(out_dir)
    coco = usable_coco(annotations_path, dataset_check)
    image_ids = [image["id"] for image in coco["images"]]
    chosen = choose_labeled(coco["images"], protocol, label_percent, fold, seed, label_list)
    labeled, unlabeled_coco = split_coco(coco, set(chosen), unlabeled)
    if extra_unlabeled:
        known = set(image_ids)
        clashes = [image["id"] for image in extra_unlabeled if image["id"] in known]
        if clashes:
            raise ValueError(f"extra unlabelled image id {clashes[0]} is also a training image id")
        unlabeled_coco["images"] += extra_unlabeled
    manifest = {
        "protocol": protocol,
        "split_name": split_name(label_percent, fold),
        "list_file": str(label_list) if protocol == "list" else None,
        "source_annotations": str(annotations_path),
        "source_sha256": sha256_file(annotations_path),
        "label_percent": label_percent,
        "fold": fold,
        "seed": seed,
        "unlabeled": unlabeled,
        "num_images": len(image_ids),
        "num_labeled": len(chosen),
        "num_unlabeled": len(unlabeled_coco["images"]),
        "num_extra_unlabeled": len(extra_unlabeled or []),
        "labeled_image_ids": chosen,
        "dataset_check": skip_record(dataset_check) if dataset_check else None,
    }
    write_json(out_dir / "labeled.json", labeled)
    write_json(out_dir / "unlabeled.json", unlabeled_coco)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def write_configured_split(splits: dict, annotations_path: str | Path, images_dir: str | Path, out_dir: str | Path,
                           label_percent: float, fold: int, dataset_check: dict | None = None,
                           label_list: str | Path | None = None, extra_unlabeled_info: str | Path | None = None,
                           extra_unlabeled_images: str | Path | None = None) -> dict:
    """``write_split`` with the config's ``splits`` section; extra unlabelled images get file names relative
    to the training ``images_dir``, where training looks for them."""
    if splits["protocol"] == "list" and not label_list:
        label_list = list_path(splits["list_file"], label_percent, fold)  # not given: the path it would be
    extra_images = None
    if extra_unlabeled_info:
        prefix = os.path.relpath(extra_unlabeled_images, images_dir)
        extra_images = [{**image, "file_name": f"{prefix}/{image['file_name']}"}
                        for image in load_coco(extra_unlabeled_info)["images"]]
    manifest = write_split(annotations_path, out_dir, label_percent, fold, splits["seed"], splits["unlabeled"],
                           splits["protocol"], label_list, extra_images, dataset_check)
    log.info("%s split %s: %d of %d images labelled, %d unlabelled -> %s", manifest["protocol"],
             manifest["split_name"], manifest["num_labeled"], manifest["num_images"], manifest["num_unlabeled"], out_dir)
    return manifest
