"""Step time of two CPU training processes (gloo): DistributedDataParallel against one flat all-reduce.

``gdis`` trains under DDP (``gdis.distributed.data_parallel``), which reduces gradients in buckets while
the backward pass still runs. The baseline is what gdis did before: after the whole backward, all
gradients concatenated into one buffer and all-reduced at once. Both train the same network on the
same per-process batch; each process has one thread, so the two use the machine's two cores.

    python -m benchmarks ddp_step_time            # both models, figures into results/benchmarks/
    torchrun --standalone --nproc-per-node=2 --no-python python -m benchmarks.ddp_step_time --worker tiny

Models: the demo's tiny Mask R-CNN at its 128 px training size (the demo's global batch, 4, split
over the processes) and Mask R-CNN ResNet-50 FPN with frozen pre-trained stages at 512 px, one
image per process.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import REPO, demo_config, figure, median

STEPS = 8
WARMUP = 2
MODELS = {
    "tiny": {"size": 128, "images_per_process": 2, "model": {}},
    "resnet50_fpn": {"size": 512, "images_per_process": 1,
                     "model": {"backbone": "resnet50_fpn", "backbone_weights": "imagenet", "max_size": 512}},
}


def flat_all_reduce(module, world) -> None:
    """The baseline: mean gradient over the processes in one buffer, after the whole backward pass."""
    import torch
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world.size
    for param, grad in zip(params, flat.split([p.numel() for p in params])):
        param.grad = grad.view_as(param)


def _batch(size: int, count: int, seed: int):
    """``count`` noise images with two rectangles each, as training targets."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(count):
        masks = torch.zeros((2, size, size), dtype=torch.uint8)
        masks[0, size // 8: size // 2, size // 8: size // 3] = 1
        masks[1, size // 2: size - size // 8, size // 3: size - size // 4] = 1
        boxes = torch.tensor([[size // 8, size // 8, size // 3, size // 2],
                              [size // 3, size // 2, size - size // 4, size - size // 8]], dtype=torch.float32)
        images.append(torch.rand((3, size, size), generator=generator))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def worker(name: str) -> None:
    """One of the two processes: times STEPS steps with each gradient synchronisation, prints rank 0's figures."""
    import torch
    import torch.distributed as dist

    from gdis import distributed
    from gdis.trainer import StudentLosses
    from gdis.models import build_model

    torch.set_num_threads(1)
    world = distributed.init_world()
    spec = MODELS[name]
    config = demo_config()
    model_config = {**config["model"], **spec["model"], "min_size": [spec["size"]], "test_size": spec["size"]}
    torch.manual_seed(0)
    model = build_model(model_config, 2, load_weights=False)  # timing needs no real weights
    images, targets = _batch(spec["size"], spec["images_per_process"], seed=world.rank)
    seconds = {}
    for sync in ("flat all-reduce", "DDP"):
        net = copy.deepcopy(model)
        losses = StudentLosses(net, shared_backbone=True)
        forward = distributed.data_parallel(losses, world) if sync == "DDP" else losses
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        steps = []
        for _ in range(STEPS):
            dist.barrier()
            started = time.perf_counter()
            loss = sum(forward([(images, targets)])[0].values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync == "flat all-reduce":
                flat_all_reduce(net, world)
            optimizer.step()
            distributed.broadcast_buffers(net, world)
            steps.append(time.perf_counter() - started)
        seconds[sync] = median(steps[WARMUP:])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if world.is_main:
        print(json.dumps({"model": name, "seconds_per_step": seconds, "trainable_parameters": trainable,
                          "image_size": spec["size"], "images_per_process": spec["images_per_process"]}))
    distributed.close_world(world)


def measure(name: str) -> dict:
    command = ["torchrun", "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-m",
               "benchmarks.ddp_step_time", "--worker", name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(workdir: Path) -> list[dict]:
    figures = []
    for name in MODELS:
        found = measure(name)
        ddp, flat = found["seconds_per_step"]["DDP"], found["seconds_per_step"]["flat all-reduce"]
        figures.append(figure(f"DDP ÷ flat all-reduce step time, 2 gloo processes, {name}", ddp / flat, "×",
                              "≤ 1", ddp <= flat, steps_timed=STEPS - WARMUP, **found))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=MODELS, help="run as one of the torchrun processes")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
    else:
        for result in run(Path(".")):
            print(json.dumps(result))
