"""Figure 5: planning overhead of the paper's COCO matrix: Snakemake dry-run time and ``dvc status`` time.

The matrix: 5 label percentages × 5 folds × 3 methods × each architecture gdis offers, on a
synthetic source (planning reads no images). One dry run per architecture, on a fresh copy of the
workflow; the figure is their sum. Both figures are CPU seconds of the commands (on a quiet machine
about their wall time; on a shared one, wall time mostly measures the other jobs). ``dvc status`` runs on a copy of the repository when it has a
``dvc.yaml`` and DVC is installed.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from benchmarks._common import REPO, copy_workflow, figure, skipped

GOAL_SECONDS = 10
PAPER_PERCENTS = [0.4, 1, 2, 5, 10]
PAPER_FOLDS = [1, 2, 3, 4, 5]


def _timed(command: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU (of the child processes) seconds of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), result


# One tiny-backbone network per architecture, so the matrix plans on a machine without weights.
MATRIX_NETWORKS = ["mask_rcnn_tiny", "mask2former_tiny"]


def paper_matrix_config() -> dict:
    return {
        "dataset": {"name": "coco_plan", "source": "synthetic"},
        "splits": {"label_percents": PAPER_PERCENTS, "folds": PAPER_FOLDS, "include_full": False},
        "methods": ["supervised", "standard_burnin", "guided_distillation"],
        "networks": MATRIX_NETWORKS,
    }


def snakemake_dry_run(workdir: Path) -> dict:
    copy_workflow(workdir)
    config = workdir / "plan.yaml"
    config.write_text(yaml.safe_dump(paper_matrix_config()))
    wall, cpu, result = _timed(["snakemake", "-n", "--cores", "2", "--configfile", config.name], workdir)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed:\n{result.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.MULTILINE)
    return figure("Snakemake dry run of the paper matrix", cpu, "s CPU", f"< {GOAL_SECONDS} s", cpu < GOAL_SECONDS,
                  wall_seconds=wall, jobs_planned=int(total.group(1)) if total else 0, networks=MATRIX_NETWORKS,
                  label_percents=PAPER_PERCENTS, folds=PAPER_FOLDS)


def dvc_status(workdir: Path) -> dict:
    name, goal = "dvc status", f"< {GOAL_SECONDS} s"
    if not (REPO / "dvc.yaml").exists():
        return skipped(name, goal, "this checkout has no dvc.yaml")
    if shutil.which("dvc") is None:
        return skipped(name, goal, "dvc is not installed")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    copy = workdir / "repository"
    for relative in tracked.splitlines():
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / relative).is_file():
            shutil.copy2(REPO / relative, target)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    seconds, cpu_seconds, result = _timed(["dvc", "status"], copy)
    if result.returncode != 0:
        raise RuntimeError(f"dvc status failed:\n{result.stderr[-2000:]}")
    return figure(name, cpu_seconds, "s CPU", goal, cpu_seconds < GOAL_SECONDS, wall_seconds=seconds,
                  note="the stages dvc.yaml defines, on a fresh copy of the repository")


def run(workdir: Path) -> list[dict]:
    (workdir / "snakemake").mkdir()
    (workdir / "dvc").mkdir()
    return [snakemake_dry_run(workdir / "snakemake"), dvc_status(workdir / "dvc")]
