"""Transfer of the pre-trained tiny backbone: supervised mask AP on the demo from random vs pre-trained weights.

``python -m benchmarks.pretrain_transfer --work-dir DIR [--tasks segment segment:200:32 ...] [--cores 2]
[--mask-rcnn-iterations 200 300 500] [--mask2former-iterations 300] [--label-percents 5 10]``

In DIR: the demo dataset (``gdis synthesize``) and its splits (``gdis split``, fold 1); one backbone
per pretext task (``gdis.pretrain.pretrain_backbone``, timed with ``/usr/bin/time``); then supervised
runs (``gdis train`` + ``gdis evaluate``) of the demo's Mask R-CNN and of Mask2Former tiny
(config/networks/mask2former_tiny.yaml; lowest label percentage only) from random and from each
pre-trained backbone, ``--cores`` runs at a time, one thread each. A shorter schedule scales the demo's
warm-up (50) and LR step (415 of 500). Finished runs are kept, so a rerun only adds what is missing.
Prints a Markdown table and writes it, with every number, to DIR/pretrain_transfer.{md,json}.
The defaults (the default pretext, 14 supervised runs) take about 25 CPU-minutes; see docs/pretraining.md.

``python -m benchmarks.pretrain_transfer pretrain --config YAML ... --out WEIGHTS --record JSON``
runs only the pre-training (what ``gdis pretrain`` will do).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import DEMO_CONFIG, REPO
from gdis.config import format_percent, load_config
from gdis.io import write_json, write_text

NETWORK_PRESETS = {arch: REPO / "config" / "networks" / f"{arch}_tiny.yaml" for arch in ("mask_rcnn", "mask2former")}
RANDOM = "random"


def gdis(workdir: Path, log: Path, *args: str) -> None:
    """``gdis ARGS`` of this checkout, run in ``workdir`` (where the dataset's relative paths lead)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") as handle:
        subprocess.run([sys.executable, "-m", "gdis.cli", *args], cwd=workdir, stdout=handle, stderr=subprocess.STDOUT,
                       check=True, env=env)


def prepare(workdir: Path, percents: list[float]) -> None:
    """The demo's dataset and splits (fold 1), as the workflow's synthesize and split rules make them."""
    if not (workdir / "data" / "shapes" / "annotations" / "val.json").exists():
        gdis(workdir, workdir / "prepare.log", "synthesize", "--config", str(DEMO_CONFIG), "--out-dir", "data/shapes")
    for percent in percents:
        split_dir = workdir / "splits" / f"{format_percent(percent)}pct"
        if not (split_dir / "manifest.json").exists():
            gdis(workdir, workdir / "prepare.log", "split", "--config", str(DEMO_CONFIG), "--annotations",
                 "data/shapes/annotations/train.json", "--images", "data/shapes/train", "--label-percent",
                 str(percent), "--fold", "1", "--out-dir", str(split_dir))


def pretrain(workdir: Path, variant: str) -> dict:
    """The backbone pre-trained for ``variant`` (a pretext task, optionally :STEPS[:BATCH_SIZE]) and its timing."""
    task, *sizes = variant.split(":")
    settings = {"task": task, **{key: int(value) for key, value in zip(("steps", "batch_size"), sizes)}}
    out = workdir / "pretrain" / f"{variant.replace(':', '_')}.pt"
    record = out.with_suffix(".json")
    if not record.exists():
        overrides = out.with_suffix(".yaml")
        write_text(overrides, json.dumps({"pretrain": settings}))
        timing = out.with_suffix(".time")
        subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), sys.executable, "-m", "benchmarks.pretrain_transfer",
                        "pretrain", "--config", str(DEMO_CONFIG), str(overrides), "--out", str(out),
                        "--record", str(record)], cwd=REPO, check=True)
    found = json.loads(record.read_text())
    timing = dict(line.strip().rsplit(": ", 1) for line in out.with_suffix(".time").read_text().splitlines()
                  if ": " in line)
    return {"task": variant, "weights": str(out), "steps": found["steps"], "seconds": found["seconds"],
            "seconds_generating": found["seconds_generating"],
            **{key: value for key, value in found.items() if key.startswith("heldout_")},
            "wall": timing["Elapsed (wall clock) time (h:mm:ss or m:ss)"],
            "user_seconds": float(timing["User time (seconds)"]),
            "max_rss_kb": int(timing["Maximum resident set size (kbytes)"])}


def train_and_evaluate(workdir: Path, arch: str, init: str, weights: str | None, percent: float,
                       iterations: int) -> dict:
    """One supervised run of the demo config with ``iterations`` steps, from ``weights``, and its val mask AP."""
    name = f"{arch}_{init}_{format_percent(percent)}pct_{iterations}it"
    run_dir = workdir / "runs" / name
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        scale = iterations / 500  # the demo's schedule: 500 steps, warm-up 50, LR step at 415
        overrides = {"methods": ["supervised"], "model": {"backbone_weights": weights},
                     "train": {"iterations": iterations, "warmup_iterations": round(50 * scale),
                               "lr_steps": [round(415 * scale)], "burn_in": round(440 * scale)}}
        configs = [str(DEMO_CONFIG), str(NETWORK_PRESETS[arch])]
        write_text(run_dir / "overrides.yaml", json.dumps(overrides))
        configs.append(str(run_dir / "overrides.yaml"))
        log = run_dir / "run.log"
        split_dir = workdir / "splits" / f"{format_percent(percent)}pct"
        gdis(workdir, log, "train", "--config", *configs, "--method", "supervised", "--label-percent", str(percent),
             "--fold", "1", "--labeled", str(split_dir / "labeled.json"), "--unlabeled",
             str(split_dir / "unlabeled.json"), "--images", "data/shapes/train", "--out-dir", str(run_dir))
        gdis(workdir, log, "evaluate", "--config", *configs, "--checkpoint", str(run_dir / "model_final.pt"),
             "--run-record", str(run_dir / "run.json"), "--annotations", "data/shapes/annotations/val.json",
             "--images", "data/shapes/val", "--predictions-dir", str(run_dir / "predictions"), "--metrics", str(metrics))
    found = json.loads(metrics.read_text())["student"]
    record = json.loads((run_dir / "run.json").read_text())
    return {"arch": arch, "init": init, "label_percent": percent, "iterations": iterations,
            "mask_AP": found["mask_AP"], "box_AP": found["box_AP"], "train_seconds": record["seconds"]}


def markdown(pretrained: list[dict], rows: list[dict]) -> str:
    lines = ["| pretext task | held-out loss | held-out accuracy | seconds (in-process) | user CPU s | wall |",
             "|---|---:|---:|---:|---:|---:|"]
    for p in pretrained:
        lines.append(f"| {p['task']} | {p['heldout_loss']:.3f} | {p['heldout_accuracy']:.3f} | {p['seconds']:.0f} "
                     f"| {p['user_seconds']:.0f} | {p['wall']} |")
    inits = list(dict.fromkeys(row["init"] for row in rows))
    lines += ["", "| arch | label % | steps | " + " | ".join(f"mask AP, {init}" for init in inits) + " |",
              "|---|---:|---:|" + "---:|" * len(inits)]
    keys = sorted({(r["arch"], r["label_percent"], r["iterations"]) for r in rows})
    for arch, percent, iterations in keys:
        cells = []
        for init in inits:
            found = [r for r in rows if (r["arch"], r["label_percent"], r["iterations"], r["init"])
                     == (arch, percent, iterations, init)]
            cells.append(f"{found[0]['mask_AP']:.1f}" if found else "")
        lines.append(f"| {arch} | {format_percent(percent)} | {iterations} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep(args) -> int:
    workdir = args.work_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir, args.label_percents)
    pretrained = [pretrain(workdir, task) for task in args.tasks]
    inits = [(RANDOM, None)] + [(p["task"], p["weights"]) for p in pretrained]
    runs = [("mask_rcnn", init, weights, percent, iterations) for iterations in args.mask_rcnn_iterations
            for percent in args.label_percents for init, weights in inits]
    runs += [("mask2former", init, weights, min(args.label_percents), iterations)
             for iterations in args.mask2former_iterations for init, weights in inits]
    with ThreadPoolExecutor(max_workers=args.cores) as pool:
        rows = list(pool.map(lambda run: train_and_evaluate(workdir, *run), runs))
    table = markdown(pretrained, rows)
    write_json(workdir / "pretrain_transfer.json", {"pretrained": pretrained, "runs": rows}, indent=1)
    write_text(workdir / "pretrain_transfer.md", table)
    print(table)
    return 0


def pretrain_command(args) -> int:
    import logging

    from gdis.pretrain import pretrain_backbone

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pretrain_backbone(load_config(args.config), Path(args.out), Path(args.record))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pretrain"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_transfer pretrain")
        parser.add_argument("--config", nargs="+", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--record", required=True)
        return pretrain_command(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--tasks", nargs="*", default=["segment"],
                        help="pretext tasks (pretrain.task), each optionally :STEPS[:BATCH_SIZE]")
    parser.add_argument("--label-percents", type=float, nargs="+", default=[5, 10])
    parser.add_argument("--mask-rcnn-iterations", type=int, nargs="*", default=[200, 300, 500])
    parser.add_argument("--mask2former-iterations", type=int, nargs="*", default=[300])
    parser.add_argument("--cores", type=int, default=2)
    return sweep(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
