"""Pre-training of the tiny backbone: pretext data, pretext tasks, the weights file in both architectures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gdis.config import ConfigError, deep_merge, read_yaml, validate_config
from gdis.io import read_json
from gdis.models import build_model
from gdis.models.mask_rcnn import TinyBody
from gdis.pretrain import (LAYOUTS, PRETEXT_CLASSES, PretextNet, pretext_dataset, pretext_loss, pretext_objective,
                           pretrain_backbone)
from gdis.synthetic import CATEGORIES

REPO = Path(__file__).resolve().parents[1]
BASE = {"dataset": {"name": "x", "source": "synthetic"}}
# A few seconds of pre-training on 48-px images.
TINY_PRETRAIN = {"image_size": 48, "num_images": 8, "num_eval_images": 4, "steps": 3, "batch_size": 4,
                 "warmup_steps": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as pretrain.threads sets it in pretrain_backbone; the other tests get theirs back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**pretrain) -> dict:
    return validate_config(deep_merge(BASE, {"pretrain": {**TINY_PRETRAIN, **pretrain}}))


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_pretext_data_is_a_function_of_the_seed(task):
    layout = LAYOUTS[task]
    images, class_maps = pretext_dataset(seed=4, first=0, count=3, size=48, layout=layout)
    again = pretext_dataset(seed=4, first=0, count=3, size=48, layout=layout)
    assert torch.equal(images, again[0]) and torch.equal(class_maps, again[1])
    assert images.shape == (3, 3, 48, 48) and images.dtype == torch.uint8 and class_maps.shape == (3, 48, 48)
    # Each image is its own stream: image 2 does not depend on how many come before it.
    alone = pretext_dataset(seed=4, first=2, count=1, size=48, layout=layout)
    assert torch.equal(alone[0][0], images[2]) and torch.equal(alone[1][0], class_maps[2])
    assert not torch.equal(pretext_dataset(seed=5, first=0, count=3, size=48, layout=layout)[0], images)


def test_pretext_classes_are_not_the_demo_classes():
    assert not set(PRETEXT_CLASSES) & {category["name"] for category in CATEGORIES}
    _, class_maps = pretext_dataset(seed=0, first=0, count=40, size=64, layout=LAYOUTS["segment"])
    assert set(class_maps.unique().tolist()) == set(range(len(PRETEXT_CLASSES) + 1))  # background + every class
    # 'classify' images hold exactly one object each.
    _, class_maps = pretext_dataset(seed=0, first=0, count=10, size=64, layout=LAYOUTS["classify"])
    assert all(len(class_map.unique()) == 2 and class_map.unique()[0] == 0 for class_map in class_maps)


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_a_few_pretext_steps_lower_the_loss(task):
    images, class_maps = pretext_dataset(seed=0, first=0, count=8, size=64, layout=LAYOUTS[task])
    torch.manual_seed(0)
    net = PretextNet(task)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    before, _ = pretext_loss(net, images, class_maps)
    for _ in range(8):
        loss, _ = pretext_loss(net, images, class_maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, _ = pretext_loss(net, images, class_maps)
    assert after.item() < 0.9 * before.item()


def test_pretraining_is_reproducible(tmp_path):
    """Same config, same bytes: the weights file is a function of the pretrain section."""
    first = pretrain_backbone(_config(), tmp_path / "a" / "w.pt", tmp_path / "a" / "w.json")
    second = pretrain_backbone(_config(), tmp_path / "b" / "w.pt", tmp_path / "b" / "w.json")
    assert (tmp_path / "a" / "w.pt").read_bytes() == (tmp_path / "b" / "w.pt").read_bytes()
    assert first["weights_sha256"] == second["weights_sha256"]
    assert 0 <= first["heldout_accuracy"] <= 1 and 0 <= first["heldout_object_accuracy"] <= 1
    other = pretrain_backbone(_config(seed=1), tmp_path / "c" / "w.pt", tmp_path / "c" / "w.json")
    assert other["weights_sha256"] != first["weights_sha256"]


def _tiny_body(model) -> torch.nn.Module:
    """The TinyBody (as IntermediateLayerGetter) inside a Mask R-CNN or Mask2Former segmenter."""
    return model.net.backbone.body if hasattr(model.net, "backbone") else model.backbone.body


@pytest.mark.parametrize("architecture", ["mask_rcnn", "mask2former"])
def test_the_weights_file_loads_every_tiny_body_tensor(tmp_path, architecture):
    out, record_path = tmp_path / "pretrain" / "tiny_backbone.pt", tmp_path / "pretrain" / "tiny_backbone.json"
    record = pretrain_backbone(_config(), out, record_path)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert set(state) == set(TinyBody().state_dict())
    assert read_json(record_path) == record
    assert record["task"] == "segment" and record["steps"] == TINY_PRETRAIN["steps"]
    assert record["versions"]["torch"] and "commit" in record["git"]

    preset = {}
    if architecture == "mask2former":
        preset = read_yaml(REPO / "config" / "networks" / "mask2former_tiny.yaml")
    model_config = validate_config(deep_merge(deep_merge(BASE, preset), {
        "model": {"min_size": [64], "test_size": 64, "backbone_weights": str(out)}}))["model"]
    torch.manual_seed(123)  # a fresh model: its random initialisation differs from the file
    fresh = build_model(model_config, num_categories=5, load_weights=False)
    assert not torch.equal(_tiny_body(fresh).state_dict()["stem.0.weight"], state["stem.0.weight"])
    torch.manual_seed(123)
    model = build_model(model_config, num_categories=5)
    loaded = _tiny_body(model).state_dict()
    assert set(loaded) == set(state)  # every TinyBody tensor has its counterpart ...
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key  # ... and was loaded from the file
    assert model.weights == str(out)


def test_pretrain_config_is_validated():
    assert validate_config(BASE)["pretrain"]["task"] in ("segment", "classify")
    with pytest.raises(ConfigError, match="pretrain.task"):
        validate_config(deep_merge(BASE, {"pretrain": {"task": "jigsaw"}}))
    with pytest.raises(ConfigError, match="pretrain.steps"):
        validate_config(deep_merge(BASE, {"pretrain": {"steps": 0}}))
    with pytest.raises(ConfigError, match="pretrain.stpes"):
        validate_config(deep_merge(BASE, {"pretrain": {"stpes": 10}}))


def test_pretext_targets_and_accuracies():
    class_maps = torch.zeros((2, 8, 8), dtype=torch.uint8)
    class_maps[0, :4, :4] = 3  # image 0: class 3 in the top-left quarter; image 1: background only
    # 'segment': stride-4 targets, the pixel at each 4x4 cell's top-left corner
    logits = torch.zeros((2, len(PRETEXT_CLASSES) + 1, 2, 2))
    logits[:, 0] = 1.0  # background everywhere ...
    loss, metrics = pretext_objective("segment", logits, class_maps)
    assert metrics == {"accuracy": 7 / 8, "object_accuracy": 0.0}
    logits[0, 3, 0, 0] = 2.0  # ... but class 3 on image 0's object
    assert pretext_objective("segment", logits, class_maps)[1] == {"accuracy": 1.0, "object_accuracy": 1.0}
    assert pretext_objective("segment", logits, class_maps)[0] < loss
    # 'classify': the one object's class, 0-based
    class_logits = torch.zeros((1, len(PRETEXT_CLASSES)))
    class_logits[0, 2] = 5.0
    assert pretext_objective("classify", class_logits, class_maps[:1])[1] == {"accuracy": 1.0}
