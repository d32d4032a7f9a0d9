"""The optimiser's parameter groups and the learning-rate schedule, as Guided Distillation's recipe.

Parameter groups follow the reference's ``Trainer.build_optimizer`` (GuidedDistillation's
train_net.py, from Mask2Former): every trainable parameter gets ``train.weight_decay``, except
normalisation layers' (``train.weight_decay_norm``, SOLVER.WEIGHT_DECAY_NORM 0.0) and embeddings'
(``train.weight_decay_embed``, SOLVER.WEIGHT_DECAY_EMBED 0.0); the backbone's learn at
``train.backbone_lr_multiplier`` times the rate (SOLVER.BACKBONE_MULTIPLIER 0.1).

The schedule is detectron2's: WarmupMultiStepLR (an fvcore WarmupParamScheduler around a
MultiStepParamScheduler, detectron2/solver/build.py) for ``train.lr_schedule: step`` and the DeepLab
project's WarmupPolyLR (projects/DeepLab/deeplab/lr_scheduler.py) for ``poly``; with SOLVER.WARMUP_FACTOR,
WARMUP_ITERS and WARMUP_METHOD as ``train.warmup_factor``, ``warmup_iterations`` and ``warmup_method``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

# Every torch normalisation layer with affine parameters: batch norm (incl. SyncBatchNorm and the lazy
# variants) and instance norm derive from _NormBase. The reference lists BatchNorm1-3d, SyncBatchNorm,
# GroupNorm, InstanceNorm1-3d, LayerNorm and LocalResponseNorm (no parameters); RMSNorm is newer than it.
# FrozenBatchNorm2d has buffers only, so nothing of it reaches the optimiser.
NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)

# Position tables the reference takes out of weight decay by parameter name (train_net.py): Swin's
# relative position bias and absolute position embedding, as the reference's own Swin names them.
POSITION_PARAMETER_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
# Their names in transformers' modules, as (module class name, parameter name). transformers' Swin
# names its relative bias table alike (caught above) and its absolute embedding (off by default, as the
# reference's APE: False) SwinEmbeddings.position_embeddings. Not listed, as in the reference: DINOv2's
# position embedding and class token (the reference's torch-hub DINOv2 names them pos_embed and
# cls_token, which its rule does not match, so they decay) and the pixel decoder's level_embed (an
# nn.Parameter in the reference's MSDeformAttn encoder as in Mask2FormerPixelDecoder).
POSITION_PARAMETERS = (("SwinEmbeddings", "position_embeddings"),)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "poly")
WARMUP_METHODS = ("linear", "constant")


def decay_kind(module: nn.Module, parameter_name: str) -> str:
    """'norm', 'embed' or 'decay': which weight decay a parameter of ``module`` takes (the reference's rule)."""
    if isinstance(module, NORM_LAYERS):
        return "norm"
    if isinstance(module, nn.Embedding) or parameter_name in POSITION_PARAMETER_NAMES:
        return "embed"
    if (type(module).__name__, parameter_name) in POSITION_PARAMETERS:
        return "embed"
    return "decay"


def _trainable_parameters(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Parameter]]:
    """(module, name, parameter) of each parameter that trains, once each, from its owning module."""
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                yield module, name, parameter


def parameter_groups(model: nn.Module, train: dict) -> list[dict]:
    """Groups of parameters sharing a learning rate and weight decay, each named (``name``), empty ones left out.

    Order: head (train.lr), then backbone (train.lr × train.backbone_lr_multiplier); within each, the
    decayed parameters, then normalisation layers', then embeddings'. ``model.backbone_parameters()``
    says which parameters are the backbone's.
    """
    in_backbone = {id(p) for p in model.backbone_parameters()}
    weight_decay = {"decay": train["weight_decay"], "norm": train["weight_decay_norm"],
                    "embed": train["weight_decay_embed"]}
    learning_rate = {"head": train["lr"], "backbone": train["lr"] * train["backbone_lr_multiplier"]}
    groups = {(part, kind): [] for part in learning_rate for kind in weight_decay}
    for module, name, parameter in _trainable_parameters(model):
        part = "backbone" if id(parameter) in in_backbone else "head"
        groups[(part, decay_kind(module, name))].append(parameter)
    return [{"name": f"{part}/{kind}", "params": params, "lr": learning_rate[part], "weight_decay": weight_decay[kind]}
            for (part, kind), params in groups.items() if params]


def build_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    """AdamW or SGD (``train.optimizer``) over ``parameter_groups``; group 0 is the head's, at ``train.lr``.

    As the reference: AdamW with torch's defaults besides the rate and decay; SGD with ``train.momentum``
    and no Nesterov. Full-model gradient clipping (SOLVER.CLIP_GRADIENTS) stays the trainer's
    (``train.grad_clip``).
    """
    groups = parameter_groups(model, train)
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=train["lr"])
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"])
    raise ValueError(f"train.optimizer: {train['optimizer']!r} is none of {', '.join(OPTIMIZERS)}")


def warmup_factor(step: int, train: dict) -> float:
    """The warm-up multiplier at ``step`` (1 from ``train.warmup_iterations`` on), detectron2's rule.

    'linear' ramps from ``train.warmup_factor`` at step 0 towards 1: f (1 - a) + a with a = step / warm-up
    length; 'constant' holds ``train.warmup_factor`` through the warm-up.
    """
    length, factor = train["warmup_iterations"], train["warmup_factor"]
    if step >= length:
        return 1.0
    if train["warmup_method"] == "constant":
        return factor
    if train["warmup_method"] == "linear":
        alpha = step / length
        return factor * (1 - alpha) + alpha
    raise ValueError(f"train.warmup_method: {train['warmup_method']!r} is none of {', '.join(WARMUP_METHODS)}")


def step_decay(step: int, train: dict) -> float:
    """``train.lr_gamma`` to the number of ``train.lr_steps`` reached (fvcore's MultiStepParamScheduler)."""
    return train["lr_gamma"] ** sum(step >= milestone for milestone in train["lr_steps"])


def lr_factor(step: int, train: dict) -> float:
    """The learning-rate multiplier of ``step`` (0-based: the rate the step-th update uses).

    - ``step`` (detectron2's WarmupMultiStepLR as built today): during the warm-up the multiplier
      replaces the schedule, running from warmup_factor (linear: to the schedule's value at the end of
      the warm-up); afterwards ``lr_gamma`` ** (milestones reached).
    - ``poly`` (WarmupPolyLR): the warm-up multiplier times (1 - step / iterations) ** poly_power, or
      ``poly_constant_ending`` once past the warm-up when the decay falls below it (0: never).
    """
    if train["lr_schedule"] == "step":
        length = train["warmup_iterations"]
        if step >= length:
            return step_decay(step, train)
        end = step_decay(length, train)
        if train["warmup_method"] == "constant":
            return train["warmup_factor"]
        alpha = step / length
        return train["warmup_factor"] * (1 - alpha) + end * alpha
    if train["lr_schedule"] == "poly":
        warmup = warmup_factor(step, train)
        decay = max(0.0, 1 - step / train["iterations"]) ** train["poly_power"]
        ending = train["poly_constant_ending"]
        if ending > 0 and warmup == 1.0 and decay < ending:
            return ending
        return warmup * decay
    raise ValueError(f"train.lr_schedule: {train['lr_schedule']!r} is none of {', '.join(SCHEDULES)}")


def build_scheduler(optimizer: torch.optim.Optimizer, train: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """Every group's rate times ``lr_factor``; call ``step()`` once after each optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
