"""Split generation at the scale of COCO train2017: time and peak memory of `gdis split`.

Generates a COCO file with 118,287 images and 860,001 polygon instances (about the size of
instances_train2017.json), then runs `gdis split` on it once per protocol as a child process
and reports its wall time, CPU time (user + system) and peak resident memory. On a shared
machine the wall time includes waiting for a core; the CPU time does not.

    python benchmarks/split_coco_scale.py --work-dir /tmp/split-bench [--percent 10] [--fold 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NUM_IMAGES = 118_287
NUM_INSTANCES = 860_001
POLYGON_POINTS = 24  # a typical COCO polygon has a few dozen vertices


def write_annotations(path: Path, seed: int = 0) -> None:
    """Stream a COCO-format file of the size of train2017 (~0.4 GB) without holding it in memory."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(600_000, size=NUM_IMAGES, replace=False)
    owners = np.sort(rng.integers(0, NUM_IMAGES, size=NUM_INSTANCES))
    with path.open("w", encoding="utf-8") as handle:
        handle.write('{"info": {"description": "generated at COCO train2017 scale"}, "images": [')
        handle.write(",".join(
            f'{{"id": {image_id}, "file_name": "{image_id:012d}.jpg", "width": 640, "height": 480}}'
            for image_id in image_ids.tolist()))
        handle.write('], "annotations": [')
        for start in range(0, NUM_INSTANCES, 50_000):
            stop = min(start + 50_000, NUM_INSTANCES)
            points = np.round(rng.uniform(0, 480, size=(stop - start, 2 * POLYGON_POINTS)), 2)
            chunk = []
            for index, (owner, polygon) in enumerate(zip(owners[start:stop].tolist(), points.tolist()), start=start):
                x, y = min(polygon[0::2]), min(polygon[1::2])
                chunk.append(f'{{"id": {index + 1}, "image_id": {int(image_ids[owner])}, "category_id": '
                             f'{1 + index % 80}, "iscrowd": 0, "area": 1000.0, "bbox": [{x}, {y}, 20.0, 20.0], '
                             f'"segmentation": [{json.dumps(polygon)}]}}')
            handle.write(("," if start else "") + ",".join(chunk))
        handle.write('], "categories": [' + ",".join(f'{{"id": {c}, "name": "class{c}"}}' for c in range(1, 81)) + "]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--percent", type=float, default=10)
    parser.add_argument("--fold", type=int, default=1)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    annotations = args.work_dir / "instances_train2017.json"
    if not annotations.exists():
        started = time.perf_counter()
        write_annotations(annotations)
        print(f"generated {annotations} ({annotations.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.0f} s")
    for protocol in ("stac", "gdis"):
        config = args.work_dir / f"{protocol}.yaml"
        config.write_text(json.dumps({
            "dataset": {"name": "bench", "source": "coco", "train_images": str(args.work_dir),
                        "train_annotations": str(annotations), "val_images": str(args.work_dir),
                        "val_annotations": str(annotations)},
            "splits": {"protocol": protocol}}))
        command = [sys.executable, "-m", "gdis.cli", "split", "--config", str(config), "--annotations", str(annotations),
                   "--images", str(args.work_dir), "--label-percent", str(args.percent), "--fold", str(args.fold),
                   "--out-dir", str(args.work_dir / protocol)]
        started = time.perf_counter()
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak resident memory
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"{protocol}: gdis split failed")
        manifest = json.loads((args.work_dir / protocol / "manifest.json").read_text())
        print(f"{protocol}: {args.percent:g} % fold {args.fold}: {manifest['num_labeled']} of "
              f"{manifest['num_images']} images labelled; {seconds:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, "
              f"peak RSS {usage.ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
