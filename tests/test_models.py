"""Models: the architecture interface, teacher-side score filtering, offline weight loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from gdis.config import deep_merge, validate_config
from gdis.data import CocoInstances, to_float
from gdis.coco import load_coco
from gdis.models import build_model
from gdis.models.mask_rcnn import filter_pseudo_labels
from tests.conftest import resnet50_in_torch_cache

MODEL = validate_config({"dataset": {"name": "x", "source": "synthetic"},
                         "model": {"min_size": [64], "test_size": 64}})["model"]


@pytest.fixture
def images(micro_dataset):
    dataset = CocoInstances(load_coco(micro_dataset / "annotations" / "val.json"), micro_dataset / "val")
    return [to_float(dataset[i][0]) for i in range(len(dataset))]


def test_teacher_side_threshold_gives_the_same_pseudo_labels(images):
    torch.manual_seed(0)
    model = build_model(MODEL, num_categories=5)
    full = model.predict(images)
    threshold = float(torch.cat([p["scores"] for p in full]).median())  # keeps about half of the detections
    thresholded = model.predict(images, score_threshold=threshold)
    assert model.net.roi_heads.score_thresh == 0.05  # restored
    kept_any = False
    for a, b in zip(full, thresholded):
        expected = filter_pseudo_labels(a, threshold, 0.5, 1)
        got = filter_pseudo_labels(b, threshold, 0.5, 1)
        kept_any |= len(got["labels"]) > 0
        assert torch.equal(expected["labels"], got["labels"])
        assert torch.equal(expected["masks"], got["masks"])
    assert kept_any


def test_losses_and_predictions_have_the_interface_shape(images):
    torch.manual_seed(0)
    model = build_model(MODEL, num_categories=5)
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([2]),
              "masks": torch.zeros((1, 64, 64), dtype=torch.uint8)}
    target["masks"][0, 4:30, 4:30] = 1
    losses = model.losses(images[:1], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    prediction = model.predict(images[:1])[0]
    assert prediction["masks"].shape[1:] == (64, 64)


def test_backbone_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_model(MODEL, num_categories=5)
    path = tmp_path / "backbone.pth"
    torch.save({"model": {f"backbone.body.{k}": v for k, v in source.net.backbone.body.state_dict().items()}}, path)
    torch.manual_seed(2)
    loaded = build_model(deep_merge(MODEL, {"backbone_weights": str(path)}), num_categories=5)
    for key, value in source.net.backbone.body.state_dict().items():
        assert torch.equal(value, loaded.net.backbone.body.state_dict()[key])
    assert loaded.weights == str(path)


def test_missing_imagenet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = deep_merge(MODEL, {"backbone": "resnet50_fpn", "backbone_weights": "imagenet"})
    with pytest.raises(FileNotFoundError, match=rf"not found at {tmp_path}/hub/checkpoints/resnet50-\w+\.pth"):
        build_model(config, num_categories=5)


def test_imagenet_weights_found_in_the_torch_cache(tmp_path, monkeypatch):
    """The real loading path: torchvision's file name in TORCH_HOME, loaded into the ResNet-50 body."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet50_in_torch_cache(tmp_path, seed=3)
    model = build_model(deep_merge(MODEL, {"backbone": "resnet50_fpn", "backbone_weights": "imagenet"}), 5)
    assert torch.equal(model.net.backbone.body.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.net.backbone.body.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_no_imagenet_weights_for_tiny():
    with pytest.raises(ValueError, match="no ImageNet weights exist for backbone 'tiny'"):
        build_model(deep_merge(MODEL, {"backbone_weights": "imagenet"}), num_categories=5)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_in_a_weights_file_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload()}, handle)
    with pytest.raises(ValueError, match="cannot load weights from"):
        build_model(deep_merge(MODEL, {"backbone_weights": str(path)}), num_categories=5)
