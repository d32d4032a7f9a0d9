"""The distillation pieces as small pure functions: which teacher a step uses, the switch, the EMA.

``METHODS`` is the one table of training methods: the CLI's choices, the config checks, the
workflow's wildcards and the report's labels are read from it. gdis/config.schema.yaml lists the
names again (a schema cannot import Python); tests/test_distill.py checks that the two agree.
This module imports torch only inside ``ema_update``, so that the config, the CLI and the workflow
can read the table without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# What a student starts from: the configured backbone weights (model.backbone_weights), or the
# supervised run's full training state at step train.burn_in (its burn_in.pt).
BACKBONE_WEIGHTS = "backbone_weights"
SUPERVISED_BURN_IN = "supervised_burn_in"


@dataclass(frozen=True)
class Method:
    """One training method: what it starts from, when it uses unlabelled data, what it needs, how it is shown."""

    name: str
    starts_from: str  # BACKBONE_WEIGHTS or SUPERVISED_BURN_IN
    unlabeled_before_burn_in: bool  # pseudo-labels from the step 0 (the pre-trained teacher's)
    needs_teacher: bool  # the supervised run's final model as the frozen teacher until burn_in
    distills: bool  # unlabelled data and an EMA teacher from burn_in on (an EMA teacher to evaluate)
    label: str  # as the report's tables and figures print it
    color: str  # the report's plots (a matplotlib colour)


METHODS: dict[str, Method] = {method.name: method for method in [
    Method("supervised", starts_from=BACKBONE_WEIGHTS, unlabeled_before_burn_in=False, needs_teacher=False,
           distills=False, label="supervised", color="tab:gray"),
    Method("standard_burnin", starts_from=SUPERVISED_BURN_IN, unlabeled_before_burn_in=False, needs_teacher=False,
           distills=True, label="standard burn-in", color="tab:blue"),
    Method("guided_distillation", starts_from=BACKBONE_WEIGHTS, unlabeled_before_burn_in=True, needs_teacher=True,
           distills=True, label="guided distillation", color="tab:red"),
]}
SUPERVISED = "supervised"
STANDARD = "standard_burnin"
GUIDED = "guided_distillation"
DISTILLATION_METHODS = tuple(name for name, method in METHODS.items() if method.distills)
assert {SUPERVISED, STANDARD, GUIDED} == set(METHODS)


def method_of(name: str) -> Method:
    """The table's entry for ``name``; a ValueError that lists the methods when there is none."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def teacher_phase(method: str, step: int, burn_in: int) -> str | None:
    """Which teacher gives the pseudo-labels at ``step``: 'pretrained', 'ema' or None (labelled data only).

    guided_distillation: the frozen supervised teacher before ``burn_in``, the EMA teacher from then on.
    standard_burnin: no unlabelled data before ``burn_in``, the EMA teacher from then on.
    """
    entry = method_of(method)
    if not entry.distills:
        return None
    if step >= burn_in:
        return "ema"
    return "pretrained" if entry.unlabeled_before_burn_in else None


def copies_student(method: str, step: int, burn_in: int) -> bool:
    """True at the one step where the teacher's weights become the student's (EMA with decay 0)."""
    return method_of(method).distills and step == burn_in


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student for parameters and float buffers; other buffers copied."""
    import torch

    with torch.no_grad():
        student_state = student.state_dict()
        for name, value in teacher.state_dict().items():
            source = student_state[name]
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source, alpha=1 - decay)
            else:
                value.copy_(source)
