"""Assemble a training run's parts from the validated config and the files the workflow rule passed.

In the style of detectron2's ``from_config``: ``build_run`` reads the config and the files once and
builds the datasets, the student and its teacher, the optimiser and its schedule and the strong
augmentation; the ``Trainer`` (gdis.trainer) receives the built parts and builds nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from gdis import distill, distributed, pseudo_quality
from gdis.coco import category_ids, load_coco
from gdis.data import CocoInstances, photometric_augmentation
from gdis.models import build_model


@dataclass(frozen=True)
class RunFiles:
    """Every file a training run reads: the split, the images, and what the method starts from."""

    labeled: str | Path  # the split's labelled images with their annotations (COCO)
    unlabeled: str | Path  # the split's unlabelled images (COCO, no annotations)
    images: str | Path  # the folder the file names of both are relative to
    hidden_annotations: str | Path | None = None  # all training annotations: pseudo-label quality (distillation)
    teacher: str | Path | None = None  # guided_distillation: the supervised run's model_final.pt
    burn_in_checkpoint: str | Path | None = None  # standard_burnin: the supervised run's burn_in.pt
    backbone_weights: str | Path | None = None  # a weights file, instead of the config's model.backbone_weights


@dataclass
class RunParts:
    """What a Trainer trains: built from the config and the files by ``build_run``."""

    method: str
    category_ids: list[int]
    labeled: CocoInstances
    unlabeled: CocoInstances | None
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    strong_augmentation: torch.nn.Module
    hidden_truth: pseudo_quality.HiddenGroundTruth | None
    files: RunFiles


def lr_factor(step: int, warmup: int, milestones: list[int], gamma: float, poly: tuple[int, float] | None = None) -> float:
    """Learning-rate multiplier: linear warm-up from 0.001, then ``gamma`` at each milestone passed,
    or, with ``poly`` = (iterations, power), the polynomial decay (1 - step / iterations) ** power."""
    decay = gamma ** sum(step >= milestone for milestone in milestones)
    if poly is not None:
        decay = max(0.0, 1 - step / poly[0]) ** poly[1]
    if step < warmup:
        return decay * (0.001 + (1 - 0.001) * step / warmup)
    return decay


def build_optimizer(model: torch.nn.Module, train: dict) -> torch.optim.Optimizer:
    """The optimiser; the backbone's parameters form a second group at ``backbone_lr_multiplier`` times the rate."""
    in_backbone = {id(p) for p in model.backbone_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) in in_backbone]
    params = [{"params": rest}, {"params": backbone, "lr": train["lr"] * train["backbone_lr_multiplier"]}]
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])


def build_scheduler(optimizer: torch.optim.Optimizer, train: dict) -> torch.optim.lr_scheduler.LRScheduler:
    poly = (train["iterations"], train["poly_power"]) if train["lr_schedule"] == "poly" else None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train["warmup_iterations"], train["lr_steps"], train["lr_gamma"], poly))


def build_run(config: dict, method: str, files: RunFiles, world: distributed.World) -> RunParts:
    """The parts of one run of ``method``; the order of random draws is part of a run's reproducibility."""
    train = config["train"]
    entry = distill.method_of(method)
    distributed.check_batch_sizes(train, world, with_unlabeled=entry.distills)
    if entry.needs_teacher and not files.teacher:
        raise ValueError(f"{method} needs --teacher, the supervised checkpoint of the same split")
    if files.burn_in_checkpoint and entry.starts_from != distill.SUPERVISED_BURN_IN:
        raise ValueError(f"--burn-in-checkpoint is for methods that continue a supervised run, not {method}")

    labeled_coco = load_coco(files.labeled)
    categories = category_ids(labeled_coco)
    labeled = CocoInstances(labeled_coco, files.images, with_targets=True)
    unlabeled = CocoInstances(load_coco(files.unlabeled), files.images, with_targets=False) if entry.distills else None
    for dataset in filter(None, (labeled, unlabeled)):
        dataset.check_files()

    model_config = config["model"]
    if files.backbone_weights:
        model_config = {**model_config, "backbone_weights": str(files.backbone_weights)}
    torch.manual_seed(train["seed"])
    student = build_model(model_config, len(categories)).to(world.device)
    distributed.seed_augmentation(train["seed"], world)
    teacher = copy.deepcopy(student).requires_grad_(False) if entry.distills else None
    hidden_truth = None
    if entry.distills and files.hidden_annotations and train["pseudo_label"]["quality_interval"]:
        hidden_truth = pseudo_quality.HiddenGroundTruth(files.hidden_annotations, categories)
    optimizer = build_optimizer(student, train)
    return RunParts(
        method=method, category_ids=categories, labeled=labeled, unlabeled=unlabeled, student=student,
        teacher=teacher, optimizer=optimizer, scheduler=build_scheduler(optimizer, train),
        strong_augmentation=photometric_augmentation(train["augment"]), hidden_truth=hidden_truth, files=files,
    )
