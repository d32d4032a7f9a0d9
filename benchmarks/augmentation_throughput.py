"""Throughput of the paper-size views (gdis.augment): images/s of labelled and unlabelled views, 0 and 2 workers.

Generated 640x480 JPEGs (COCO's typical size) with 4-12 polygon objects each; the COCO recipe
(large-scale jitter 0.1-2.0 and 1024x1024 crops, padded) makes a labelled view (image, masks, boxes)
or a weak + strong pair per image, through the real loader (``gdis.augment.views_loader``). The
first batch (worker start-up) is not timed. Run alone: ``python -m benchmarks.augmentation_throughput``
(``--images``, ``--batches``, ``--batch-size``, ``--workers``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from benchmarks._common import figure, machine

IMAGE_SIZE = (480, 640)  # height, width


def make_dataset(root: Path, num_images: int, seed: int = 0) -> tuple[dict, Path]:
    """``num_images`` JPEGs of random polygons on a noisy background, and their COCO annotations."""
    import numpy as np
    from PIL import Image, ImageDraw

    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 11)]}
    height, width = IMAGE_SIZE
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 13))):
            centre = rng.uniform((0, 0), (width, height))
            radius = rng.uniform(15, 150)
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))))
            points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
            points = points.clip((0, 0), (width - 1, height - 1))
            draw.polygon([tuple(p) for p in points], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 11)),
                "iscrowd": 0, "segmentation": [points.flatten().round(2).tolist()],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float((x1 - x0) * (y1 - y0))})
        image.save(images_dir / f"{image_id:06d}.jpg", quality=90)
        coco["images"].append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": height, "width": width})
    (root / "annotations.json").write_text(json.dumps(coco))
    return coco, images_dir


def coco_augment() -> dict:
    """``train.augment`` with config/config.yaml's photometric keys at the paper's values and the COCO geometry."""
    from gdis.config import load_config

    augment = copy.deepcopy(load_config([Path(__file__).resolve().parents[1] / "config" / "config.yaml"])
                            ["train"]["augment"])
    augment["blur_sigma"] = [0.1, 2.0]
    augment["geometry"]["kind"] = "large_scale_jitter"
    return augment


def images_per_second(views, num_images: int, batch_size: int, batches: int, workers: int) -> tuple[float, float]:
    """Images per wall second of ``batches`` batches after the first, through ``views_loader``, and this
    process's CPU milliseconds per image (all of the work with 0 workers; a shared machine disturbs it least)."""
    from gdis.augment import views_loader
    from gdis.data import StepBatchSampler

    loader = iter(views_loader(views, StepBatchSampler(num_images, batch_size, 0, 0, batches + 1), workers))
    next(loader)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(loader)
    images = batches * batch_size
    return images / (time.perf_counter() - started), (time.process_time() - cpu) / images * 1000


def measure(workdir: Path, num_images: int = 32, batch_size: int = 4, batches: int = 6,
            workers: tuple[int, ...] = (0, 2)) -> dict[tuple[str, int], tuple[float, float]]:
    import torch

    from gdis.augment import LabeledViews, UnlabeledViews
    from gdis.data import CocoInstances

    torch.set_num_threads(1)  # as in a data-loader worker
    coco, images_dir = make_dataset(workdir, num_images)
    augment = coco_augment()
    views = {"labelled (view + masks + boxes)": LabeledViews(CocoInstances(coco, images_dir), augment, 0),
             "unlabelled (weak + strong)": UnlabeledViews(CocoInstances(coco, images_dir, with_targets=False), augment, 1)}
    return {(name, count): images_per_second(dataset, num_images, batch_size, batches, count)
            for name, dataset in views.items() for count in workers}


def table(rates: dict[tuple[str, int], tuple[float, float]]) -> str:
    workers = sorted({count for _, count in rates})
    lines = ["| views, 640x480 JPEG -> 1024x1024 | " + " | ".join(f"{w} workers" for w in workers) + " |",
             "|---|" + "---:|" * len(workers)]
    for name in dict.fromkeys(name for name, _ in rates):
        cells = [f"{rates[(name, w)][0]:.1f} images/s" + (f" ({rates[(name, w)][1]:.0f} ms CPU/image)" if w == 0 else "")
                 for w in workers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(workdir: Path) -> list[dict]:
    rates = measure(workdir)
    print(table(rates))
    return [figure(f"{name}, {count} workers", rate, "images/s", "none: tells how many workers a GPU needs", None,
                   image_size=list(IMAGE_SIZE), view_size=[1024, 1024], cpu_ms_per_image_in_main_process=cpu_ms)
            for (name, count), (rate, cpu_ms) in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="where the JPEGs go (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per loader (after one untimed)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gdis-augment-bench-") as temporary:
        workdir = args.work_dir or Path(temporary)
        rates = measure(workdir, args.images, args.batch_size, args.batches, tuple(args.workers))
    about = machine()
    print(f"machine: {about['cpu']}, {about['cpu_count']} CPUs, load average {about['load_average']}, "
          f"torch {about['torch']}")
    print(table(rates))


if __name__ == "__main__":
    main()
