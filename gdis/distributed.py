"""Training on several processes with torch.distributed, and stopping cleanly when the scheduler says so.

``torchrun`` starts one process per GPU (or several CPU processes, which use gloo) and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_world`` joins them. ``train.batch_size`` and
``train.unlabeled_batch_size`` are global: at every step process r of W trains on items
r, r + W, ... of the step's batch (``gdis.data.StepBatchSampler``). The student trains inside
``torch.nn.parallel.DistributedDataParallel``, which averages gradients in buckets while the backward
pass runs; after each step the buffers (batch-norm statistics) of rank 0 are broadcast, so every process
holds the same student and EMA teacher, bit for bit, after every step. W processes take nearly the
same optimiser steps as one process with the whole batch (see docs and ``tests/test_distributed.py``
for how far apart). Only rank 0 writes files.

Under Slurm, a job about to be preempted or to reach its time limit gets SIGTERM (or the signal
chosen with ``sbatch --signal``); training then saves its checkpoint after the current step and
asks Slurm to requeue the job, which resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RENDEZVOUS_PORT = 29500


class Preempted(RuntimeError):
    """Training stopped on a scheduler signal after saving its checkpoint; rerunning resumes it."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a single CPU process by default)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group that torchrun describes in the environment, or a world of one process.

    A process uses GPU ``LOCAL_RANK`` when CUDA is available (NCCL between processes), else the CPU (gloo).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if size == 1:
        return World(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)
    log.info("process %d of %d on %s (%s)", world.rank, world.size, device, dist.get_backend())
    return world


def threads_per_process(threads: int) -> int:
    """The job's CPU threads shared among the training processes of this node (torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_sizes(train: dict, world: World, with_unlabeled: bool) -> None:
    """Global batches must split evenly over the processes; the error names the key to change."""
    keys = ["batch_size"] + (["unlabeled_batch_size"] if with_unlabeled else [])
    for key in keys:
        if train[key] % world.size:
            raise ValueError(f"train.{key}: {train[key]} images per step do not split over {world.size} "
                             f"processes; it is the global batch, so use a multiple of {world.size}")


def seed_augmentation(seed: int, world: World) -> None:
    """Give each process its own augmentation stream (a single process keeps the run's seed)."""
    if world.size > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, world.rank]).generate_state(1)[0]))


def data_parallel(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel on several processes (itself in one).

    DDP starts the gradient all-reduce of each bucket as soon as its gradients are ready, overlapping
    communication with the rest of the backward pass. Its own buffer broadcast (at the start of every
    forward) is off: ``broadcast_buffers`` runs after each optimiser step instead, so that the EMA
    teacher, updated from the student's buffers right after the step, is the same on every process too.
    """
    if world.size == 1:
        return module
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (batch-norm statistics drift apart, each process seeing its own images)."""
    if world.size == 1:
        return
    buffers = list(module.buffers())
    for dtype in sorted({buffer.dtype for buffer in buffers}, key=str):  # one broadcast per dtype, not per buffer
        same = [buffer for buffer in buffers if buffer.dtype == dtype]
        flat = torch.cat([buffer.reshape(-1) for buffer in same])
        dist.broadcast(flat, src=0)
        for buffer, value in zip(same, flat.split([buffer.numel() for buffer in same])):
            buffer.copy_(value.view_as(buffer))


def any_rank(flag: bool, world: World) -> bool:
    """True on every process when ``flag`` is true on at least one, so all of them take the same branch."""
    if world.size == 1:
        return flag
    value = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_rng_states(world: World) -> list[torch.Tensor]:
    """Every process's CPU RNG state, in rank order (each process augments with its own stream)."""
    state = torch.get_rng_state()
    if world.size == 1:
        return [state]
    states: list = [None] * world.size
    dist.all_gather_object(states, state)
    return states


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    if device.type == "cpu":
        return images, targets
    moved = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    return [image.to(device, non_blocking=True) for image in images], moved


@contextlib.contextmanager
def preemption_signals() -> Iterator[dict]:
    """Record SIGTERM / SIGUSR1 instead of dying, so training can stop after a whole step.

    Yields a dict whose ``"signal"`` is the number of the first signal received (None until then).
    The previous handlers are restored on exit.
    """
    received: dict = {"signal": None}

    def record(signum, frame) -> None:
        if received["signal"] is None:
            log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
            received["signal"] = signum

    previous = {sig: signal.signal(sig, record) for sig in PREEMPTION_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def requeue_slurm_job() -> str | None:
    """Under Slurm, put this job back in the queue (it restarts from its batch script); returns the job id."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return None
    log.info("Slurm job %s requeued", job_id)
    return job_id


def launcher(nodes: int, processes_per_node: int) -> str:
    """The command prefix that starts one training process per GPU (empty for a single process).

    One node: ``torchrun --standalone``. Several nodes (inside a Slurm allocation): ``srun`` starts
    one torchrun per node, which meet at the first node of the allocation.
    """
    if nodes == 1 and processes_per_node <= 1:
        return ""
    per_node = max(processes_per_node, 1)
    if nodes == 1:
        return f"torchrun --standalone --nnodes=1 --nproc-per-node={per_node} --no-python"
    first_node = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (f"srun --overlap --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"torchrun --nnodes={nodes} --nproc-per-node={per_node} --rdzv-backend=c10d "
            f"--rdzv-endpoint={first_node}:{RENDEZVOUS_PORT} --rdzv-id=$SLURM_JOB_ID --no-python")


# The Snakemake resources of every job, named as the Slurm executor reads them.
SCHEDULER_RESOURCES = ("mem_mb", "runtime", "nodes", "gpu", "slurm_partition", "slurm_account", "slurm_extra")


def scheduler_resources(job: dict) -> dict:
    """Snakemake resources of a job from its ``resources`` config entry (every name of SCHEDULER_RESOURCES).

    ``gpu`` counts the whole job (Slurm's ``--gpus``) while ``gpus`` is per node. Unset partition,
    account and extra options are empty, which the Slurm executor leaves out, so the cluster's defaults apply.
    """
    return {"mem_mb": job["mem_mb"], "runtime": job["runtime"], "nodes": job["nodes"], "gpu": job["gpus"] * job["nodes"],
            "slurm_partition": job["partition"] or "", "slurm_account": job["account"] or "",
            "slurm_extra": job["slurm_extra"] or ""}
