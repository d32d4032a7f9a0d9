"""Pre-training of the tiny backbone on a pretext dataset: the miniature of ImageNet pre-training.

In the paper every student and teacher starts from a backbone pre-trained on ImageNet (the reference's
configs/coco/instance-segmentation/Base-COCO-InstanceSegmentation.yaml, MODEL.WEIGHTS
"detectron2://ImageNetPretrained/torchvision/R-50.pkl"). The demo's ``tiny`` CNN has no published
weights, so gdis makes its own: images of other object classes than the demo's (crosses, crescents,
hearts, arrows, hexagons, letters, blobs), generated in memory from ``pretrain.seed``, and a pretext
task trained on them. The backbone body (``TinyBody``) is saved for ``model.backbone_weights``; the
pretext head is thrown away, as ImageNet's classifier is.

Pretext tasks (``pretrain.task``), each with its own layout of the images:
- ``segment``: scenes of 1-6 objects, small to large, as in the demo; per-pixel classification
  (background or object class) at stride 4 from all four stages, through a light head: a dense
  task, close to instance segmentation;
- ``classify``: one large object per image, as ImageNet's are object-centred; its class from the
  last stage's pooled features (ImageNet's task).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.nn import functional as F

from gdis.io import atomic_path, sha256_file, write_json
from gdis.models.mask_rcnn import TINY_WIDTHS, TinyBody
from gdis.provenance import run_record
# The demo dataset's drawing primitives (backgrounds, fills, shape frames, occlusion), so that both
# datasets are drawn alike; only the object classes differ.
from gdis.synthetic import (background, fill, local_coordinates, pixel_grid, star_polygon, to_uint8,
                            visible_instances)

log = logging.getLogger(__name__)

# None of the demo's classes (gdis.synthetic.CATEGORIES: disc, square, triangle, star, ring).
PRETEXT_CLASSES = ("cross", "crescent", "heart", "arrow", "hexagon", "letter_l", "letter_t", "blob")


@dataclass(frozen=True)
class Layout:
    """How a pretext task's images are composed."""

    objects: tuple[int, int]  # fewest and most objects per image
    extent: tuple[float, float]  # smallest and largest object extent, as a fraction of the image side


LAYOUTS = {"segment": Layout(objects=(1, 6), extent=(0.12, 0.5)), "classify": Layout(objects=(1, 1), extent=(0.4, 0.8))}
TASKS = tuple(LAYOUTS)
# ImageNet statistics: both architectures normalise their input with them (torchvision's
# GeneralizedRCNNTransform defaults, gdis.models.mask2former.IMAGE_MEAN / IMAGE_STD).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# Pixel noise, blur and grey levels: the demo's noise and blur (gdis.synthetic.SyntheticSpec), plus grey images.
NOISE_STD = 0.04
BLUR_PROBABILITY, GRAYSCALE_PROBABILITY = 0.3, 0.15
HEAD_CHANNELS = 64
_PRETEXT_STREAM = 7  # seeds the pretext images apart from any demo image (gdis.synthetic uses [seed, split, index])


# -- the pretext images ------------------------------------------------------------------------------
def _shape_mask(name: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test of one pretext class in its own frame (u, v), about ``radius`` pixels in extent."""
    if name == "cross":
        arm = rng.uniform(0.2, 0.38) * radius
        return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))
    if name == "crescent":
        bite = rng.uniform(0.7, 0.95) * radius
        return (np.hypot(u, v) <= radius) & (np.hypot(u - rng.uniform(0.35, 0.6) * radius, v) > bite)
    if name == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y up, about 2.3 x 2.3 units
        x, y = u / (radius / 1.15), -v / (radius / 1.15) + 0.1
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if name == "arrow":
        shaft, head, neck = rng.uniform(0.12, 0.22) * radius, rng.uniform(0.45, 0.65) * radius, rng.uniform(0.0, 0.3)
        body = (u >= -radius) & (u <= neck * radius) & (np.abs(v) <= shaft)
        tip = (u >= neck * radius) & (u <= radius) & (np.abs(v) <= head * (radius - u) / ((1 - neck) * radius))
        return body | tip
    if name == "hexagon":
        return star_polygon(u, v, 6, radius, radius * math.cos(math.pi / 6))
    if name in ("letter_l", "letter_t"):
        stroke = rng.uniform(0.25, 0.4) * radius
        if name == "letter_l":
            return (((u >= -radius) & (u <= -radius + stroke) & (np.abs(v) <= radius))
                    | ((np.abs(u) <= radius) & (v >= radius - stroke) & (v <= radius)))
        return (((np.abs(u) <= radius) & (v >= -radius) & (v <= -radius + stroke))
                | ((np.abs(u) <= stroke / 2) & (np.abs(v) <= radius)))
    if name == "blob":  # a radius that varies with the angle by random low harmonics: no two alike
        angle = np.arctan2(v, u)
        outline = np.ones_like(angle)
        for harmonic in range(2, 6):
            outline += rng.uniform(0.05, 0.2) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
        return np.hypot(u, v) <= 0.8 * radius * outline
    raise ValueError(f"unknown pretext class {name!r}")


def _random_object(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], size: int,
                   extent: tuple[float, float]) -> tuple[int, np.ndarray]:
    """One placed, rotated, scaled and slightly stretched pretext object as (class index 1..K, mask)."""
    label = int(rng.integers(len(PRETEXT_CLASSES)))
    radius = rng.uniform(*extent) * size / 2
    centre = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
    u, v = local_coordinates(*grid, centre, rng.uniform(0, 2 * np.pi), math.exp(rng.uniform(-0.25, 0.25)))
    return label + 1, _shape_mask(PRETEXT_CLASSES[label], rng, u, v, radius)


def _pretext_background(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The demo's gradient / smooth-noise backgrounds, or a textured one (stripes, checks, noise)."""
    if rng.random() < 0.3:
        return np.array(fill(rng, grid, rng.random(3)), dtype=np.float64)
    return background(rng, grid)


def _visible_objects(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], size: int,
                     layout: Layout) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Objects drawn until at least one stays visible: (class, mask, visible part) in paint order."""
    for _ in range(100):
        count = int(rng.integers(layout.objects[0], layout.objects[1] + 1))
        kept = visible_instances([_random_object(rng, grid, size, layout.extent) for _ in range(count)])
        if kept:
            return kept
    raise RuntimeError(f"no visible pretext object in 100 layouts of {size}-pixel images")


def render_pretext_image(seed: int, index: int, size: int, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Pretext image ``index`` of ``seed``: uint8 RGB (size, size, 3) and its class map (0 background, 1..K)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PRETEXT_STREAM, index]))
    grid = pixel_grid(size)
    image = _pretext_background(rng, grid)
    class_map = np.zeros((size, size), dtype=np.uint8)
    for label, mask, visible in _visible_objects(rng, grid, size, layout):
        image[mask] = fill(rng, grid, image[mask].mean(axis=0))[mask]
        class_map[visible] = label  # the part no kept object above covers
    if rng.random() < BLUR_PROBABILITY:
        blurred = Image.fromarray(to_uint8(image)).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.3)))
        image = np.asarray(blurred, dtype=np.float64) / 255
    if rng.random() < GRAYSCALE_PROBABILITY:  # microscopy and industrial images are often single-channel
        image = np.repeat(image @ np.array([0.299, 0.587, 0.114]), 3).reshape(image.shape)
    image = image + rng.normal(0, NOISE_STD * rng.uniform(0.5, 1.5), image.shape)
    return to_uint8(image), class_map


def pretext_dataset(seed: int, first: int, count: int, size: int, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``first`` .. ``first + count - 1`` of ``seed``: uint8 (N, 3, H, W) and class maps uint8 (N, H, W)."""
    images = torch.empty((count, 3, size, size), dtype=torch.uint8)
    class_maps = torch.empty((count, size, size), dtype=torch.uint8)
    for slot in range(count):
        pixels, class_map = render_pretext_image(seed, first + slot, size, layout)
        images[slot] = torch.from_numpy(pixels).permute(2, 0, 1)
        class_maps[slot] = torch.from_numpy(class_map)
    return images, class_maps


# -- the pretext network -----------------------------------------------------------------------------
class PretextNet(nn.Module):
    """The tiny backbone with a pretext head: pooled classifier ('classify') or light pyramid ('segment')."""

    def __init__(self, task: str, num_classes: int = len(PRETEXT_CLASSES)) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"pretrain.task: {task!r} is none of {', '.join(TASKS)}")
        self.task = task
        self.body = TinyBody()
        if task == "classify":
            self.classifier = nn.Linear(TINY_WIDTHS[-1], num_classes)
        else:
            # A light head (no 3x3 convolution): the body, not the head, must carry the pixels' classes.
            self.laterals = nn.ModuleList(nn.Conv2d(width, HEAD_CHANNELS, 1) for width in TINY_WIDTHS)
            self.classifier = nn.Conv2d(HEAD_CHANNELS, num_classes + 1, 1)  # + background

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """'classify': logits (B, K); 'segment': logits (B, K + 1, H / 4, W / 4), at stride 4."""
        body = self.body
        stride4 = body.stage1(body.stem(x))
        if self.task == "classify":
            return self.classifier(body.stage4(body.stage3(body.stage2(stride4))).mean((2, 3)))
        features = [stride4]
        for stage in (body.stage2, body.stage3, body.stage4):
            features.append(stage(features[-1]))
        fused = sum(F.interpolate(lateral(feature), size=stride4.shape[-2:], mode="bilinear", align_corners=False)
                    for lateral, feature in zip(self.laterals, features))
        return self.classifier(F.relu(fused))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float, normalised with the ImageNet statistics both architectures use."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def pretext_objective(task: str, logits: torch.Tensor, class_maps: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of ``logits`` against the class maps, and the accuracy.

    'classify': the one object's class, accuracy per image. 'segment': each stride-4 position's class
    (that of the pixel at its receptive field's centre, which nearest resizing picks), accuracy per
    position, and ``object_accuracy`` over the positions on objects (background is most of an image).
    """
    if task == "classify":
        targets = class_maps.flatten(1).max(1).values.long() - 1
    else:
        targets = F.interpolate(class_maps[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    correct = logits.argmax(1) == targets
    metrics = {"accuracy": correct.float().mean().item()}
    if task == "segment":
        metrics["object_accuracy"] = correct[targets > 0].float().mean().nan_to_num(0.0).item()
    return F.cross_entropy(logits, targets), metrics


def pretext_loss(net: PretextNet, images: torch.Tensor, class_maps: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The pretext loss of ``net`` on a batch of uint8 images, and its accuracy (``pretext_objective``)."""
    return pretext_objective(net.task, net(normalise(images)), class_maps)


def augment(images: torch.Tensor, class_maps: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random horizontal flip and a random multiple of 90 degrees, per batch, the same for images and maps."""
    if torch.rand((), generator=generator) < 0.5:
        images, class_maps = images.flip(-1), class_maps.flip(-1)
    turns = int(torch.randint(4, (), generator=generator))
    return images.rot90(turns, (-2, -1)), class_maps.rot90(turns, (-2, -1))


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def evaluate_pretext(net: PretextNet, images: torch.Tensor, class_maps: torch.Tensor, batch_size: int) -> dict:
    """Pretext loss and accuracy on held-out images (inference in batches of ``batch_size``)."""
    net.eval()
    starts = range(0, len(images), batch_size)
    logits = torch.cat([net(normalise(images[start:start + batch_size])) for start in starts])
    net.train()
    loss, metrics = pretext_objective(net.task, logits, class_maps)
    return {"loss": loss.item(), **metrics}


def train_pretext(settings: dict) -> tuple[PretextNet, dict]:
    """Train the pretext network on images generated from ``settings`` (the ``pretrain`` config section).

    Returns the network and a summary: training loss / accuracy over the last tenth of the steps,
    held-out loss / accuracy (``evaluate_pretext``), seconds spent generating and training.
    """
    started = time.perf_counter()
    size, count = settings["image_size"], settings["num_images"]
    layout = LAYOUTS[settings["task"]]
    images, class_maps = pretext_dataset(settings["seed"], 0, count, size, layout)
    held_out = pretext_dataset(settings["seed"], count, settings["num_eval_images"], size, layout)
    generated = time.perf_counter()
    torch.manual_seed(settings["seed"])
    net = PretextNet(settings["task"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, settings["warmup_steps"], settings["steps"]))
    generator = torch.Generator().manual_seed(settings["seed"])
    order = torch.empty(0, dtype=torch.long)
    tail = max(1, settings["steps"] // 10)
    tail_loss, tail_accuracy = [], []  # the last tenth of the steps
    net.train()
    for step in range(settings["steps"]):
        while len(order) < settings["batch_size"]:  # reshuffle each pass over the images
            order = torch.cat([order, torch.randperm(count, generator=generator)])
        batch, order = order[:settings["batch_size"]], order[settings["batch_size"]:]
        loss, metrics = pretext_loss(net, *augment(images[batch], class_maps[batch], generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining step {step}: the pretext loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == 0 or (step + 1) % 50 == 0:
            log.info("pretext step %d/%d: loss %.4f, accuracy %.3f", step + 1, settings["steps"], loss.item(),
                     metrics["accuracy"])
        if step >= settings["steps"] - tail:
            tail_loss.append(loss.item())
            tail_accuracy.append(metrics["accuracy"])
    trained = time.perf_counter()
    held = evaluate_pretext(net, *held_out, settings["batch_size"])
    summary = {
        "train_loss": sum(tail_loss) / len(tail_loss), "train_accuracy": sum(tail_accuracy) / len(tail_accuracy),
        **{f"heldout_{name}": value for name, value in held.items()},
        "seconds_generating": round(generated - started, 1), "seconds_training": round(trained - generated, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return net, summary


def save_backbone(body: TinyBody, path: str | Path) -> None:
    """The body's state dict as a torch file (tensors only: loads with ``weights_only=True``), written atomically."""
    state = {key: value.detach().clone().contiguous() for key, value in body.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def pretrain_backbone(config: dict, out_path: Path, record_path: Path) -> dict:
    """Pre-train the tiny backbone as ``config['pretrain']`` says; write its weights and a JSON record.

    ``out_path`` receives the TinyBody state dict (``model.backbone_weights`` loads it into either
    architecture's ``tiny`` backbone); ``record_path`` the task, steps, pretext loss and accuracy,
    seconds, classes, versions and git revision. Returns the record.
    """
    settings = config["pretrain"]
    torch.set_num_threads(settings["threads"])
    net, summary = train_pretext(settings)
    save_backbone(net.body, out_path)
    record = run_record({"pretrain": settings}, weights=str(out_path), weights_sha256=sha256_file(out_path),
                        task=settings["task"], steps=settings["steps"], classes=list(PRETEXT_CLASSES), **summary)
    write_json(record_path, record, indent=1)
    log.info("pre-trained the tiny backbone (%s, %d steps, %.0f s): held-out loss %.4f, accuracy %.3f -> %s",
             settings["task"], settings["steps"], summary["seconds"], summary["heldout_loss"],
             summary["heldout_accuracy"], out_path)
    return record
