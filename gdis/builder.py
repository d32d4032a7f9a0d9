"""Assemble a training run's parts from the validated config and the files the workflow rule passed.

In the style of detectron2's ``from_config``: ``build_run`` reads the config and the files once and
builds the training views (``gdis.augment``), the student and its teacher, and the optimiser and its
schedule (``gdis.optim``); the ``Trainer`` (gdis.trainer) receives the built parts and builds nothing.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from gdis import distill, distributed, pseudo_quality
from gdis.augment import LabeledViews, UnlabeledViews
from gdis.coco import category_ids, load_coco
from gdis.data import CocoInstances
from gdis.evaluate import ValidationSet
from gdis.io import read_json
from gdis.models import build_model
from gdis.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


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
    val_annotations: str | Path | None = None  # the val set, evaluated every train.eval_period steps
    val_images: str | Path | None = None
    val_check: str | Path | None = None  # the val set's dataset check report (what it leaves out)


@dataclass
class RunParts:
    """What a Trainer trains: built from the config and the files by ``build_run``."""

    method: str
    category_ids: list[int]
    labeled_coco: dict  # the labelled images with their annotations: repeat factors (gdis.sampling)
    labeled: LabeledViews
    unlabeled: UnlabeledViews | None
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    hidden_truth: pseudo_quality.HiddenGroundTruth | None
    validation: ValidationSet | None  # evaluated every train.eval_period steps (None: never)
    files: RunFiles


def annotated_images(coco: dict) -> dict:
    """``coco`` without its images that have no annotation but crowd ones (detectron2's filter of empty images)."""
    annotated = {ann["image_id"] for ann in coco["annotations"] if not ann.get("iscrowd", 0)}
    kept = [image for image in coco["images"] if image["id"] in annotated]
    if len(kept) < len(coco["images"]):
        log.info("%d labelled image(s) without annotations left out (train.drop_empty_labeled_images)",
                 len(coco["images"]) - len(kept))
    if not kept:
        raise ValueError("no labelled image has an annotation (train.drop_empty_labeled_images leaves none)")
    return {**coco, "images": kept}


def check_query_capacity(model_config: dict, coco: dict) -> None:
    """Mask2Former matches each instance of an image to a query of its own (Hungarian matching): an image with
    more instances than ``model.mask2former.num_queries`` would leave the rest unlearnt, without a word."""
    if model_config["arch"] != "mask2former":
        return
    queries = model_config["mask2former"]["num_queries"]
    instances = Counter(ann["image_id"] for ann in coco["annotations"] if not ann.get("iscrowd", 0))
    image_id, most = max(instances.items(), key=lambda item: item[1], default=(None, 0))
    if most > queries:
        raise ValueError(f"model.mask2former.num_queries is {queries}, but labelled image {image_id} has {most} "
                         f"instances: {most - queries} of them could never be matched to a query and learnt. Set "
                         f"model.mask2former.num_queries to at least {most} (the paper's is 100)")


def build_run(config: dict, method: str, files: RunFiles, world: distributed.World) -> RunParts:
    """The parts of one run of ``method``; the order of random draws is part of a run's reproducibility."""
    train = config["train"]
    entry = distill.method_of(method)
    distributed.check_batch_sizes(train, world, with_unlabeled=entry.distills)
    if entry.distills and train["pseudo_label"]["empty_images"] == "skip" and world.size > 1:
        raise ValueError("train.pseudo_label.empty_images: 'skip' runs on one process only: a process whose "
                         "unlabelled images all lack pseudo-labels would leave out the loss the others compute, and "
                         "with it Mask2Former's instance count, which the processes reduce together; use 'background'")
    if files.teacher and not entry.needs_teacher:
        raise ValueError(f"--teacher is for methods that start from a pre-trained teacher, not {method}")
    if entry.needs_teacher and not files.teacher:
        raise ValueError(f"{method} needs --teacher, the supervised checkpoint of the same split")
    if files.burn_in_checkpoint and entry.starts_from != distill.SUPERVISED_BURN_IN:
        raise ValueError(f"--burn-in-checkpoint is for methods that continue a supervised run, not {method}")

    labeled_coco = load_coco(files.labeled)
    check_query_capacity(config["model"], labeled_coco)
    categories = category_ids(labeled_coco)
    if train["drop_empty_labeled_images"]:
        labeled_coco = annotated_images(labeled_coco)
    labeled = CocoInstances(labeled_coco, files.images, with_targets=True)
    unlabeled = CocoInstances(load_coco(files.unlabeled), files.images, with_targets=False) if entry.distills else None
    for dataset in filter(None, (labeled, unlabeled)):
        dataset.check_files()
    # Each view's randomness is seeded by (seed, its place in the stream): the same whichever process draws it.
    labeled_views = LabeledViews(labeled, train["augment"], seed=train["seed"])
    unlabeled_views = UnlabeledViews(unlabeled, train["augment"], seed=train["seed"] + 1) if unlabeled else None

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
    validation = None
    if train["eval_period"]:
        if not (files.val_annotations and files.val_images):
            raise ValueError(f"train.eval_period is {train['eval_period']}: give the val set too (--val-annotations, "
                             "--val-images)")
        check = read_json(files.val_check, "dataset check report") if files.val_check else None
        validation = ValidationSet(files.val_annotations, files.val_images, check)
    optimizer = build_optimizer(student, train)
    return RunParts(
        method=method, category_ids=categories, labeled_coco=labeled_coco, labeled=labeled_views,
        unlabeled=unlabeled_views, student=student, teacher=teacher, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, train), hidden_truth=hidden_truth, validation=validation, files=files,
    )
