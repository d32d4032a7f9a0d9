"""Seconds per training iteration of Mask2Former, supervised and guided, measured with the real trainer.

Generates a small copy of the built-in dataset, draws a split, trains a supervised run (also the
teacher), then a guided-distillation run whose every step pseudo-labels an unlabelled batch with that
teacher. Prints, per method, the median wall-clock and CPU seconds of the timed steps (the first
``--warmup`` steps are left out). Config files are merged as in the workflow; the default is the
demo config with the tiny CPU preset:

    python -m benchmarks.mask2former_step_time [--config FILE ...] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gdis.config import deep_merge, load_config, validate_config
from gdis.builder import RunFiles
from gdis.splits import write_split
from gdis.synthetic import SyntheticSpec, generate_synthetic_dataset
from gdis.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


class TimedTrainer(Trainer):
    """The trainer, recording the wall-clock and CPU seconds of each step."""

    def step(self, labeled_batch, unlabeled_batch) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        record = super().step(labeled_batch, unlabeled_batch)
        self.timings.append((time.perf_counter() - wall, time.process_time() - cpu))
        return record


def time_method(config: dict, method: str, split_dir: Path, images: Path, out_dir: Path, teacher: Path | None):
    files = RunFiles(labeled=split_dir / "labeled.json", unlabeled=split_dir / "unlabeled.json", images=images,
                     teacher=teacher)
    trainer = TimedTrainer.from_files(config, method, files, out_dir)
    trainer.timings = []
    trainer.run()
    return trainer.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", nargs="+", metavar="YAML", help="config files, merged in order",
                        default=[str(REPO / "config" / "config.yaml"),
                                 str(REPO / "config" / "networks" / "mask2former_tiny.yaml")])
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per method")
    parser.add_argument("--label-percent", type=float, default=5.0)
    args = parser.parse_args()

    iterations = args.steps + args.warmup
    config = validate_config(deep_merge(load_config(args.config), {
        # Every step of the guided run uses the pre-trained teacher: burn-in after the last step.
        "train": {"iterations": iterations + 1, "burn_in": iterations, "lr_steps": [], "checkpoint_period": 10**6,
                  "log_period": 10**6},
    }))
    torch.set_num_threads(config["train"]["threads"])
    results = {"threads": config["train"]["threads"], "torch_threads": torch.get_num_threads(),
               "arch": config["model"]["arch"], "backbone": config["model"]["backbone"],
               "batch_size": config["train"]["batch_size"], "unlabeled_batch_size": config["train"]["unlabeled_batch_size"],
               "image_size": config["dataset"]["synthetic"]["image_size"], "timed_steps": args.steps}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        root = Path(scratch)
        generate_synthetic_dataset(root / "data", SyntheticSpec(**{**config["dataset"]["synthetic"], "num_train": 80, "num_val": 1}))
        split_dir = root / "split"
        write_split(root / "data" / "annotations" / "train.json", split_dir, args.label_percent, 1,
                    config["splits"]["seed"], config["splits"]["unlabeled"])
        images = root / "data" / "train"
        supervised = time_method(config, "supervised", split_dir, images, root / "supervised", None)
        guided = time_method(config, "guided_distillation", split_dir, images, root / "guided",
                             root / "supervised" / "model_final.pt")
    for name, timings in (("supervised", supervised), ("guided_distillation", guided)):
        timed = timings[args.warmup: args.warmup + args.steps]
        results[name] = {"wall_seconds_per_step": round(statistics.median(t[0] for t in timed), 3),
                         "cpu_seconds_per_step": round(statistics.median(t[1] for t in timed), 3)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
