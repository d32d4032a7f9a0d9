"""Seeded label splits: which training images keep their labels.

The gdis protocol shuffles the image ids (sorted, so file order does not matter) with a
generator seeded by ``(seed, fold)`` and labels the first ``round(percent / 100 * N)``
of them. Splits of one fold are therefore nested: the 1 % images are inside the 5 % ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gdis.coco import load_coco
from gdis.io import sha256_file, write_json

PROTOCOL = "gdis"


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
) -> dict:
    """Write ``labeled.json``, ``unlabeled.json`` and ``manifest.json`` into ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    coco = load_coco(annotations_path)
    image_ids = [image["id"] for image in coco["images"]]
    chosen = labeled_image_ids(image_ids, label_percent, fold, seed)
    labeled, unlabeled_coco = split_coco(coco, set(chosen), unlabeled)
    manifest = {
        "protocol": PROTOCOL,
        "source_annotations": str(annotations_path),
        "source_sha256": sha256_file(annotations_path),
        "label_percent": label_percent,
        "fold": fold,
        "seed": seed,
        "unlabeled": unlabeled,
        "num_images": len(image_ids),
        "num_labeled": len(chosen),
        "num_unlabeled": len(unlabeled_coco["images"]),
        "labeled_image_ids": chosen,
    }
    write_json(out_dir / "labeled.json", labeled)
    write_json(out_dir / "unlabeled.json", unlabeled_coco)
    write_json(out_dir / "manifest.json", manifest)
    return manifest
