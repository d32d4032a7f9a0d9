"""Parameter groups and the learning-rate schedule (gdis.optim) against the reference's rules, by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdis.config import load_schema
from gdis.optim import build_optimizer, build_scheduler, decay_kind, lr_factor, parameter_groups

TRAIN_DEFAULTS = {key: spec["default"] for key, spec in load_schema()["properties"]["train"]["properties"].items()
                  if "default" in spec}


def train_config(**overrides) -> dict:
    return {**TRAIN_DEFAULTS, **overrides}


class SwinEmbeddings(nn.Module):
    """Named as transformers' Swin embeddings, whose absolute position table the reference does not decay."""

    def __init__(self) -> None:
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.zeros(1, 4, 8))
        self.projection = nn.Conv2d(3, 8, 1)


class WindowAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.qkv = nn.Linear(8, 24)


class Dinov2Embeddings(nn.Module):
    """Named as transformers' DINOv2 embeddings: the reference decays DINOv2's position table (its name differs)."""

    def __init__(self) -> None:
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))


class Small(nn.Module):
    """Backbone: conv + BatchNorm + frozen conv + Swin-like tables + DINOv2-like tables. Head: GroupNorm,
    LayerNorm, Embedding, Linear, and a parameter shared with a second module."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({
            "conv": nn.Conv2d(3, 8, 3), "bn": nn.BatchNorm2d(8), "frozen": nn.Conv2d(8, 8, 1),
            "swin": SwinEmbeddings(), "attention": WindowAttention(), "dinov2": Dinov2Embeddings(),
        })
        self.backbone["frozen"].requires_grad_(False)
        self.head_conv = nn.Conv2d(8, 8, 3)
        self.group_norm = nn.GroupNorm(2, 8)
        self.layer_norm = nn.LayerNorm(8)
        self.queries = nn.Embedding(5, 8)
        self.classifier = nn.Linear(8, 3)
        self.tied = nn.Linear(8, 3)
        self.tied.weight = self.classifier.weight  # one parameter, two modules: it must be listed once

    def backbone_parameters(self):
        return self.backbone.parameters()


def named_ids(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def test_groups_take_the_reference_weight_decay_and_learning_rate():
    model = Small()
    train = train_config(optimizer="adamw", lr=1e-4, weight_decay=0.05, backbone_lr_multiplier=0.1)
    optimizer = build_optimizer(model, train)
    names = named_ids(model)
    groups = {group["name"]: (group["lr"], group["weight_decay"], sorted(names[id(p)] for p in group["params"]))
              for group in optimizer.param_groups}
    assert groups == {
        "head/decay": (1e-4, 0.05, ["classifier.bias", "classifier.weight", "head_conv.bias", "head_conv.weight",
                                    "tied.bias"]),
        "head/norm": (1e-4, 0.0, ["group_norm.bias", "group_norm.weight", "layer_norm.bias", "layer_norm.weight"]),
        "head/embed": (1e-4, 0.0, ["queries.weight"]),
        "backbone/decay": (pytest.approx(1e-5), 0.05, [
            "backbone.attention.qkv.bias", "backbone.attention.qkv.weight", "backbone.conv.bias",
            "backbone.conv.weight", "backbone.dinov2.cls_token", "backbone.dinov2.position_embeddings",
            "backbone.swin.projection.bias", "backbone.swin.projection.weight"]),
        "backbone/norm": (pytest.approx(1e-5), 0.0, ["backbone.bn.bias", "backbone.bn.weight"]),
        "backbone/embed": (pytest.approx(1e-5), 0.0, ["backbone.attention.relative_position_bias_table",
                                                      "backbone.swin.position_embeddings"]),
    }
    assert optimizer.param_groups[0]["name"] == "head/decay"  # the trainer logs group 0's rate as train.lr's
    assert isinstance(optimizer, torch.optim.AdamW)


def test_every_trainable_parameter_is_in_one_group_once():
    model = Small()
    groups = parameter_groups(model, train_config())
    listed = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(listed) == len(set(listed)) == len(trainable) and set(listed) == trainable
    assert id(model.backbone["frozen"].weight) not in listed


def test_norm_and_embedding_decay_follow_their_keys_and_sgd_keeps_momentum():
    model = Small()
    optimizer = build_optimizer(model, train_config(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
                                                    weight_decay_norm=1e-5, weight_decay_embed=2e-5))
    decay = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decay == {"head/decay": 1e-4, "head/norm": 1e-5, "head/embed": 2e-5, "backbone/decay": 1e-4,
                     "backbone/norm": 1e-5, "backbone/embed": 2e-5}
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert not optimizer.defaults["nesterov"]


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(4), nn.BatchNorm3d(4), nn.SyncBatchNorm(4), nn.InstanceNorm2d(4, affine=True),
                                   nn.GroupNorm(2, 4), nn.LayerNorm(4), nn.RMSNorm(4)])
def test_every_torch_norm_layer_is_a_norm(layer):
    for name, _ in layer.named_parameters(recurse=False):
        assert decay_kind(layer, name) == "norm"


def test_transformers_modules_are_classified_as_the_reference_would():
    """The real transformers modules gdis builds: Swin's relative bias table is an embedding; DINOv2's position
    table is decayed, as the reference's DINOv2 (pos_embed) is; Mask2Former's query embeddings are embeddings."""
    from transformers import Dinov2Config, Dinov2Model, SwinConfig, SwinModel

    swin = SwinModel(SwinConfig(embed_dim=8, depths=[1], num_heads=[1], image_size=32, use_absolute_embeddings=True))
    kinds = {f"{module_name}.{name}": decay_kind(module, name) for module_name, module in swin.named_modules()
             for name, _ in module.named_parameters(recurse=False)}
    assert kinds["embeddings.position_embeddings"] == "embed"
    tables = [name for name in kinds if name.endswith("relative_position_bias_table")]
    assert tables and all(kinds[name] == "embed" for name in tables)
    assert kinds["embeddings.norm.weight"] == "norm" and kinds["layernorm.weight"] == "norm"
    assert kinds["embeddings.patch_embeddings.projection.weight"] == "decay"
    dinov2 = Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                                      image_size=28, patch_size=14))
    assert decay_kind(dinov2.embeddings, "position_embeddings") == "decay"
    assert decay_kind(dinov2.embeddings, "cls_token") == "decay"


# -- the schedule ---------------------------------------------------------------------------------------
def test_step_schedule_is_detectron2s_warmup_multistep():
    train = train_config(lr_schedule="step", iterations=100, lr_steps=[60, 80], lr_gamma=0.1, warmup_iterations=10,
                         warmup_factor=0.001, warmup_method="linear")
    # linear warm-up: 0.001 (1 - t/10) + t/10
    assert lr_factor(0, train) == pytest.approx(0.001)
    assert lr_factor(5, train) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(9, train) == pytest.approx(0.001 * 0.1 + 0.9)
    assert lr_factor(10, train) == 1.0
    assert lr_factor(59, train) == 1.0
    assert lr_factor(60, train) == pytest.approx(0.1)
    assert lr_factor(79, train) == pytest.approx(0.1)
    assert lr_factor(80, train) == pytest.approx(0.01)
    assert lr_factor(99, train) == pytest.approx(0.01)


def test_step_warmup_runs_to_the_schedule_value_at_its_end():
    """fvcore's WarmupParamScheduler: a milestone inside the warm-up is the ramp's end value, not a product."""
    train = train_config(lr_schedule="step", iterations=100, lr_steps=[4], lr_gamma=0.5, warmup_iterations=10,
                         warmup_factor=0.2, warmup_method="linear")
    assert lr_factor(0, train) == pytest.approx(0.2)
    assert lr_factor(5, train) == pytest.approx(0.2 * 0.5 + 0.5 * 0.5)
    assert lr_factor(10, train) == 0.5


def test_reference_coco_warmup_is_flat_and_constant_method_holds_the_factor():
    coco = train_config(lr_schedule="step", iterations=368750, lr_steps=[327778, 355092], warmup_iterations=10,
                        warmup_factor=1.0)
    assert [lr_factor(step, coco) for step in (0, 5, 10, 327777)] == [1.0, 1.0, 1.0, 1.0]
    assert lr_factor(327778, coco) == pytest.approx(0.1) and lr_factor(355092, coco) == pytest.approx(0.01)
    constant = train_config(lr_schedule="step", iterations=100, lr_steps=[50], warmup_iterations=10, warmup_factor=0.3,
                            warmup_method="constant")
    assert [lr_factor(step, constant) for step in (0, 9, 10)] == [0.3, 0.3, 1.0]


def test_poly_schedule_is_warmup_poly_lr():
    cityscapes = train_config(lr_schedule="poly", iterations=90000, poly_power=0.9, warmup_iterations=0)
    assert lr_factor(0, cityscapes) == 1.0
    assert lr_factor(45000, cityscapes) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(89999, cityscapes) == pytest.approx((1 / 90000) ** 0.9)
    assert lr_factor(90000, cityscapes) == 0.0
    # WarmupPolyLR multiplies the warm-up factor with the decay
    warm = train_config(lr_schedule="poly", iterations=100, poly_power=0.9, warmup_iterations=10, warmup_factor=0.1)
    assert lr_factor(4, warm) == pytest.approx((0.1 * 0.6 + 0.4) * 0.96 ** 0.9)
    # constant ending, only after the warm-up
    ending = train_config(lr_schedule="poly", iterations=100, poly_power=1.0, warmup_iterations=0,
                          poly_constant_ending=0.05)
    assert lr_factor(90, ending) == pytest.approx(0.1)
    assert lr_factor(96, ending) == 0.05 and lr_factor(100, ending) == 0.05


def test_scheduler_sets_every_group_rate_per_step():
    model = Small()
    train = train_config(optimizer="adamw", lr=1e-4, backbone_lr_multiplier=0.1, lr_schedule="step", iterations=20,
                         lr_steps=[3], lr_gamma=0.1, warmup_iterations=2, warmup_factor=0.5)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    rates = []
    for _ in range(4):
        rates.append({group["name"]: group["lr"] for group in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert [r["head/decay"] for r in rates] == pytest.approx([0.5e-4, 0.75e-4, 1e-4, 1e-5])
    assert [r["backbone/norm"] for r in rates] == pytest.approx([0.5e-5, 0.75e-5, 1e-5, 1e-6])


def test_gdis_mask2former_groups():
    """gdis's Mask2Former (tiny backbone): its query and level embeddings are embeddings, the pixel decoder's
    level_embed parameter decays (an nn.Parameter, as in the reference), its norms are norms."""
    from pathlib import Path

    from gdis.config import deep_merge, read_yaml, validate_config
    from gdis.models import build_model

    preset = read_yaml(Path(__file__).resolve().parents[1] / "config" / "networks" / "mask2former_tiny.yaml")
    config = validate_config(deep_merge(preset, {"dataset": {"name": "x", "source": "synthetic"},
                                                 "model": {"min_size": [64], "test_size": 64}}))
    model = build_model(config["model"], num_categories=3, load_weights=False)
    names = named_ids(model)
    groups = {group["name"]: {names[id(p)] for p in group["params"]} for group in parameter_groups(model, config["train"])}
    assert {name.rsplit(".", 2)[-2] for name in groups["head/embed"]} == {"queries_embedder", "queries_features",
                                                                        "level_embed"}
    assert any(name.endswith("pixel_level_module.decoder.level_embed") for name in groups["head/decay"])
    assert groups["head/norm"] and all(".weight" in n or ".bias" in n for n in groups["head/norm"])
    assert groups["backbone/norm"]  # the tiny backbone's group norms
    backbone = {id(p) for p in model.backbone_parameters()}
    assert {names[i] for i in backbone} == groups.get("backbone/decay", set()) | groups["backbone/norm"]
