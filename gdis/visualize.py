"""Galleries: instance masks drawn over images, in PNG grids.

A run's galleries show a seeded sample of images: on the val set the ground truth beside the
student's (and EMA teacher's) predictions; on unlabelled training images the hidden ground
truth, the teacher's detections that became pseudo-labels, their outlines against the hidden
truth's (with each match's mask IoU and boundary IoU), those the thresholds rejected (and which
threshold), and the student's predictions. Which detections are kept, and why the
others are not, is the model's own account (``explain_pseudo_labels``), so each architecture's rule shows.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from gdis.checkpoint import load_network
from gdis.coco import annotation_mask, category_ids, load_coco
from gdis.data import read_image, to_float
from gdis.io import atomic_path, read_json
from gdis.pseudo_quality import match_quality

# Tableau 10: distinguishable class colours; class label k (1..K) takes colour k - 1, cycling.
CLASS_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
# Per rejection reason of a model's explain_pseudo_labels: colour name, what it tests, the test (for titles).
REJECTIONS = {
    "score": ("grey", "score", "score > {score_threshold:g}"),
    "area": ("yellow", "area", "area >= {min_area} px"),
    "no_object": ("cyan", "no object", "not no-object"),
    "mask_sum": ("yellow", "mask sum", "mask probability sum > {min_mask_probability_sum:g}"),
}
REJECTED_COLORS = {"score": (150, 150, 150), "area": (255, 220, 0), "no_object": (0, 200, 230),
                   "mask_sum": (255, 220, 0)}
# Outlines of the kept pseudo-labels against the hidden truth's (colours that stand out on stained,
# grey and colourful images alike).
TRUTH_OUTLINE = (0, 230, 0)
PSEUDO_OUTLINE = (255, 0, 255)
FILL_ALPHA = 0.45
FONT_SIZE = 12
BACKGROUND = (255, 255, 255)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def class_color(label: int) -> tuple[int, int, int]:
    return CLASS_COLORS[(label - 1) % len(CLASS_COLORS)]


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a boolean mask within ``width`` 4-neighbour steps of the outside (the image border is outside)."""
    interior = mask
    for _ in range(width):
        padded = np.pad(interior, 1, constant_values=False)
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & interior
    return mask & ~interior


def overlay_masks(image: np.ndarray, masks: list[np.ndarray], colors: list[tuple[int, int, int]],
                  filled: list[bool], alpha: float = FILL_ALPHA, outline_width: int = 1) -> np.ndarray:
    """Draw masks on an (H, W, 3) uint8 image: filled ones blended at ``alpha``, every one outlined in full colour."""
    out = image.astype(np.float32)
    for mask, color, fill in zip(masks, colors, filled):
        mask = mask.astype(bool)
        color = np.asarray(color, dtype=np.float32)
        if fill:
            out[mask] = (1 - alpha) * out[mask] + alpha * color
        out[mask_outline(mask, outline_width)] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class Instance:
    """One mask to draw, with its caption (class name and, for detections, score) and its class label (1..K)."""

    mask: np.ndarray
    caption: str
    color: tuple[int, int, int]
    filled: bool = True
    label: int | None = None


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def render_panel(image: np.ndarray, instances: list[Instance], size: int, outline_width: int = 1) -> Image.Image:
    """The image scaled so that its longer side is ``size`` pixels, with the instances drawn and captioned."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
    scaled = np.asarray(Image.fromarray(image).resize(new_size, resample))
    masks = [np.asarray(Image.fromarray(inst.mask.astype(np.uint8) * 255).resize(new_size, Image.NEAREST)) > 127
             for inst in instances]
    drawn = overlay_masks(scaled, masks, [inst.color for inst in instances], [inst.filled for inst in instances],
                          outline_width=outline_width)
    panel = Image.fromarray(drawn)
    draw, font = ImageDraw.Draw(panel), _font()
    for inst, mask in zip(instances, masks):
        if not inst.caption or not mask.any():
            continue
        rows, columns = np.nonzero(mask)
        left, top, right, bottom = draw.textbbox((0, 0), inst.caption, font=font)
        x, y = max(0, min(int(columns.min()), panel.width - right - 3)), int(rows.min())  # whole caption in the panel
        label_height = bottom + 2
        label_top = y - label_height if y >= label_height else y  # above the mask, or inside it at the image's top
        draw.rectangle((x, label_top, x + right + 2, label_top + label_height), fill=inst.color)
        text_color = (0, 0, 0) if sum(inst.color) > 380 else (255, 255, 255)
        draw.text((x + 1, label_top + 1), inst.caption, fill=text_color, font=font)
    return panel


def with_caption(panel: Image.Image, lines: list[str]) -> Image.Image:
    """``panel`` above a white strip holding ``lines`` of text."""
    line = FONT_SIZE + 3
    out = Image.new("RGB", (panel.width, panel.height + len(lines) * line + 4), BACKGROUND)
    out.paste(panel, (0, 0))
    draw, font = ImageDraw.Draw(out), _font()
    for index, text in enumerate(lines):
        draw.text((2, panel.height + 2 + index * line), text, fill=(0, 0, 0), font=font)
    return out


def compose_grid(cells: list[list[Image.Image]], column_titles: list[str], row_titles: list[str],
                 title: str) -> Image.Image:
    """Cells in rows under column titles, each row named on its left, the whole under a title."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad, line = 6, FONT_SIZE + 6
    cell_w = max(cell.width for row in cells for cell in row)
    cell_h = max(cell.height for row in cells for cell in row)
    column_w = max(cell_w, *(text_size(t)[0] for t in column_titles))
    label_w = max(text_size(t)[0] for t in row_titles) + 2 * pad
    width = max(label_w + len(column_titles) * (column_w + pad) + pad, text_size(title)[0] + 2 * pad)
    top = pad + 2 * line
    height = top + len(cells) * (cell_h + pad)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for c, column_title in enumerate(column_titles):
        draw.text((label_w + c * (column_w + pad), pad + line), column_title, fill=(0, 0, 0), font=font)
    for r, (row, row_title) in enumerate(zip(cells, row_titles)):
        y = top + r * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - FONT_SIZE // 2), row_title, fill=(0, 0, 0), font=font)
        for c, cell in enumerate(row):
            grid.paste(cell, (label_w + c * (column_w + pad), y))
    return grid


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG", optimize=True)


# -- what to draw ---------------------------------------------------------------------------------
def explain(model, images: list[torch.Tensor], pseudo_label: dict) -> list[dict]:
    """The model's own account of its pseudo-labels: per image, candidates with their decisions
    (``explain_pseudo_labels`` of ``gdis.models.interface.Segmenter``)."""
    with torch.inference_mode():
        return model.explain_pseudo_labels([to_float(image) for image in images], pseudo_label)


def rejection_legend(reasons: tuple[str, ...]) -> str:
    """'grey score, yellow area': the colour of each rejection reason, for a column title."""
    return ", ".join(f"{REJECTIONS[reason][0]} {REJECTIONS[reason][1]}" for reason in reasons)


def pseudo_label_rule(reasons: tuple[str, ...], pseudo_label: dict) -> str:
    """The tests behind ``reasons`` with their thresholds, e.g. 'score > 0.7, area >= 10 px'."""
    return ", ".join(REJECTIONS[reason][2].format(**pseudo_label) for reason in reasons)


def detections(prediction: dict, names: dict[int, str], mask_threshold: float, min_score: float,
               decisions: list[str] | None = None, show: tuple[str, ...] = ("kept",)) -> list[Instance]:
    """Detections scoring at least ``min_score`` as instances; with ``decisions``, only those whose decision is in
    ``show`` (kept ones filled in class colours, rejected ones outlined in the colour of the threshold at fault)."""
    instances = []
    for index, (score, label, mask) in enumerate(zip(prediction["scores"].tolist(), prediction["labels"].tolist(),
                                                     prediction["masks"])):
        decision = decisions[index] if decisions is not None else "kept"
        if score < min_score or decision not in show:
            continue
        binary = (mask > mask_threshold).numpy()
        if decision == "kept":
            instances.append(Instance(binary, f"{names[label]} {score:.2f}", class_color(label), label=label))
        else:
            instances.append(Instance(binary, f"{score:.2f}", REJECTED_COLORS[decision], filled=False))
    return instances


def ground_truth(coco_image: dict, annotations: list[dict], label_of: dict[int, int],
                 names: dict[int, str]) -> list[Instance]:
    height, width = coco_image["height"], coco_image["width"]
    instances = []
    for ann in annotations:
        if ann.get("iscrowd", 0) or not ann.get("segmentation"):
            continue
        label = label_of[ann["category_id"]]
        instances.append(Instance(annotation_mask(ann, height, width).astype(bool), names[label], class_color(label),
                                  label=label))
    return instances


def compare_with_truth(kept: list[Instance], truth: list[Instance], height: int, width: int) -> dict:
    """``match_quality`` of kept pseudo-labels against the truth (same class, mask IoU >= 0.5, one-to-one)."""
    def stack(instances: list[Instance]) -> tuple[torch.Tensor, torch.Tensor]:
        masks = np.stack([inst.mask for inst in instances]) if instances else np.zeros((0, height, width), bool)
        return torch.from_numpy(masks.astype(bool)), torch.tensor([inst.label for inst in instances], dtype=torch.int64)

    return match_quality(*stack(kept), *stack(truth))


def outline_captions(kept: list[Instance], truth: list[Instance], height: int, width: int) -> tuple[list[str], list[str]]:
    """Per kept pseudo-label 'mask IoU/boundary IoU' of its match ('no match' otherwise), and summary lines."""
    quality = compare_with_truth(kept, truth, height, width)
    by_row = {row: f"{iou:.2f}/{boundary:.2f}"
              for (row, _), iou, boundary in zip(quality["pairs"], quality["mask_ious"], quality["boundary_ious"])}
    lines = [f"matched {quality['matched']} of {len(kept)} kept, {len(truth)} true"]
    if quality["matched"]:
        mean_iou = sum(quality["mask_ious"]) / quality["matched"]
        mean_boundary = sum(quality["boundary_ious"]) / quality["matched"]
        lines.append(f"mean IoU {mean_iou:.2f}, boundary {mean_boundary:.2f}")
    return [by_row.get(index, "no match") for index in range(len(kept))], lines


def outline_comparison(image: np.ndarray, kept: list[Instance], truth: list[Instance], size: int) -> Image.Image:
    """Kept pseudo-labels' outlines (magenta) over the hidden truth's (green), each captioned by
    ``outline_captions``, above the summary lines."""
    captions, lines = outline_captions(kept, truth, *image.shape[:2])
    instances = [Instance(inst.mask, "", TRUTH_OUTLINE, filled=False) for inst in truth]
    instances += [Instance(inst.mask, caption, PSEUDO_OUTLINE, filled=False) for inst, caption in zip(kept, captions)]
    return with_caption(render_panel(image, instances, size, outline_width=2), lines)


def sample_ids(image_ids: list[int], count: int, seed: int) -> list[int]:
    """A seeded sample of ``count`` ids (all of them when fewer), sorted: the same images for every run."""
    ordered = sorted(image_ids)
    return sorted(random.Random(seed).sample(ordered, min(count, len(ordered))))


class CocoSource:
    """Images, annotations and class names of one COCO file."""

    def __init__(self, annotations_path: str | Path, images_dir: str | Path) -> None:
        self.coco = load_coco(annotations_path)
        self.images_dir = Path(images_dir)
        self.images = {image["id"]: image for image in self.coco["images"]}
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        for ann in self.coco["annotations"]:
            self.annotations[ann["image_id"]].append(ann)
        ids = category_ids(self.coco)
        self.label_of = {category_id: index + 1 for index, category_id in enumerate(ids)}
        by_id = {category["id"]: category.get("name", str(category["id"])) for category in self.coco["categories"]}
        self.names = {index + 1: by_id[category_id] for index, category_id in enumerate(ids)}

    def image(self, image_id: int) -> torch.Tensor:
        info = self.images[image_id]
        return read_image(self.images_dir / info["file_name"], info)

    def truth(self, image_id: int) -> list[Instance]:
        return ground_truth(self.images[image_id], self.annotations[image_id], self.label_of, self.names)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def predict(model, images: list[torch.Tensor]) -> list[dict]:
    with torch.inference_mode():
        return model.predict([to_float(image) for image in images])


def val_gallery(source: CocoSource, image_ids: list[int], networks: dict[str, object], figures: dict,
                mask_threshold: float, title: str) -> Image.Image:
    """Rows of val images: ground truth, then each network's predictions."""
    images = [source.image(i) for i in image_ids]
    outputs = {name: predict(model, images) for name, model in networks.items()}
    size, min_score = figures["cell_size"], figures["score_threshold"]
    rows = []
    for index, (image_id, image) in enumerate(zip(image_ids, images)):
        row = [render_panel(_hwc(image), source.truth(image_id), size)]
        for name in networks:
            row.append(render_panel(_hwc(image), detections(outputs[name][index], source.names, mask_threshold,
                                                            min_score), size))
        rows.append(row)
    columns = ["ground truth"] + [f"{name} (score >= {min_score:g})" for name in networks]
    return compose_grid(rows, columns, [f"image {i}" for i in image_ids], title)


def pseudo_label_gallery(images: list[torch.Tensor], row_titles: list[str], truths: list[list[Instance]] | None,
                         teacher, teacher_name: str, student, names: dict[int, str], pseudo_label: dict,
                         figures: dict, title: str) -> Image.Image:
    """Rows of images: (hidden) ground truth when known, the teacher's kept and rejected pseudo-labels, the student."""
    size, min_score = figures["cell_size"], figures["score_threshold"]
    mask_threshold = pseudo_label["mask_threshold"]
    explained = explain(teacher, images, pseudo_label)
    student_out = predict(student, images) if student is not None else None
    reasons = tuple(teacher.rejection_reasons)
    rows = []
    for index, image in enumerate(images):
        candidates = explained[index]
        decisions = candidates["decisions"]
        kept = detections(candidates, names, mask_threshold, 0.0, decisions)
        row = [] if truths is None else [render_panel(_hwc(image), truths[index], size)]
        row.append(render_panel(_hwc(image), kept, size))
        if truths is not None:
            row.append(outline_comparison(_hwc(image), kept, truths[index], size))
        row.append(render_panel(_hwc(image), detections(candidates, names, mask_threshold, min_score, decisions,
                                                        reasons), size))
        if student_out is not None:
            row.append(render_panel(_hwc(image), detections(student_out[index], names, mask_threshold, min_score),
                                    size))
        rows.append(row)
    columns = [] if truths is None else ["hidden ground truth"]
    columns += [f"pseudo-labels kept ({teacher_name})"]
    columns += [] if truths is None else ["kept (magenta) vs truth (green): IoU/boundary IoU"]
    columns += [f"rejected (>= {min_score:g}): {rejection_legend(reasons)}",
                *([f"student (score >= {min_score:g})"] if student is not None else [])]
    return compose_grid(rows, columns, row_titles, title)


def placeholder(text: str) -> Image.Image:
    image = Image.new("RGB", (360, 40), BACKGROUND)
    ImageDraw.Draw(image).text((8, 12), text, fill=(0, 0, 0), font=_font())
    return image


@dataclass(frozen=True)
class RunGalleryFiles:
    """The files a run's galleries read besides its checkpoint: its split and the dataset's train and val sets."""

    labeled: str | Path
    unlabeled: str | Path
    train_annotations: str | Path
    train_images: str | Path
    val_annotations: str | Path
    val_images: str | Path


def write_run_galleries(config: dict, checkpoint: str | Path, files: RunGalleryFiles, val_png: str | Path,
                        unlabeled_png: str | Path) -> None:
    """The val and unlabelled galleries of one training run, from its checkpoint (``gdis gallery``)."""
    networks, state = load_run_networks(checkpoint, config["model"])
    draw_run_galleries(config, networks, state, files, val_png, unlabeled_png)


def load_run_networks(checkpoint: str | Path, model_config: dict) -> tuple[dict, dict]:
    """{name: network} of a finished run, 'student' and, after distillation, 'ema_teacher'; and the checkpoint."""
    student, state = load_network(checkpoint, "student", model_config)
    networks = {"student": student}
    if state.get("ema_teacher") is not None:
        networks["ema_teacher"], _ = load_network(checkpoint, "ema_teacher", model_config)
    return networks, state


def draw_run_galleries(config: dict, networks: dict, state: dict, files: RunGalleryFiles, val_png: str | Path,
                       unlabeled_png: str | Path) -> None:
    """The val and unlabelled galleries of one run's ``networks`` (``load_run_networks``).

    The teacher is the run's EMA teacher, or the network itself for a supervised run (the
    pre-trained teacher of guided distillation).
    """
    figures, pseudo_label = config["figures"], config["train"]["pseudo_label"]
    student = networks["student"]
    teacher = networks.get("ema_teacher", student)
    teacher_name = "EMA teacher" if "ema_teacher" in networks else "supervised network as teacher"
    networks = {"EMA teacher" if name == "ema_teacher" else name: network for name, network in networks.items()}
    label = f"{state['method']}, step {state['step']}"

    val = CocoSource(files.val_annotations, files.val_images)
    val_ids = sample_ids(list(val.images), figures["num_images"], figures["seed"])
    save_png(val_gallery(val, val_ids, networks, figures, pseudo_label["mask_threshold"],
                         f"val images: ground truth and predictions ({label})"), val_png)

    train = CocoSource(files.train_annotations, files.train_images)
    if train.label_of != val.label_of:
        raise ValueError(f"{files.train_annotations} and {files.val_annotations} define different categories")
    labeled = {image["id"] for image in read_json(files.labeled, "labelled split")["images"]}
    unlabeled = [image["id"] for image in read_json(files.unlabeled, "unlabelled split")["images"]]
    candidates = [i for i in unlabeled if i not in labeled] or unlabeled
    if not candidates:
        save_png(placeholder(f"{files.unlabeled} has no unlabelled images"), unlabeled_png)
        return
    ids = sample_ids(candidates, figures["num_images"], figures["seed"])
    gallery = pseudo_label_gallery(
        [train.image(i) for i in ids], [f"image {i}" for i in ids], [train.truth(i) for i in ids],
        teacher, teacher_name, student if teacher is not student else None, train.names, pseudo_label, figures,
        f"unlabelled training images: pseudo-labels ({label}; "
        f"{pseudo_label_rule(tuple(teacher.rejection_reasons), pseudo_label)})")
    save_png(gallery, unlabeled_png)


def image_files(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the folders named."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return files


def read_any_image(path: Path) -> torch.Tensor:
    """An image file as RGB uint8 (3, H, W); an unreadable file is named."""
    try:
        with Image.open(path) as handle:
            return torch.from_numpy(np.asarray(handle.convert("RGB")).copy()).permute(2, 0, 1)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def visualize_images(config: dict, checkpoint: str | Path, which: str, image_paths: list[str], out_png: str | Path,
                     annotations_path: str | None = None) -> None:
    """One row per image: the network's pseudo-labels (kept, rejected) and predictions, after the ground truth
    when ``annotations_path`` annotates the image (matched by file name)."""
    model, state = load_network(checkpoint, which, config["model"])
    files = image_files(image_paths)
    names = {label: f"class {category_id}" for label, category_id in enumerate(state["category_ids"], start=1)}
    truths = None
    if annotations_path:
        coco = CocoSource(annotations_path, ".")
        if sorted(coco.label_of) != state["category_ids"]:
            raise ValueError(f"{annotations_path} defines other categories than checkpoint {checkpoint}")
        names = coco.names
        by_name = {Path(image["file_name"]).name: image["id"] for image in coco.images.values()}
        truths = [coco.truth(by_name[f.name]) if f.name in by_name else [] for f in files]
    gallery = pseudo_label_gallery(
        [read_any_image(f) for f in files], [f.name for f in files], truths, model, which, model, names,
        config["train"]["pseudo_label"], config["figures"],
        f"{checkpoint} ({which}, {state['method']}, step {state['step']})")
    save_png(gallery, out_png)
