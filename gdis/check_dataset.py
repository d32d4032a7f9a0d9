"""Checking a COCO-format dataset before training: every problem, with the image/annotation id and file.

``check_dataset`` reads the annotation file and every image it names and returns a report:
*errors* make an image or an annotation unusable (a missing file, a two-point polygon, ...),
*notes* are worth knowing but handled (crowd regions, grayscale images, ...). The policy
``dataset.on_bad_input`` chooses what errors do: ``fail`` stops with the full list, ``skip``
records the unusable items in the report so that ``usable_coco`` leaves them out, counted.
Items are excluded by position in the file, since a broken entry may have no usable id;
the report holds the file's SHA-256 so it is never applied to another version of it. An
annotation without ``area`` is a note: the report keeps the area computed from its segmentation,
and ``usable_coco`` writes it in, so splits and evaluation (whose area ranges need it) have it.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from gdis.coco import DatasetError, check_coco, load_coco
from gdis.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)


POLICIES = ("fail", "skip")
REPORT_FORMAT = "gdis-dataset-check-1"
OUTSIDE_TOLERANCE = 1.0  # pixels: annotation tools often put vertices on the far edge (x = width)
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")

# Problems that make an image (and its annotations) or an annotation unusable.
IMAGE_ERRORS = {
    "image_missing_field": "image entry lacks an integer id, file_name, width or height",
    "image_bad_size": "width/height in the JSON is not a positive integer",
    "file_outside_images": "file_name is an absolute path or has a '..' part: it could name a file outside the images folder",
    "duplicate_image_id": "two image entries share an id",
    "missing_file": "image file not found",
    "decompression_bomb": "image has more pixels than Pillow opens (2 x PIL.Image.MAX_IMAGE_PIXELS): a possible decompression bomb",
    "unreadable_file": "image file is not an image PIL can open",
    "corrupt_image": "image file is truncated or its data is corrupt",
    "size_mismatch": "image file size differs from the JSON width/height",
}
ANNOTATION_ERRORS = {
    "annotation_missing_field": "annotation lacks an integer id, image_id, category_id, bbox or segmentation",
    "duplicate_annotation_id": "two annotations share an id",
    "unknown_image_id": "annotation refers to an image id that is not in the file",
    "unknown_category_id": "annotation refers to a category id that is not in the file",
    "bad_iscrowd": "iscrowd is not 0 or 1",
    "bad_bbox": "bbox is not four finite numbers",
    "degenerate_bbox": "bbox has zero or negative width or height",
    "bbox_outside_image": "bbox lies outside the image",
    "bad_area": "area is not a finite, non-negative number (COCO evaluation needs it)",
    "empty_segmentation": "segmentation is empty",
    "bad_polygon": "polygon is not a flat list of numbers with an even length",
    "polygon_too_few_points": "polygon has fewer than 3 points",
    "polygon_not_finite": "polygon has a NaN or infinite coordinate",
    "polygon_outside_image": "polygon has a vertex outside the image",
    "invalid_rle": "RLE is malformed or its counts do not cover the image",
    "rle_size_mismatch": "RLE size differs from the image's height and width",
    "empty_mask": "segmentation covers no pixel",
}
# Handled, but worth knowing.
NOTES = {
    "crowd_region": "crowd annotation: ignored in training, an ignore region in evaluation",
    "missing_area": "annotation has no area: computed from its segmentation and written into the splits and evaluation",
    "no_annotations": "image has no annotation: used as an unlabelled image / a background image",
    "grayscale_image": "grayscale image: read as RGB with three equal channels",
    "alpha_channel": "image has transparency: the alpha channel is dropped",
    "sixteen_bit_image": "16-bit image: scaled to 8 bits",
    "other_color_mode": "image is not RGB (e.g. CMYK): converted to RGB",
    "exif_rotated": "EXIF orientation tag set: pixels are used as stored, not rotated (as COCO does)",
    "large_image": "image has more pixels than PIL.Image.MAX_IMAGE_PIXELS (Pillow warns of a decompression bomb): read anyway",
}


def _finding(kind: str, message: str, image_id: Any = None, annotation_id: Any = None, file: str | None = None) -> dict:
    return {"kind": kind, "image_id": image_id, "annotation_id": annotation_id, "file": file, "message": message}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_categories(coco: dict, path: str | Path) -> set:
    """Category ids of the file; a problem here concerns every annotation, so it always stops."""
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in ("images", "annotations", "categories")):
        raise DatasetError(f"{path} is not COCO: the top level must be an object with lists images, annotations, categories")
    if not coco["categories"]:
        raise DatasetError(f"{path}: no categories")
    ids = []
    for category in coco["categories"]:
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DatasetError(f"{path}: category {category!r} has no integer 'id'")
        ids.append(category["id"])
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise DatasetError(f"{path}: category id(s) {duplicates} appear more than once")
    return set(ids)


def decode_compressed_counts(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (5-bit groups, sign-extended, delta-coded after the second)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the string ends inside a number")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[position]!r} is outside the RLE alphabet")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_problem(segmentation: dict, height: int, width: int) -> tuple[str, str] | None:
    """(kind, message) when an RLE segmentation cannot be decoded safely into an (height, width) mask."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
        return "invalid_rle", f"RLE size {size!r} is not [height, width]"
    if size != [height, width]:
        return "rle_size_mismatch", f"RLE size {size} but the image is [{height}, {width}]"
    if isinstance(counts, list):
        if not all(_is_int(c) for c in counts):
            return "invalid_rle", "uncompressed RLE counts must be integers"
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = decode_compressed_counts(counts)
        except ValueError as error:
            return "invalid_rle", f"compressed RLE counts cannot be decoded: {error}"
    else:
        return "invalid_rle", f"RLE counts is a {type(counts).__name__}, not a list or a string"
    if any(run < 0 for run in runs):
        return "invalid_rle", "RLE has a negative run length"
    if sum(runs) != height * width:
        return "invalid_rle", f"RLE runs cover {sum(runs)} pixels, the image has {height * width}"
    return None


def polygon_problem(polygon: Any, height: int, width: int) -> tuple[str, str] | None:
    if not isinstance(polygon, list) or len(polygon) % 2 or not all(_is_number(v) for v in polygon):
        return "bad_polygon", "a polygon must be a flat list [x1, y1, x2, y2, ...] of numbers"
    if len(polygon) < 6:
        return "polygon_too_few_points", f"polygon has {len(polygon) // 2} point(s), at least 3 are needed"
    if not all(math.isfinite(v) for v in polygon):
        return "polygon_not_finite", "polygon has a NaN or infinite coordinate"
    xs, ys = polygon[0::2], polygon[1::2]
    if (min(xs) < -OUTSIDE_TOLERANCE or max(xs) > width + OUTSIDE_TOLERANCE
            or min(ys) < -OUTSIDE_TOLERANCE or max(ys) > height + OUTSIDE_TOLERANCE):
        return "polygon_outside_image", (f"polygon spans x [{min(xs):g}, {max(xs):g}], y [{min(ys):g}, {max(ys):g}] "
                                         f"outside the {width}x{height} image")
    return None


def segmentation_problem(segmentation: Any, height: int, width: int) -> tuple[str, str] | None:
    """(kind, message) of the first problem of a polygon or RLE segmentation, or None when it is usable."""
    if not segmentation:
        return "empty_segmentation", "segmentation is empty"
    if isinstance(segmentation, list):
        for polygon in segmentation:
            problem = polygon_problem(polygon, height, width)
            if problem:
                return problem
    elif isinstance(segmentation, dict):
        problem = rle_problem(segmentation, height, width)
        if problem:
            return problem
    else:
        return "bad_polygon", f"segmentation is a {type(segmentation).__name__}, not polygons or RLE"
    if segmentation_area(segmentation, height, width) == 0:
        return "empty_mask", "segmentation covers no pixel"
    return None


def segmentation_area(segmentation: list | dict, height: int, width: int) -> int:
    """Pixels covered by a segmentation that ``segmentation_problem`` accepts (polygons merged, as COCO does)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return int(mask_utils.area(rle))


def bbox_problem(bbox: Any, height: int, width: int) -> tuple[str, str] | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) and math.isfinite(v) for v in bbox)):
        return "bad_bbox", f"bbox {bbox!r} is not [x, y, width, height] of finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "degenerate_bbox", f"bbox {bbox} has zero or negative width or height"
    if x < -OUTSIDE_TOLERANCE or y < -OUTSIDE_TOLERANCE or x + w > width + OUTSIDE_TOLERANCE or y + h > height + OUTSIDE_TOLERANCE:
        return "bbox_outside_image", f"bbox {bbox} reaches outside the {width}x{height} image"
    return None


def file_name_problem(file_name: str) -> str | None:
    """Why ``file_name`` could name a file outside its images folder (absolute, or with a '..' part), or None.

    Checked on the name alone, before anything is read: the folder itself, and files in it, may be
    symbolic links (a linked local copy, a DataLad or DVC cache); those are the folder's, not the name's.
    """
    path = Path(file_name)
    if path.anchor:  # '/x', and on Windows also 'C:x' and '\\x'
        return "is an absolute path"
    if ".." in path.parts:
        return "has a '..' part"
    return None


def image_file_findings(path: Path, info: dict) -> list[dict]:
    """Problems and notes of one image file: readable, complete, of the size the JSON says, its colour mode."""
    with warnings.catch_warnings():
        # Pillow's warning for an image over MAX_IMAGE_PIXELS becomes the note large_image, also under -W error.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _image_file_findings(path, info)
        except Image.DecompressionBombError as error:
            image_id = info["id"]
            found = re.search(r"\((\d+) pixels\)", str(error))
            pixels = f"{int(found.group(1))} pixels" if found else "more pixels than Pillow opens"
            return [_finding("decompression_bomb", f"image {image_id}: {path} has {pixels}, over Pillow's limit of "
                             f"{2 * (Image.MAX_IMAGE_PIXELS or 0)} (2 x PIL.Image.MAX_IMAGE_PIXELS): a possible "
                             "decompression bomb, not read", image_id, file=str(path))]


def _image_file_findings(path: Path, info: dict) -> list[dict]:
    image_id, file = info["id"], str(path)
    if not path.is_file():
        return [_finding("missing_file", f"image {image_id}: file not found: {path}", image_id, file=file)]
    try:
        with Image.open(path) as handle:  # reads the header only: Pillow refuses a bomb before any decoding
            mode, size = handle.mode, handle.size
            try:
                handle.load()
                orientation = handle.getexif().get(EXIF_ORIENTATION)  # PNG may keep EXIF after the pixel data
                has_transparency = "transparency" in handle.info
            except (OSError, SyntaxError, ValueError) as error:
                return [_finding("corrupt_image", f"image {image_id}: {path} is truncated or corrupt: {error}", image_id,
                                 file=file)]
    except UnidentifiedImageError:
        return [_finding("unreadable_file", f"image {image_id}: {path} is not an image PIL can read", image_id, file=file)]
    except OSError as error:
        return [_finding("unreadable_file", f"image {image_id}: cannot open {path}: {error}", image_id, file=file)]
    if size != (info["width"], info["height"]):
        return [_finding("size_mismatch", f"image {image_id}: {path} is {size[0]}x{size[1]} but the JSON says "
                         f"{info['width']}x{info['height']}", image_id, file=file)]
    notes = []
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        notes.append(_finding("large_image", f"image {image_id}: {path} is {size[0]}x{size[1]} = {size[0] * size[1]} "
                              f"pixels, over PIL.Image.MAX_IMAGE_PIXELS ({limit}); read anyway", image_id, file=file))
    if mode in SIXTEEN_BIT_MODES:
        notes.append(_finding("sixteen_bit_image", f"image {image_id}: {path} has mode {mode}, scaled to 8 bits", image_id,
                              file=file))
    elif mode in ("1", "L", "LA") or (mode == "P" and _palette_is_gray(path)):
        notes.append(_finding("grayscale_image", f"image {image_id}: {path} is grayscale ({mode})", image_id, file=file))
    elif mode not in ("RGB", "RGBA", "P"):
        notes.append(_finding("other_color_mode", f"image {image_id}: {path} has mode {mode}, converted to RGB", image_id,
                              file=file))
    if mode in ("RGBA", "LA", "PA") or has_transparency:
        notes.append(_finding("alpha_channel", f"image {image_id}: {path} has transparency ({mode}), dropped", image_id,
                              file=file))
    if orientation not in (None, 1):
        notes.append(_finding("exif_rotated", f"image {image_id}: {path} has EXIF orientation {orientation}; "
                              "its pixels are used as stored", image_id, file=file))
    return notes


def _palette_is_gray(path: Path) -> bool:
    with Image.open(path) as handle:
        rgb = np.asarray(handle.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _has_int_id(item: Any, key: str) -> bool:
    return isinstance(item, dict) and _is_int(item.get(key))


def _image_findings(coco: dict, images_dir: Path) -> tuple[list[dict], dict, set[int]]:
    """Findings of the image entries and files, the usable images by id, and the positions of unusable ones."""
    findings, usable, unusable = [], {}, set()
    ids = Counter(image.get("id") for image in coco["images"] if _has_int_id(image, "id"))
    for index, image in enumerate(coco["images"]):
        if not _has_int_id(image, "id") or any(key not in image for key in ("file_name", "width", "height")):
            image_id = image.get("id") if isinstance(image, dict) else None
            findings.append(_finding("image_missing_field", f"images[{index}] (id {image_id!r}) lacks one of an "
                                     "integer id, file_name, width, height", image_id))
            unusable.add(index)
            continue
        image_id = image["id"]
        if ids[image_id] > 1:
            findings.append(_finding("duplicate_image_id", f"image id {image_id} appears {ids[image_id]} times "
                                     f"(images[{index}], {image['file_name']})", image_id, file=str(image["file_name"])))
            unusable.add(index)
            continue
        if not (_is_int(image["width"]) and _is_int(image["height"]) and image["width"] > 0 and image["height"] > 0):
            findings.append(_finding("image_bad_size", f"image {image_id}: width {image['width']!r}, height "
                                     f"{image['height']!r} are not positive integers", image_id))
            unusable.add(index)
            continue
        outside = file_name_problem(str(image["file_name"]))
        if outside:
            findings.append(_finding("file_outside_images", f"image {image_id}: file_name {str(image['file_name'])!r} "
                                     f"{outside}: it could name a file outside {images_dir}; not read", image_id,
                                     file=str(image["file_name"])))
            unusable.add(index)
            continue
        file_findings = image_file_findings(images_dir / str(image["file_name"]), image)
        findings += file_findings
        if any(f["kind"] in IMAGE_ERRORS for f in file_findings):
            unusable.add(index)
        else:
            usable[image_id] = image
    return findings, usable, unusable


def _annotation_findings(coco: dict, usable_images: dict, category_ids: set) -> tuple[list[dict], set[int], set, dict]:
    """Findings of the annotations, the positions of unusable ones, the image ids with usable annotations,
    and the areas computed for usable annotations without one, by position."""
    all_image_ids = {image["id"] for image in coco["images"] if _has_int_id(image, "id")}
    ids = Counter(ann["id"] for ann in coco["annotations"] if _has_int_id(ann, "id"))
    findings, unusable, annotated, computed_areas = [], set(), set(), {}
    for index, ann in enumerate(coco["annotations"]):
        problem = None
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if (not _has_int_id(ann, "id") or not _has_int_id(ann, "image_id")
                or any(k not in ann for k in ("category_id", "bbox", "segmentation"))):
            problem = "annotation_missing_field", (f"annotations[{index}] lacks one of an integer id, image_id, "
                                                   "category_id, bbox, segmentation")
        elif ids[ann_id] > 1:
            problem = "duplicate_annotation_id", f"annotation id {ann_id} appears {ids[ann_id]} times"
        elif image_id not in all_image_ids:
            problem = "unknown_image_id", f"image id {image_id} is not in the file"
        elif image_id not in usable_images:
            unusable.add(index)  # its image is reported already; the annotation goes with it
            continue
        elif not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
            problem = "unknown_category_id", f"category id {ann['category_id']!r} is not in the file"
        elif ann.get("iscrowd", 0) not in (0, 1):
            problem = "bad_iscrowd", f"iscrowd is {ann.get('iscrowd')!r}"
        elif ann.get("area") is not None and not (_is_number(ann["area"]) and math.isfinite(ann["area"])
                                                  and ann["area"] >= 0):
            problem = "bad_area", f"area is {ann['area']!r}"
        else:
            height, width = usable_images[image_id]["height"], usable_images[image_id]["width"]
            problem = bbox_problem(ann["bbox"], height, width) or segmentation_problem(ann["segmentation"], height, width)
        image = usable_images.get(image_id) if _is_int(image_id) else None
        file = str(image["file_name"]) if image else None
        if problem:
            kind, message = problem
            findings.append(_finding(kind, f"annotation {ann_id} (image {image_id}): {message}", image_id, ann_id, file))
            unusable.add(index)
            continue
        if ann.get("area") is None:  # absent or null, as labelling tools often export it
            area = segmentation_area(ann["segmentation"], image["height"], image["width"])
            computed_areas[str(index)] = float(area)
            findings.append(_finding("missing_area", f"annotation {ann_id} (image {image_id}) has no area: {area} "
                                     "pixels, computed from its segmentation", image_id, ann_id, file))
        if ann.get("iscrowd", 0):
            findings.append(_finding("crowd_region", f"annotation {ann_id} (image {image_id}) is a crowd region", image_id,
                                     ann_id, file))
        else:
            annotated.add(image_id)
    return findings, unusable, annotated, computed_areas


def check_dataset(annotations_path: str | Path, images_dir: str | Path, policy: str = "fail") -> dict:
    """Check a COCO dataset; return the report, or raise DatasetError listing every error when ``policy`` is 'fail'."""
    if policy not in POLICIES:
        raise ValueError(f"dataset.on_bad_input must be one of {POLICIES}, got {policy!r}")
    try:
        coco = read_json(annotations_path, "annotation file")
    except (ValueError, FileNotFoundError) as error:
        raise DatasetError(str(error)) from None
    category_ids = check_categories(coco, annotations_path)
    image_findings, usable_images, bad_images = _image_findings(coco, Path(images_dir))
    ann_findings, bad_annotations, annotated, computed_areas = _annotation_findings(coco, usable_images, category_ids)
    findings = image_findings + ann_findings
    for image_id, image in usable_images.items():
        if image_id not in annotated:
            findings.append(_finding("no_annotations", f"image {image_id} has no usable annotation", image_id,
                                     file=str(image["file_name"])))
    errors = [f for f in findings if f["kind"] not in NOTES]
    report = {
        "format": REPORT_FORMAT,
        "annotations": str(annotations_path),
        "annotations_sha256": sha256_file(annotations_path),
        "images_dir": str(images_dir),
        "policy": policy,
        "num_images": len(coco["images"]),
        "num_annotations": len(coco["annotations"]),
        "counts": dict(sorted(Counter(f["kind"] for f in findings).items())),
        "skipped_images": len(bad_images),
        "skipped_annotations": len(bad_annotations),
        "excluded_image_indices": sorted(bad_images),
        "excluded_annotation_indices": sorted(bad_annotations),
        "computed_areas": computed_areas,
        "errors": errors,
        "notes": [f for f in findings if f["kind"] in NOTES],
    }
    if errors and policy == "fail":
        raise DatasetError(
            f"{annotations_path}: {len(errors)} problem(s) make {len(bad_images)} image(s) and {len(bad_annotations)} "
            f"annotation(s) unusable (set dataset.on_bad_input: skip to leave them out):\n  "
            + "\n  ".join(f["message"] for f in errors)
        )
    if len(bad_images) == len(coco["images"]):
        raise DatasetError(f"{annotations_path}: no usable image is left:\n  " + "\n  ".join(f["message"] for f in errors))
    return report


def check_dataset_files(annotations_path: str | Path, images_dir: str | Path, policy: str = "fail",
                        report_path: str | Path | None = None) -> dict:
    """``check_dataset``, each finding logged, and the report written to ``report_path`` when given."""
    report = check_dataset(annotations_path, images_dir, policy)
    for finding in report["errors"]:
        log.warning("skipped: %s", finding["message"])
    for finding in report["notes"]:
        log.info("note: %s", finding["message"])
    log.info("%s", summary(report))
    if report_path:
        write_json(report_path, report, indent=1)
    return report


def summary(report: dict) -> str:
    counts = ", ".join(f"{kind} {n}" for kind, n in report["counts"].items()) or "no findings"
    return (f"{report['annotations']}: {report['num_images']} images, {report['num_annotations']} annotations; "
            f"skipped {report['skipped_images']} image(s) and {report['skipped_annotations']} annotation(s); {counts}")


def usable_coco(annotations_path: str | Path, report: dict | None) -> dict:
    """The annotation file without the items ``report`` excluded and with the areas it computed, checked as COCO;
    the file unchanged without a report."""
    if report is None:
        return load_coco(annotations_path)
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise DatasetError(f"the dataset check report given for {annotations_path} is not a gdis dataset check report")
    if report["annotations_sha256"] != sha256_file(annotations_path):
        raise DatasetError(f"{annotations_path} changed since it was checked; run 'gdis check-dataset' again")
    coco = read_json(annotations_path, "annotation file")
    bad_images, bad_annotations = set(report["excluded_image_indices"]), set(report["excluded_annotation_indices"])
    areas = report.get("computed_areas", {})
    coco = {
        **coco,
        "images": [image for index, image in enumerate(coco["images"]) if index not in bad_images],
        "annotations": [{**ann, "area": areas[str(index)]} if str(index) in areas else ann
                        for index, ann in enumerate(coco["annotations"]) if index not in bad_annotations],
    }
    check_coco(coco, annotations_path)
    return coco


def skip_record(report: dict) -> dict:
    """What a run records of the check of its data: the policy and how much was left out."""
    by_kind = Counter(finding["kind"] for finding in report["errors"])
    return {"policy": report["policy"], "annotations": report["annotations"],
            "skipped_images": report["skipped_images"], "skipped_annotations": report["skipped_annotations"],
            "errors_by_kind": dict(sorted(by_kind.items()))}
