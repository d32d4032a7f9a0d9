"""Figure 6 (needs CUDA): Mask R-CNN ResNet-50 training images/s at paper resolution, bf16 autocast, channels-last.

Also the peak GPU memory, and the fraction of the GPU's measured bf16 matrix-multiply throughput
that a training step achieves (the step's FLOPs counted by ``torch.utils.flop_counter``).
Skipped without a CUDA device.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks._common import demo_config, figure, skipped

RESOLUTION = 1024  # the COCO recipe's fixed large-scale-jitter crop
BATCH = 4
WARMUP, STEPS = 3, 10
NUM_CATEGORIES = 80


def _synthetic_batch(device, resolution: int, batch: int, generator):
    """Random images with three box-and-mask objects each: the step's cost, not its accuracy, is measured."""
    import torch

    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, resolution, resolution, device=device, generator=generator))
        corners = torch.randint(0, resolution // 2, (3, 2), device=device, generator=generator).float()
        boxes = torch.cat([corners, corners + resolution // 4], dim=1)
        masks = torch.zeros(3, resolution, resolution, dtype=torch.uint8, device=device)
        for index, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[index, y1:y2, x1:x2] = 1
        labels = torch.randint(1, NUM_CATEGORIES + 1, (3,), device=device, generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def bf16_matmul_tflops(device) -> float:
    import torch

    size = 8192
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def training_step_seconds(device, resolution: int, batch: int) -> tuple[float, float]:
    """Seconds per bf16, channels-last training step of Mask R-CNN R50, and the FLOPs of one step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gdis.models import build_model

    model_config = dict(demo_config()["model"], backbone="resnet50_fpn", backbone_weights=None,
                        min_size=[resolution], max_size=resolution, test_size=resolution)
    model = build_model(model_config, NUM_CATEGORIES, load_weights=False).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images, targets = _synthetic_batch(device, resolution, batch, torch.Generator(device).manual_seed(0))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = sum(model.losses(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(WARMUP):
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    synchronize()
    seconds = (time.perf_counter() - started) / STEPS
    with FlopCounterMode(display=False) as counter:
        step()
    return seconds, counter.get_total_flops()


def run(workdir: Path) -> list[dict]:
    import torch

    goal = "measured when a GPU is lent"
    if not torch.cuda.is_available():
        return [skipped("GPU training throughput (Mask R-CNN R50, bf16, channels-last)", goal, "no CUDA device")]
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    seconds_per_step, flops = training_step_seconds(device, RESOLUTION, BATCH)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    achieved = flops / seconds_per_step / 1e12
    peak_tflops = bf16_matmul_tflops(device)
    return [
        figure("GPU training images/s (Mask R-CNN R50, 1024², bf16, channels-last)", BATCH / seconds_per_step,
               "img/s", goal, None, device=torch.cuda.get_device_name(0), batch=BATCH, resolution=RESOLUTION),
        figure("GPU peak memory", peak_gib, "GiB", goal, None),
        figure("fraction of measured bf16 matmul throughput", achieved / peak_tflops, "", goal, None,
               step_tflops=achieved, matmul_tflops=peak_tflops),
    ]
