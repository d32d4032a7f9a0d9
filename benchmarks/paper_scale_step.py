"""Proof that the paper-scale path runs, on the CPU: 2 supervised and 2 guided-distillation steps of each paper plan.

For each plan (COCO Mask2Former R50, COCO Mask2Former DINOv2-L, Cityscapes Mask2Former R50, ADE20K Mask2Former
R50) the plan's own config (``gdis.plans.Plans``: config.yaml + config/datasets/<dataset>.yaml +
config/networks/<network>.yaml + one user file) builds the model, the views and the optimiser through
``Trainer.from_files`` (``gdis.builder.build_run``), from backbone weight files this script writes itself in
the caches' layout (random tensors under the published files' names and shapes, in a scratch TORCH_HOME and
HF_HOME), on a generated COCO-format dataset with the plan's image size, format and categories. The user file
changes the batch (1 labelled + 1 unlabelled image), the loader (``train.num_workers: 0``: the views are made
in the training process and their time is reported apart) and ``train.threads`` (2); everything else is the
plan's: crops, bf16 autocast, 100 queries, 12,544 points, the optimiser groups and schedule. The guided run's
teacher is the supervised trainer's state, saved with ``gdis.checkpoint.save_checkpoint`` as
``gdis train --method supervised`` saves model_final.pt.

Each plan runs in its own process (under ``nice -n 19``), so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the largest resident set the process ever had) is its own.

    python -m benchmarks paper_scale_step                      # all four plans, with the runner's JSON record
    python -m benchmarks.paper_scale_step [--plan coco:mask2former_r50 ...] [--work-dir DIR] [--json FILE]
    python -m benchmarks.paper_scale_step --breakdown --plan coco:mask2former_r50   # where one view's memory goes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import REPO, figure, machine

PLANS = (("coco", "mask2former_r50"), ("coco", "mask2former_dinov2_vitl"), ("cityscapes", "mask2former_r50"),
         ("ade20k", "mask2former_r50"))
STEPS = 2
# Networks whose backbone recomputes its activations in the backward pass here (torch.utils.checkpoint through
# transformers' activation checkpointing; the same gradients, one more backbone forward): DINOv2 ViT-L keeps
# ~5 GiB of activations per 1024 x 1024 image (measured: 4096 tokens, 24 layers, bf16, SDPA attention), so the
# guided step's 2 student images need ~20 GiB, more than these 24 GiB machines can give one job.
CHECKPOINTED_NETWORKS = ("mask2former_dinov2_vitl",)
THREADS = 2
NUM_IMAGES = 4  # half of them labelled; all of them unlabelled, as the plans' `splits.unlabeled: all`
# COCO 2017's 80 thing category ids: 1-90 without the ten ids the 2014 paper listed but never annotated.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


@dataclass(frozen=True)
class DatasetLook:
    """What a generated stand-in for a dataset shares with the real one: image size, file format, categories."""

    height: int
    width: int
    suffix: str
    category_ids: tuple[int, ...]


def dataset_looks() -> dict[str, DatasetLook]:
    from gdis import ade20k, cityscapes

    return {
        "coco": DatasetLook(480, 640, ".jpg", COCO_CATEGORY_IDS),  # COCO's most common size
        "cityscapes": DatasetLook(1024, 2048, ".png", tuple(sorted(cityscapes.INSTANCE_CLASSES))),
        "ade20k": DatasetLook(512, 683, ".jpg", tuple(sorted(i for i, _ in ade20k.INSTANCE_CLASSES))),  # typical
    }


def generate_dataset(root: Path, look: DatasetLook, num_images: int, seed: int = 0) -> Path:
    """``num_images`` images of random polygons on a smooth background, in COCO format; returns the annotations."""
    import numpy as np
    from PIL import Image, ImageDraw

    images_dir = root / "train"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": c, "name": f"category {c}"} for c in look.category_ids]}
    height, width = look.height, look.width
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            centre = rng.uniform((0, 0), (width, height))
            radius = rng.uniform(0.03, 0.25) * min(height, width)
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))))
            points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
            points = points.clip((0, 0), (width - 1, height - 1))
            draw.polygon([tuple(p) for p in points], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id,
                "category_id": int(rng.choice(look.category_ids)), "iscrowd": 0,
                "segmentation": [points.flatten().round(2).tolist()],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float((x1 - x0) * (y1 - y0))})
        name = f"{image_id:012d}{look.suffix}"
        image.save(images_dir / name, **({"quality": 90} if look.suffix == ".jpg" else {}))
        coco["images"].append({"id": image_id, "file_name": name, "height": height, "width": width})
    annotations = root / "annotations" / "train.json"
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps(coco))
    return annotations


# -- backbone weights in the caches' layout ---------------------------------------------------------------
def write_torchvision_resnet50(torch_home: Path, seed: int = 0) -> Path:
    """A random torchvision ResNet-50 under the ImageNet file's name in the TORCH_HOME cache."""
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    path = torch_home / "hub" / "checkpoints" / ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(resnet50().state_dict(), path)
    return path


def write_hub_dinov2_large(hf_home: Path, seed: int = 0) -> Path:
    """A random transformers Dinov2Model with facebook/dinov2-large's config, saved with save_pretrained into a
    snapshot of the HF_HOME hub cache (refs/main names the snapshot), as ``hf download`` leaves it."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    # facebook/dinov2-large's config.json: ViT-L/14 at 518 px, layer scale 1.0, MLP ratio 4.
    config = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
                          image_size=518, layerscale_value=1.0)
    revision = "0" * 40
    repo = hf_home / "hub" / "models--facebook--dinov2-large"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(snapshot)
    return snapshot


def write_backbone_weights(backbone: str, torch_home: Path, hf_home: Path) -> Path:
    if backbone == "resnet50":
        return write_torchvision_resnet50(torch_home)
    if backbone == "dinov2_vitl14":
        return write_hub_dinov2_large(hf_home)
    raise ValueError(f"no published-weights stand-in for backbone {backbone!r}")


# -- one plan ----------------------------------------------------------------------------------------------
def plan_config(dataset: str, network: str, user_file: Path) -> dict:
    """The plan's validated config (Plans, as the workflow builds it) with the batch, loader and threads of
    this benchmark from ``user_file``."""
    import yaml

    from gdis.plans import Plans

    networks = list(dict.fromkeys(network for name, network in PLANS if name == dataset))
    user_file.write_text(yaml.safe_dump({
        "networks": networks,
        "train": {"batch_size": 1, "unlabeled_batch_size": 1, "num_workers": 0, "threads": THREADS},
    }))
    return copy.deepcopy(Plans([str(user_file)], default=str(REPO / "config" / "config.yaml")).config(dataset, network))


def parameter_counts(model) -> dict[str, int]:
    backbone = {id(p) for p in model.backbone_parameters()}
    parameters = list(model.parameters())
    return {"total": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
            "backbone": sum(p.numel() for p in parameters if id(p) in backbone)}


def timed_steps(trainer, labeled, unlabeled, steps: int) -> list[dict]:
    """Wall and CPU seconds of loading each step's views (in this process) and of the step itself."""
    times = []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        labeled_batch, unlabeled_batch = next(labeled), next(unlabeled, None)
        loaded_wall, loaded_cpu = time.perf_counter(), time.process_time()
        record = trainer.step(labeled_batch, unlabeled_batch)
        times.append({"load_wall_s": loaded_wall - wall, "load_cpu_s": loaded_cpu - cpu,
                      "step_wall_s": time.perf_counter() - loaded_wall, "step_cpu_s": time.process_time() - loaded_cpu,
                      "loss": record.get("loss"), "pseudo_labels_per_image": record.get("pseudo_labels_per_image"),
                      "view_shape": list(labeled_batch[0][0].shape)})
    return times


def loaders(trainer, steps: int):
    """The trainer's labelled and unlabelled batches of its first ``steps`` steps, as ``Trainer.run`` draws them."""
    from gdis.augment import step_views_loader, views_loader
    from gdis.sampling import labeled_batch_sampler

    parts, train = trainer.parts, trainer.train
    image_ids = [image["id"] for image in parts.labeled.images.images]
    sampler = labeled_batch_sampler(train["labeled_sampler"], trainer.method, parts.labeled_coco, image_ids,
                                    train["batch_size"], train["seed"], 0, steps)
    labeled = iter(views_loader(parts.labeled, sampler, train["num_workers"]))
    unlabeled = iter(())
    if parts.unlabeled is not None:
        unlabeled = iter(step_views_loader(parts.unlabeled, train["unlabeled_batch_size"], train["seed"] + 1, 0, steps,
                                           train["num_workers"]))
    return labeled, unlabeled


def enable_activation_checkpointing(model) -> None:
    """transformers' activation checkpointing of each layer of the model's transformer backbone (non-reentrant)."""
    body = model.backbone.body
    enable = getattr(body, "activation_checkpointing_enable", None)  # gradient_checkpointing_enable before 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def measure_plan(dataset: str, network: str, workdir: Path, steps: int = STEPS,
                 activation_checkpointing: bool = False) -> dict:
    """Build the plan's runs in this process and time ``steps`` supervised and ``steps`` guided steps.

    Sets TORCH_HOME and HF_HOME to folders under ``workdir`` (this process's environment): call it in a
    process of its own.
    """
    import torch

    from gdis.builder import RunFiles
    from gdis.checkpoint import TRAINING_STATE, save_checkpoint
    from gdis.splits import write_split
    from gdis.trainer import Trainer

    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_HOME"], os.environ["HF_HOME"] = str(workdir / "torch"), str(workdir / "huggingface")
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    config = plan_config(dataset, network, workdir / "benchmark.yaml")
    torch.set_num_threads(config["train"]["threads"])
    look = dataset_looks()[dataset]
    annotations = generate_dataset(workdir / "data", look, NUM_IMAGES)
    write_split(annotations, workdir / "split", 50, 1, 0, "all")
    weights = write_backbone_weights(config["model"]["backbone"], workdir / "torch", workdir / "huggingface")
    files = RunFiles(labeled=workdir / "split" / "labeled.json", unlabeled=workdir / "split" / "unlabeled.json",
                     images=workdir / "data" / "train")

    started = time.perf_counter()
    supervised = Trainer.from_files(config, "supervised", files, workdir / "supervised")
    build_s = time.perf_counter() - started
    if activation_checkpointing:
        enable_activation_checkpointing(supervised.student)
    counts = parameter_counts(supervised.student)
    supervised_times = timed_steps(supervised, *loaders(supervised, steps), steps)
    teacher = workdir / "teacher.pt"
    state = supervised._state()
    for key in TRAINING_STATE:  # as Trainer._finish writes model_final.pt, the guided run's --teacher
        state.pop(key)
    save_checkpoint(teacher, **state)
    del supervised, state

    guided_files = RunFiles(labeled=files.labeled, unlabeled=files.unlabeled, images=files.images,
                            hidden_annotations=annotations, teacher=teacher)
    guided = Trainer.from_files(config, "guided_distillation", guided_files, workdir / "guided")
    if activation_checkpointing:
        enable_activation_checkpointing(guided.student)  # the teacher runs without gradients: nothing to keep
    guided._load_pretrained_teacher()  # as Trainer.run does before burn-in
    guided_times = timed_steps(guided, *loaders(guided, steps), steps)
    return {
        "dataset": dataset, "network": network, "backbone": config["model"]["backbone"],
        "image_size": [look.height, look.width], "num_categories": len(look.category_ids),
        "views": config["train"]["augment"]["geometry"], "precision": config["train"]["precision"],
        "num_queries": config["model"]["mask2former"]["num_queries"],
        "train_num_points": config["model"]["mask2former"]["train_num_points"],
        "batch": [config["train"]["batch_size"], config["train"]["unlabeled_batch_size"]],
        "num_workers": config["train"]["num_workers"], "torch_threads": torch.get_num_threads(),
        "attn_implementation": attention_implementation(guided.student),
        "activation_checkpointing": activation_checkpointing,
        "backbone_weights_file": str(weights), "build_s": build_s, "parameters": counts,
        "supervised": supervised_times, "guided": guided_times,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
    }


def attention_implementation(model) -> str | None:
    """The attention kernel of a transformers backbone (None for a CNN)."""
    config = getattr(getattr(model.backbone, "body", None), "config", None)
    return getattr(config, "_attn_implementation", None)


# -- where a step's memory goes -----------------------------------------------------------------------------
def resident_gib() -> float:
    """This process's resident memory now (Linux: /proc/self/statm), GiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def memory_breakdown(dataset: str, network: str, workdir: Path) -> list[tuple[str, float, float]]:
    """Resident memory (GiB) after each part of the plan's network runs forward on one view of the plan's crop
    size (random backbone weights, bf16 autocast as the plan), then after the backward pass: (part, RSS, growth).

    What the forward adds is, to a good approximation, what autograd keeps for the backward pass.
    """
    import torch

    from gdis.models import build_model

    config = plan_config(dataset, network, workdir / "benchmark.yaml")
    torch.set_num_threads(config["train"]["threads"])
    model = build_model({**config["model"], "backbone_weights": None,
                         "norm": "frozen" if config["model"]["norm"] == "auto" else config["model"]["norm"]},
                        len(dataset_looks()[dataset].category_ids))
    geometry = config["train"]["augment"]["geometry"]
    height, width = geometry["target_size"] if geometry["kind"] == "large_scale_jitter" else geometry["crop_size"]
    marks = []

    def mark(name: str) -> None:
        marks.append((name, resident_gib()))

    pixel_level = model.net.model.pixel_level_module
    parts = {"backbone": pixel_level.encoder, "pixel decoder: deformable-attention encoder": pixel_level.decoder.encoder,
             "pixel decoder: the rest": pixel_level.decoder, "transformer decoder": model.net.model.transformer_module}
    for name, module in parts.items():
        module.register_forward_hook(lambda module, inputs, output, name=name: mark(name))
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float()
    masks = torch.zeros((5, height, width), dtype=torch.uint8)
    for index in range(5):
        masks[index, index * height // 8: (index + 3) * height // 8, width // 8: width // 2] = 1
    target = {"masks": masks, "labels": torch.arange(1, 6)}
    mark("start")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config["train"]["precision"] == "bf16"):
        losses = model.losses([image], [target])
    mark("loss")
    sum(losses.values()).backward()
    mark("after backward")
    return [(name, rss, rss - previous) for (name, rss), (_, previous) in zip(marks, [marks[0]] + marks[:-1])]


# -- all plans, each in its own process ---------------------------------------------------------------------
def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summary_row(result: dict) -> dict:
    """One table row: mean seconds per step (wall and CPU), peak memory, parameter counts (millions)."""
    checkpointing = ", backbone activations recomputed" if result["activation_checkpointing"] else ""
    row = {"plan": f"{result['dataset']} {result['network']}{checkpointing}"}
    for method in ("supervised", "guided"):
        row[f"{method}_wall_s"] = mean([t["step_wall_s"] for t in result[method]])
        row[f"{method}_cpu_s"] = mean([t["step_cpu_s"] for t in result[method]])
        row[f"{method}_load_s"] = mean([t["load_wall_s"] for t in result[method]])
    row["peak_rss_gib"] = result["peak_rss_gib"]
    row.update({f"{name}_M": count / 1e6 for name, count in result["parameters"].items()})
    return row


def run_plan_process(dataset: str, network: str, workdir: Path, steps: int = STEPS,
                     full_activations: bool = False) -> dict:
    """``measure_plan`` in a child process at the lowest priority; its result, or its failure as an exception."""
    out = workdir / f"{dataset}_{network}.json"
    command = ["nice", "-n", "19", sys.executable, "-m", "benchmarks.paper_scale_step", "--plan",
               f"{dataset}:{network}", "--work-dir", str(workdir / f"{dataset}_{network}"), "--json", str(out),
               "--steps", str(steps), "--in-process"] + (["--full-activations"] if full_activations else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{dataset} {network} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    measured = json.loads(out.read_text())[0]
    measured["process_wall_s"] = time.perf_counter() - started
    return measured


def format_table(rows: list[dict]) -> str:
    lines = ["| plan | s/step supervised (wall / CPU) | s/step guided (wall / CPU) | peak RSS | parameters "
             "(total / trainable / backbone) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['plan']} | {row['supervised_wall_s']:.1f} / {row['supervised_cpu_s']:.1f} | "
                     f"{row['guided_wall_s']:.1f} / {row['guided_cpu_s']:.1f} | {row['peak_rss_gib']:.1f} GiB | "
                     f"{row['total_M']:.1f} M / {row['trainable_M']:.1f} M / {row['backbone_M']:.1f} M |")
    return "\n".join(lines)


def run(workdir: Path) -> list[dict]:
    """The runner's entry (``python -m benchmarks paper_scale_step``): every plan, a figure per plan and method."""
    figures = []
    for dataset, network in PLANS:
        try:
            result = run_plan_process(dataset, network, workdir)
        except RuntimeError as error:
            figures.append({"figure": f"paper-scale step, {dataset} {network}", "value": None, "unit": "", "goal":
                            "2 supervised + 2 guided steps complete", "met": False, "error": str(error), "details": {}})
            continue
        row = summary_row(result)
        for method in ("supervised", "guided"):
            figures.append(figure(f"paper-scale {method} step, {dataset} {network}, batch 1+1, CPU",
                                  row[f"{method}_wall_s"], "s wall", "completes on 2 cores", True,
                                  cpu_s=row[f"{method}_cpu_s"], peak_rss_gib=row["peak_rss_gib"], result=result))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", nargs="+", metavar="DATASET:NETWORK", default=[f"{d}:{n}" for d, n in PLANS],
                        help="plans to run (default: all four)")
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--json", help="write the results (a list, one entry per plan) to this file")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per method")
    parser.add_argument("--full-activations", action="store_true",
                        help=f"keep every activation of {', '.join(CHECKPOINTED_NETWORKS)} too (needs ~20 GiB more)")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: resident memory after each part of the network's forward, one view (one plan)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process (one plan); default: one niced child process per plan")
    args = parser.parse_args(argv)
    plans = [tuple(plan.split(":", 1)) for plan in args.plan]
    if args.breakdown:
        if len(plans) != 1:
            parser.error("--breakdown measures one plan")
        with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
            for name, rss, growth in memory_breakdown(*plans[0], Path(scratch)):
                print(f"{name:45s} {rss:6.2f} GiB  {growth:+6.2f} GiB")
        return 0
    if args.in_process:
        if len(plans) != 1 or not args.work_dir:
            parser.error("--in-process measures one plan, in --work-dir")
        dataset, network = plans[0]
        checkpointing = network in CHECKPOINTED_NETWORKS and not args.full_activations
        results = [measure_plan(dataset, network, Path(args.work_dir), args.steps, checkpointing)]
    else:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
            results = [run_plan_process(dataset, network, Path(scratch), args.steps, args.full_activations)
                       for dataset, network in plans]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.in_process:
        print(json.dumps({"machine": machine()}))
        print(format_table([summary_row(result) for result in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
