"""Seeds and burn-ins: the guided student's mask AP for each training seed and ``train.burn_in``, against supervised.

``python -m benchmarks.burn_in_sweep --work-dir DIR [--seeds 0 1] [--burn-ins B ...] [--label-percents 5 10]``

Runs the demo workflow (config/config.yaml plus the overrides) in one copy per seed, ``--cores`` seeds
at a time: the supervised teachers once, then guided distillation once per burn-in (its outputs are
moved aside between burn-ins). Prints a Markdown table and writes it, with every number, to DIR/burn_in_sweep.{md,json}.
A guided run of the demo is about 5 CPU-minutes, a supervised one about 2.5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import DEMO_CONFIG, copy_workflow
from gdis.config import format_percent, load_config
from gdis.io import write_json, write_text

SUPERVISED, GUIDED = "supervised", "guided_distillation"


def run_results(config: dict, kind: str, method: str, percent: float) -> Path:
    """A run's folder under results/<kind> ("eval" or "models"), as the workflow names it."""
    return (Path("results") / kind / config["dataset"]["name"] / config["networks"][0] / method
            / f"{format_percent(percent)}pct" / f"fold{config['splits']['folds'][0]}")


def snakemake(workdir: Path, targets: list[Path], overrides: Path, cores: int) -> None:
    """Make ``targets``; outputs already there are kept even though the burn-in parameter changed."""
    command = ["snakemake", "--cores", str(cores), *map(str, targets), "--rerun-triggers", "mtime",
               "--configfile", "config/config.yaml", overrides.name]
    with open(workdir / "snakemake.log", "a") as log:
        subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, check=True)


def mask_ap(workdir: Path, directory: Path, model: str = "student") -> float:
    return json.loads((workdir / directory / "metrics.json").read_text())[model]["mask_AP"]


def sweep_seed(root: Path, config: dict, seed: int, burn_ins: list[int], percents: list[float]) -> list[dict]:
    """One seed's runs, in order, on one core: supervised teachers first, then guided once per burn-in."""
    workdir = root / f"seed{seed}"
    if not (workdir / "Snakefile").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        copy_workflow(workdir)
    supervised = [run_results(config, "eval", SUPERVISED, p) / "metrics.json" for p in percents]
    rows = []
    for burn_in in burn_ins:
        overrides = workdir / f"burn_in_{burn_in}.yaml"
        write_text(overrides, json.dumps({"train": {"seed": seed, "burn_in": burn_in}, "report": {"after_run": False}}))
        guided = [run_results(config, "eval", GUIDED, p) / "metrics.json" for p in percents]
        snakemake(workdir, supervised + guided, overrides, cores=1)
        for percent in percents:
            guided_dir = run_results(config, "eval", GUIDED, percent)
            rows.append({"seed": seed, "burn_in": burn_in, "label_percent": percent,
                         "supervised": mask_ap(workdir, run_results(config, "eval", SUPERVISED, percent)),
                         "guided_student": mask_ap(workdir, guided_dir),
                         "guided_ema_teacher": mask_ap(workdir, guided_dir, "ema_teacher")})
            for directory in (guided_dir, run_results(config, "models", GUIDED, percent)):  # make room for the next burn-in
                shutil.move(workdir / directory, workdir / f"{directory}_burn_in_{burn_in}")
    return rows


def sweep(root: Path, seeds: list[int], burn_ins: list[int], percents: list[float], cores: int) -> list[dict]:
    """All seeds, ``cores`` of them at a time (a training job uses one core)."""
    config = load_config([DEMO_CONFIG])
    with ThreadPoolExecutor(max_workers=cores) as pool:
        per_seed = pool.map(lambda seed: sweep_seed(root, config, seed, burn_ins, percents), seeds)
        return [row for rows in per_seed for row in rows]


def markdown(rows: list[dict]) -> str:
    lines = ["| label % | seed | burn_in | supervised | guided student | guided EMA teacher | student − supervised |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: (r["label_percent"], r["burn_in"], r["seed"])):
        lines.append(f"| {format_percent(row['label_percent'])} | {row['seed']} | {row['burn_in']} "
                     f"| {row['supervised']:.1f} | {row['guided_student']:.1f} | {row['guided_ema_teacher']:.1f} "
                     f"| {row['guided_student'] - row['supervised']:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.burn_in_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--burn-ins", type=int, nargs="+", help="default: the demo's train.burn_in")
    parser.add_argument("--label-percents", type=float, nargs="+", default=[5, 10])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    burn_ins = args.burn_ins or [load_config([DEMO_CONFIG])["train"]["burn_in"]]
    rows = sweep(args.work_dir.resolve(), args.seeds, burn_ins, args.label_percents, args.cores)
    table = markdown(rows)
    write_json(args.work_dir / "burn_in_sweep.json", rows)
    write_text(args.work_dir / "burn_in_sweep.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
