"""What the benchmarks share: figures, timing, a demo-like dataset and trainers of the demo model."""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "config.yaml"
# The guided demo runs log about 1.5 pseudo-labels per unlabelled image (train_log.jsonl).
PSEUDO_LABELS_PER_IMAGE = 1.5


def figure(name: str, value: float | None, unit: str, goal: str, met: bool | None, **details) -> dict:
    """One measured figure with its goal; ``details`` holds what it was computed from."""
    return {"figure": name, "value": None if value is None else float(value), "unit": unit, "goal": goal,
            "met": None if met is None else bool(met), "details": details}


def skipped(name: str, goal: str, reason: str) -> dict:
    return {"figure": name, "value": None, "unit": "", "goal": goal, "met": None, "skipped": reason, "details": {}}


class Clock:
    """Wall and CPU (this process) seconds of a block; CPU time is what a shared machine disturbs least."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def median(values: list[float]) -> float:
    return statistics.median(values)


def demo_config(**train_overrides) -> dict:
    """The demo config (config/config.yaml), validated, with ``train`` overrides."""
    from gdis.config import load_config

    config = load_config([DEMO_CONFIG])
    config["train"].update(train_overrides)
    return config


def demo_like_dataset(root: Path, num_train: int, num_val: int) -> Path:
    """A synthetic dataset drawn like the demo's (same generator settings), smaller; split 50 % labelled."""
    from gdis.splits import write_split
    from gdis.synthetic import SyntheticSpec, generate_synthetic_dataset

    if not (root / "split" / "manifest.json").exists():
        spec = dict(demo_config()["dataset"]["synthetic"], num_train=num_train, num_val=num_val)
        generate_synthetic_dataset(root / "dataset", SyntheticSpec(**spec))
        write_split(root / "dataset" / "annotations" / "train.json", root / "split", 50, 1, 0, "all")
    return root


def demo_trainer(root: Path, method: str, config: dict, teacher: Path | None = None):
    """A Trainer of the demo model on ``demo_like_dataset(root)``, as ``gdis train`` builds it."""
    from gdis.builder import RunFiles
    from gdis.trainer import Trainer

    files = RunFiles(labeled=root / "split" / "labeled.json", unlabeled=root / "split" / "unlabeled.json",
                     images=root / "dataset" / "train", teacher=teacher)
    return Trainer.from_files(copy.deepcopy(config), method, files, root / "runs" / method)


def pretrained_teacher(root: Path, config: dict) -> Path:
    """A supervised checkpoint to serve as the guided run's teacher (its weights are the initial ones)."""
    from gdis.checkpoint import save_checkpoint

    path = root / "teacher.pt"
    if not path.exists():
        save_checkpoint(path, **demo_trainer(root, "supervised", config)._state())
    return path


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()),
    }


def training_setup(root: Path, steps: int) -> tuple[dict, dict, list, float]:
    """Trainers of the demo model (supervised; guided with and without the shared backbone) and batches.

    The guided teacher is an untrained network, so its score threshold is lowered until it gives the
    demo's pseudo-label rate (``PSEUDO_LABELS_PER_IMAGE``); that load is what a guided step costs.
    Returns the config, the trainers, ``steps`` (labelled, unlabelled) batch pairs and that threshold.
    """
    import torch

    from gdis.augment import step_views_loader
    from gdis.data import to_float

    config = demo_config()
    torch.set_num_threads(config["train"]["threads"])
    demo_like_dataset(root, num_train=48, num_val=8)
    teacher = pretrained_teacher(root, config)
    trainers = {"supervised": demo_trainer(root, "supervised", config)}
    for name, shared in (("guided", True), ("guided, separate forwards", False)):
        trainers[name] = demo_trainer(root, "guided_distillation", demo_config(shared_backbone=shared), teacher)
        trainers[name]._load_pretrained_teacher()
    train = config["train"]
    labeled = list(step_views_loader(trainers["supervised"].parts.labeled, train["batch_size"], 0, 0, steps, 0))
    unlabeled = list(step_views_loader(trainers["guided"].parts.unlabeled, train["unlabeled_batch_size"], 1, 0, steps,
                                       0))
    scores = []
    for weak, _, _ in unlabeled[:4]:
        predictions = trainers["guided"].teacher.predict([to_float(view) for view in weak])
        scores.extend(float(s) for p in predictions for s in p["scores"])
    wanted = round(PSEUDO_LABELS_PER_IMAGE * 4 * train["unlabeled_batch_size"])
    threshold = sorted(scores, reverse=True)[min(wanted, len(scores) - 1)]
    for name in ("guided", "guided, separate forwards"):
        trainers[name].train["pseudo_label"]["score_threshold"] = threshold
    return config, trainers, list(zip(labeled, unlabeled)), threshold


def time_steps(trainers: dict, batches: list, warmup: int = 2) -> dict[str, dict]:
    """Per trainer: CPU and wall seconds of each training step, the trainers taking turns on the same batches.

    Taking turns spreads a shared machine's load changes over all trainers alike.
    """
    times = {name: {"cpu": [], "wall": [], "pseudo_labels_per_image": []} for name in trainers}
    for index, (labeled, unlabeled) in enumerate(batches):
        for name, trainer in trainers.items():
            with Clock() as clock:
                record = trainer.step(labeled, unlabeled)
            if index >= warmup:
                times[name]["cpu"].append(clock.cpu)
                times[name]["wall"].append(clock.wall)
                if "pseudo_labels_per_image" in record:
                    times[name]["pseudo_labels_per_image"].append(record["pseudo_labels_per_image"])
    return times


def copy_workflow(workdir: Path) -> None:
    """A fresh copy of the workflow (Snakefile, rules, configs, environment) to plan or run in."""
    for name in ("Snakefile", "workflow", "config", "environment.yml", "constraints.txt"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name)
        elif source.exists():
            shutil.copy(source, workdir / name)
