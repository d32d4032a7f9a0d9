"""Distillation pieces: pseudo-label filtering, EMA update, teacher phases and the burn-in switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdis import distill
from gdis.models.mask_rcnn import filter_pseudo_labels


def _prediction() -> dict:
    masks = torch.zeros(4, 8, 8)
    masks[0, 0:4, 0:4] = 0.9    # confident, 16 px
    masks[1, 4:8, 4:8] = 0.9    # low score
    masks[2, 0:2, 6:8] = 0.9    # confident, only 4 px
    masks[3, 2:5, 2:6] = 0.4    # confident, but every pixel below the mask threshold
    masks[0, 7, 7] = 0.6        # one extra pixel just above the mask threshold
    return {
        "boxes": torch.zeros(4, 4),
        "labels": torch.tensor([1, 2, 3, 4]),
        "scores": torch.tensor([0.95, 0.5, 0.8, 0.9]),
        "masks": masks,
    }


def test_pseudo_labels_keep_confident_large_masks():
    kept = filter_pseudo_labels(_prediction(), score_threshold=0.7, mask_threshold=0.5, min_area=10)
    assert kept["labels"].tolist() == [1]
    assert kept["masks"].dtype == torch.uint8 and kept["masks"].sum() == 17
    assert kept["boxes"].tolist() == [[0.0, 0.0, 8.0, 8.0]]  # from the binarised mask, pixel edges


def test_pseudo_label_thresholds_are_strict_and_configurable():
    kept = filter_pseudo_labels(_prediction(), score_threshold=0.8, mask_threshold=0.5, min_area=4)
    assert kept["labels"].tolist() == [1]  # score 0.8 is not above 0.8
    kept = filter_pseudo_labels(_prediction(), score_threshold=0.3, mask_threshold=0.3, min_area=4)
    assert kept["labels"].tolist() == [1, 2, 3, 4]


def test_no_pseudo_labels_gives_empty_targets():
    kept = filter_pseudo_labels(_prediction(), score_threshold=0.99, mask_threshold=0.5, min_area=1)
    assert kept["boxes"].shape == (0, 4) and kept["masks"].shape == (0, 8, 8) and kept["labels"].shape == (0,)


class _Net(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), value))
        self.register_buffer("running", torch.full((2,), value))
        self.register_buffer("count", torch.tensor(int(value)))


def test_ema_update_averages_floats_and_copies_integers():
    teacher, student = _Net(1.0), _Net(3.0)
    distill.ema_update(teacher, student, decay=0.75)
    assert torch.allclose(teacher.weight, torch.full((3,), 1.5))
    assert torch.allclose(teacher.running, torch.full((2,), 1.5))
    assert teacher.count.item() == 3
    assert torch.equal(student.weight.detach(), torch.full((3,), 3.0))  # the student is untouched


def test_ema_with_decay_zero_is_a_copy():
    teacher, student = _Net(1.0), _Net(3.0)
    distill.ema_update(teacher, student, decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))


@pytest.mark.parametrize("method, phases", [
    ("supervised", [None, None, None, None]),
    ("standard_burnin", [None, None, "ema", "ema"]),
    ("guided_distillation", ["pretrained", "pretrained", "ema", "ema"]),
])
def test_teacher_phase(method, phases):
    assert [distill.teacher_phase(method, step, burn_in=2) for step in range(4)] == phases
    assert [distill.copies_student(method, step, burn_in=2) for step in range(4)] == [
        False, False, method != "supervised", False]


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown method 'mean_teacher'"):
        distill.teacher_phase("mean_teacher", 0, 1)


def test_schema_lists_the_methods_of_the_table():
    """The schema cannot import gdis.distill: its enum and default of methods must be the table's names."""
    from gdis.config import load_schema

    methods = load_schema()["properties"]["methods"]
    assert methods["items"]["enum"] == list(distill.METHODS)
    assert methods["default"] == list(distill.METHODS)


def test_method_table():
    assert [method.name for method in distill.METHODS.values()] == list(distill.METHODS)
    assert distill.DISTILLATION_METHODS == (distill.STANDARD, distill.GUIDED)
    assert {name: method.label for name, method in distill.METHODS.items()} == {  # the report prints these
        "supervised": "supervised", "standard_burnin": "standard burn-in", "guided_distillation": "guided distillation"}
    assert [name for name, method in distill.METHODS.items() if method.needs_teacher] == [distill.GUIDED]
    assert distill.METHODS[distill.STANDARD].starts_from == distill.SUPERVISED_BURN_IN
    with pytest.raises(ValueError, match="unknown method 'mean_teacher'; expected one of supervised, "):
        distill.method_of("mean_teacher")
