"""Mask2Former: pseudo-labels, set loss, instance inference, backbone weights, optimisation, the workflow."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from gdis.builder import check_query_capacity
from gdis.config import ARCH_BACKBONES, ConfigError, deep_merge, read_yaml, validate_config
from gdis.models import build_model
from gdis.models.backbones import BACKBONES
from gdis.models.mask2former import instance_inference, select_pseudo_label_queries
from gdis.optim import build_optimizer
from gdis.trainer import autocast
from tests.conftest import resnet50_in_torch_cache

REPO = Path(__file__).resolve().parents[1]
# The demo's Mask2Former, from random weights (its preset names the pre-trained file, which tests do not make).
PRESET = deep_merge(read_yaml(REPO / "config" / "networks" / "mask2former_tiny.yaml"), {"model": {"backbone_weights": None}})
CONFIG = validate_config(deep_merge(PRESET, {"dataset": {"name": "x", "source": "synthetic"},
                                             "model": {"min_size": [64], "test_size": 64}}))
MODEL = CONFIG["model"]
THRESHOLDS = {"score_threshold": 0.7, "mask_threshold": 0.5, "min_mask_probability_sum": 5.0}


def _class_logits(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


def _block(shape: tuple[int, int], rows: slice, cols: slice, inside: float = 10.0, outside: float = -10.0):
    logits = torch.full(shape, outside)
    logits[rows, cols] = inside
    return logits


# -- pseudo-labels ---------------------------------------------------------------------------------
def test_each_pseudo_label_rule_drops_its_query():
    large, small = _block((8, 8), slice(0, 4), slice(0, 4)), _block((8, 8), slice(0, 2), slice(0, 2))
    cases = {  # class probabilities over 2 classes + "no object", and the mask logits
        "kept, class 1": ([0.1, 0.85, 0.05], large),
        "no object is the arg-max": ([0.3, 0.2, 0.5], large),
        "class probability 0.6 <= 0.7": ([0.6, 0.3, 0.1], large),
        "summed mask probability 4 <= 5": ([0.9, 0.05, 0.05], small),
        "kept, class 0": ([0.75, 0.2, 0.05], large),
    }
    class_logits = _class_logits([probabilities for probabilities, _ in cases.values()])
    mask_logits = torch.stack([mask for _, mask in cases.values()])
    queries, labels = select_pseudo_label_queries(class_logits, mask_logits, 0.7, 5.0)
    assert queries.tolist() == [0, 4] and labels.tolist() == [1, 0]
    # Each threshold is the one at fault: loosening it lets its query through.
    assert 2 in select_pseudo_label_queries(class_logits, mask_logits, 0.5, 5.0)[0].tolist()
    assert 3 in select_pseudo_label_queries(class_logits, mask_logits, 0.7, 3.9)[0].tolist()
    assert 1 not in select_pseudo_label_queries(class_logits, mask_logits, 0.0, 0.0)[0].tolist()


def _teacher_outputs(model, images):
    """Hand-made teacher queries on 64-px images (16x16 mask logits): two objects and two rejected queries."""
    class_logits = _class_logits([[0.9, 0.05, 0.03, 0.02], [0.02, 0.03, 0.9, 0.05],
                                  [0.1, 0.1, 0.1, 0.7], [0.5, 0.3, 0.1, 0.1]])
    mask_logits = torch.stack([_block((16, 16), slice(2, 6), slice(3, 9)), _block((16, 16), slice(9, 15), slice(8, 12)),
                               _block((16, 16), slice(0, 8), slice(0, 8)), _block((16, 16), slice(8, 16), slice(0, 8))])
    sizes = [(64, 64)] * len(images)
    return class_logits.expand(len(images), -1, -1), mask_logits.expand(len(images), -1, -1, -1), (64, 64), sizes


def _ground_truth(num_images: int) -> list[dict]:
    masks = torch.zeros((2, 64, 64), dtype=torch.uint8)
    masks[0, 8:24, 12:36] = 1  # the 16x16 blocks, upsampled 4x ...
    masks[1, 36:60, 32:48] = 1
    for mask in masks:  # ... bilinearly, which rounds off their corner pixels
        rows, cols = torch.where(mask.any(1))[0], torch.where(mask.any(0))[0]
        mask[rows[[0, 0, -1, -1]], cols[[0, -1, 0, -1]]] = 0
    target = {"labels": torch.tensor([1, 3]), "masks": masks,
              "boxes": torch.tensor([[12.0, 8.0, 36.0, 24.0], [32.0, 36.0, 48.0, 60.0]])}
    return [dict(target) for _ in range(num_images)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MODEL, num_categories=3)


def test_pseudo_labels_are_the_teachers_confident_masks_at_image_size(model, monkeypatch):
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    monkeypatch.setattr(model, "_query_outputs", lambda batch, short_side=None: _teacher_outputs(model, batch))
    pseudo = model.pseudo_labels(images, THRESHOLDS)
    for got, expected in zip(pseudo, _ground_truth(2)):
        assert got["labels"].tolist() == [1, 3]  # classes 0 and 2 of the queries, as labels 1..K
        assert torch.equal(got["masks"], expected["masks"])
        assert torch.equal(got["boxes"], expected["boxes"])


def test_set_loss_on_pseudo_labels_equals_the_loss_on_the_same_ground_truth(model, monkeypatch):
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    monkeypatch.setattr(model, "_query_outputs", lambda batch, short_side=None: _teacher_outputs(model, batch))
    pseudo = model.pseudo_labels(images, THRESHOLDS)
    monkeypatch.undo()
    torch.manual_seed(2)
    on_pseudo = model.losses(images, pseudo)
    torch.manual_seed(2)
    on_truth = model.losses(images, _ground_truth(2))
    assert set(on_pseudo) == {"loss_cross_entropy", "loss_mask", "loss_dice", "loss_cross_entropy_aux",
                              "loss_mask_aux", "loss_dice_aux"}
    for name, value in on_truth.items():
        assert torch.equal(on_pseudo[name], value), name
    assert float(on_truth["loss_mask_aux"]) > 0  # deep supervision: the decoder layers' terms are there


def test_images_without_pseudo_labels_still_train_no_object(model):
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros((0, 64, 64), dtype=torch.uint8),
             "boxes": torch.zeros((0, 4))}
    losses = model.losses([torch.rand(3, 64, 64)], [empty])
    assert float(losses["loss_cross_entropy"]) > 0 and float(losses["loss_mask"]) == 0
    sum(losses.values()).backward()


def test_more_instances_in_a_labelled_image_than_queries_is_refused_naming_the_key_and_image():
    queries = MODEL["mask2former"]["num_queries"]
    annotations = [{"image_id": 7, "iscrowd": 0} for _ in range(queries + 3)] + [{"image_id": 8, "iscrowd": 0}]
    with pytest.raises(ValueError, match=rf"num_queries is {queries}, but labelled image 7 has {queries + 3} "):
        check_query_capacity(MODEL, {"annotations": annotations})
    crowd_aside = annotations[:queries] + [{"image_id": 7, "iscrowd": 1}] * 3
    check_query_capacity(MODEL, {"annotations": crowd_aside})  # crowd regions are not matched to queries
    check_query_capacity({**MODEL, "arch": "mask_rcnn"}, {"annotations": annotations})  # proposals, not queries


# -- inference -------------------------------------------------------------------------------------
def test_instance_inference_keeps_the_top_k_query_class_pairs():
    class_logits = _class_logits([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.05, 0.05, 0.9]])
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    mask_logits = torch.stack([_block((4, 4), slice(0, 2), slice(0, 2), logit(0.9), -3.0),
                               _block((4, 4), slice(2, 4), slice(0, 4), logit(0.7), -3.0),
                               _block((4, 4), slice(0, 4), slice(0, 4), logit(0.99), -3.0)])
    result = instance_inference(class_logits, mask_logits, top_k=3)
    # Pairs (query 0, class 0) 0.8, (query 1, class 1) 0.6, (query 1, class 0) 0.3: query 1 twice.
    assert result["labels"].tolist() == [1, 2, 1]
    assert torch.allclose(result["scores"], torch.tensor([0.8 * 0.9, 0.6 * 0.7, 0.3 * 0.7]), atol=1e-4)
    assert torch.equal(result["masks"][1] > 0.5, mask_logits[1] > 0)
    assert result["boxes"].tolist() == [[0, 0, 2, 2], [0, 2, 4, 4], [0, 2, 4, 4]]
    assert len(instance_inference(class_logits, mask_logits, top_k=100)["labels"]) == 6  # all 3 x 2 pairs


def test_predict_returns_top_k_masks_at_the_original_size(model):
    predictions = model.predict([torch.rand(3, 64, 80), torch.rand(3, 48, 64)])
    assert [p["masks"].shape for p in predictions] == [(50, 64, 80), (50, 48, 64)]
    assert all(p["labels"].min() >= 1 and p["labels"].max() <= 3 for p in predictions)


# -- backbone weights ----------------------------------------------------------------------------
SMALL_TRANSFORMER = {"mask2former": {"num_queries": 4, "encoder_layers": 1, "decoder_layers": 2, "hidden_dim": 32,
                                     "num_attention_heads": 2, "dim_feedforward": 32, "encoder_feedforward_dim": 32}}


def _hub_snapshot(hf_home, repo_id: str):
    """The Hugging Face cache layout: refs/main names the snapshot folder holding the files."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    return snapshot


def test_dinov2_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    torch.manual_seed(3)
    published = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                         image_size=518, patch_size=14))
    published.save_pretrained(_hub_snapshot(tmp_path, "facebook/dinov2-small"))  # transformers' own format
    config = deep_merge(MODEL, {"backbone": "dinov2_vits14", "backbone_weights": "pretrained", **SMALL_TRANSFORMER})
    model = build_model(config, num_categories=3)
    for key, value in published.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[key], value), key
    assert model.weights == "pretrained"
    seen = []
    model.backbone.body.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["pixel_values"].shape),
                                              with_kwargs=True)
    features = model.backbone(torch.rand(1, 3, 64, 96))
    # The reference's maps: the image up to a multiple of the 14-px patch (5 x 7 tokens), the token map
    # resized to strides 4-32, 1x1 convolutions to 128-1024 channels.
    assert seen == [torch.Size([1, 3, 70, 98])]
    assert [tuple(f.shape[1:]) for f in features] == [(128, 16, 24), (256, 8, 12), (512, 4, 6), (1024, 2, 3)]


def test_missing_hub_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    config = deep_merge(MODEL, {"backbone": "swin_tiny", "backbone_weights": "imagenet", **SMALL_TRANSFORMER})
    expected = f"{tmp_path}/hub/models--microsoft--swin-tiny-patch4-window7-224/snapshots/<revision>/model.safetensors"
    with pytest.raises(FileNotFoundError, match=expected):
        build_model(config, num_categories=3)


def test_resnet50_imagenet_weights_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet50_in_torch_cache(tmp_path, seed=4)
    model = build_model(deep_merge(MODEL, {"backbone": "resnet50", "backbone_weights": "imagenet",
                                           **SMALL_TRANSFORMER}), num_categories=3)
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, reference.conv1.weight)
    assert torch.equal(body.layer4[2].bn3.running_var, reference.layer4[2].bn3.running_var)  # frozen statistics


def test_a_mismatched_weights_file_is_refused(tmp_path):
    torch.manual_seed(5)
    state = build_model(MODEL, num_categories=3).backbone.body.state_dict()
    wrong_shape = dict(state, **{"stem.0.weight": torch.zeros(3, 3, 3, 3)})
    save_file({k: v.contiguous() for k, v in wrong_shape.items()}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match=r"wrong.safetensors does not fit backbone 'tiny'.*stem.0.weight"):
        build_model(deep_merge(MODEL, {"backbone_weights": str(tmp_path / "wrong.safetensors")}), num_categories=3)
    torch.save({"classifier.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth has no tensor of backbone 'tiny'"):
        build_model(deep_merge(MODEL, {"backbone_weights": str(tmp_path / "other.pth")}), num_categories=3)
    with pytest.raises(FileNotFoundError, match="weights file not found: .*absent.safetensors"):
        build_model(deep_merge(MODEL, {"backbone_weights": str(tmp_path / "absent.safetensors")}), num_categories=3)


def test_gdis_checkpoint_of_a_trained_backbone_loads(tmp_path, model):
    path = tmp_path / "student.pt"
    torch.save({"format": "gdis-checkpoint-1", "student": model.state_dict()}, path)  # as model_final.pt
    loaded = build_model(deep_merge(MODEL, {"backbone_weights": str(path)}), num_categories=3)
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(loaded.backbone.body.state_dict()[key], value), key


# -- config and optimisation -----------------------------------------------------------------------
def test_backbone_names_agree_with_the_config_check():
    assert set(BACKBONES) == set(ARCH_BACKBONES["mask2former"])
    with pytest.raises(ConfigError, match="model.backbone: 'dinov2_vitl14' is not a backbone of model.arch 'mask_rcnn'"):
        validate_config({"dataset": {"name": "x", "source": "synthetic"}, "model": {"backbone": "dinov2_vitl14"}})


def test_backbone_learns_at_its_multiplier(model):
    train = deep_merge(CONFIG["train"], {"optimizer": "adamw", "lr": 1e-4, "backbone_lr_multiplier": 0.1})
    groups = build_optimizer(model, train).param_groups
    backbone = [group for group in groups if group["name"].startswith("backbone/")]
    assert {group["lr"] for group in groups if group["name"].startswith("head/")} == {1e-4}
    assert all(group["lr"] == pytest.approx(1e-5) for group in backbone)
    assert {id(p) for group in backbone for p in group["params"]} == {id(p) for p in model.backbone.parameters()}
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))


def test_bf16_autocast_keeps_the_loss_in_float32(model):
    """The precision switch on the CPU (its GPU use is not tested here: no GPU)."""
    with autocast(model, {"precision": "bf16"}):
        losses = model.losses([torch.rand(3, 64, 64)], _ground_truth(1))
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses.values())


# -- the workflow ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_micro_guided_distillation_with_mask2former(workflow_copy):
    (workflow_copy / "mask2former.yaml").write_text(
        "methods: [supervised, guided_distillation]\nsplits: {include_full: false}\nnetworks: [mask2former_tiny]\n"
    )
    result = subprocess.run(
        ["snakemake", "--cores", "2", "--configfile", "config/micro.yaml", "mask2former.yaml"],
        cwd=workflow_copy, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(workflow_copy / "results" / "tables" / "micro.csv")
    assert set(table["arch"]) == {"mask2former"}
    assert set(zip(table["method"], table["model"])) == {
        ("supervised", "student"), ("guided_distillation", "student"), ("guided_distillation", "ema_teacher")}
    log = pd.read_json(workflow_copy / "results" / "models" / "micro" / "mask2former_tiny" / "guided_distillation"
                       / "25pct" / "fold1" / "train_log.jsonl", lines=True)
    assert log["loss_unsupervised"].notna().all() and "pseudo_labels_per_image" in log
