"""Figure 3: data-loading throughput ÷ training consumption, demo model, default worker count.

Loading a step's batches (images decoded, masks rasterised, views made, as ``gdis train`` does) against
training on already loaded batches; the figure is the lower of the supervised and guided ratios.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import Clock, figure, median, time_steps, training_setup

GOAL = 3.0
STEPS = 10


def loading_seconds(dataset, batch_size: int, seed: int, workers: int) -> tuple[list[float], list[float]]:
    """CPU and wall seconds per batch of a fresh step loader (with 0 workers everything runs in this process)."""
    from gdis.augment import step_views_loader

    cpu, wall = [], []
    batches = iter(step_views_loader(dataset, batch_size, seed, 0, STEPS, workers))
    for _ in range(STEPS):
        with Clock() as clock:
            next(batches)
        cpu.append(clock.cpu)
        wall.append(clock.wall)
    return cpu, wall


def run(workdir: Path) -> list[dict]:
    config, trainers, batches, _ = training_setup(workdir, STEPS)
    train = config["train"]
    workers = train["num_workers"]
    steps = time_steps({name: trainers[name] for name in ("supervised", "guided")}, batches)
    labeled_cpu, labeled_wall = loading_seconds(trainers["guided"].parts.labeled, train["batch_size"], 0, workers)
    unlabeled_cpu, unlabeled_wall = loading_seconds(trainers["guided"].parts.unlabeled, train["unlabeled_batch_size"], 1,
                                                    workers)
    # With workers the loading runs in other processes: then only wall time says how long a batch takes.
    load_labeled = median(labeled_cpu if workers == 0 else labeled_wall)
    load_unlabeled = median(unlabeled_cpu if workers == 0 else unlabeled_wall)
    step_supervised = median(steps["supervised"]["cpu" if workers == 0 else "wall"])
    step_guided = median(steps["guided"]["cpu" if workers == 0 else "wall"])
    ratios = {"supervised": step_supervised / load_labeled, "guided": step_guided / (load_labeled + load_unlabeled)}
    worst = min(ratios.values())
    return [figure(
        "data-loading throughput ÷ training consumption", worst, "×", f"≥ {GOAL} at num_workers={workers}",
        worst >= GOAL, ratios=ratios, num_workers=workers, clock="cpu" if workers == 0 else "wall",
        seconds_per_batch={"labeled": load_labeled, "unlabeled": load_unlabeled},
        seconds_per_step={"supervised": step_supervised, "guided": step_guided},
        wall_seconds_per_batch={"labeled": median(labeled_wall), "unlabeled": median(unlabeled_wall)},
    )]
