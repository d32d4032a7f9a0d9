"""Figure 1: guided-distillation step time ÷ supervised step time, demo model, same labelled batch.

A guided step adds a teacher forward and a student forward-backward on as many unlabelled images,
about 2.33× a supervised step by counting passes. Data loading is left out (see data_loading).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import figure, median, time_steps, training_setup

GOAL = 2.45
STEPS = 14


def run(workdir: Path) -> list[dict]:
    config, trainers, batches, threshold = training_setup(workdir, STEPS)
    times = time_steps(trainers, batches)
    cpu = {name: median(t["cpu"]) for name, t in times.items()}
    wall = {name: median(t["wall"]) for name, t in times.items()}
    ratio = cpu["guided"] / cpu["supervised"]
    plain_ratio = cpu["guided, separate forwards"] / cpu["supervised"]
    details = {
        "median_cpu_seconds_per_step": cpu, "median_wall_seconds_per_step": wall,
        "wall_ratio": wall["guided"] / wall["supervised"], "ratio_with_separate_forwards": plain_ratio,
        "pseudo_labels_per_image": median(times["guided"]["pseudo_labels_per_image"]),
        "teacher_score_threshold": threshold,
        "steps_timed": STEPS - 2, "batch": f"{config['train']['batch_size']} labelled + "
                                          f"{config['train']['unlabeled_batch_size']} unlabelled",
        "threads": config["train"]["threads"],
    }
    return [
        figure("guided ÷ supervised step time (CPU, demo model)", ratio, "×", f"≤ {GOAL}", ratio <= GOAL, **details),
        figure("the same with separate student forwards", plain_ratio, "×", f"≤ {GOAL}", plain_ratio <= GOAL),
    ]
