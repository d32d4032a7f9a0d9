"""The distillation pieces as small pure functions: which teacher a step uses, the switch, the EMA."""

from __future__ import annotations

import torch
from torch import nn

SUPERVISED = "supervised"
GUIDED = "guided_distillation"
STANDARD = "standard_burnin"
METHODS = (SUPERVISED, STANDARD, GUIDED)


def teacher_phase(method: str, step: int, burn_in: int) -> str | None:
    """Which teacher gives the pseudo-labels at ``step``: 'pretrained', 'ema' or None (labelled data only).

    guided_distillation: the frozen supervised teacher before ``burn_in``, the EMA teacher from then on.
    standard_burnin: no unlabelled data before ``burn_in``, the EMA teacher from then on.
    """
    if method == SUPERVISED:
        return None
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if step >= burn_in:
        return "ema"
    return "pretrained" if method == GUIDED else None


def copies_student(method: str, step: int, burn_in: int) -> bool:
    """True at the one step where the teacher's weights become the student's (EMA with decay 0)."""
    return method != SUPERVISED and step == burn_in


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student for parameters and float buffers; other buffers copied."""
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        source = student_state[name]
        if value.dtype.is_floating_point:
            value.mul_(decay).add_(source, alpha=1 - decay)
        else:
            value.copy_(source)
