"""ResNet-50 normalisation and frozen stages (model.norm, model.frozen_stages), the set loss's normaliser
over processes, and the EMA teacher's frozen statistics."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops.misc import FrozenBatchNorm2d

from gdis.config import ConfigError, deep_merge, load_config, read_yaml, validate_config
from gdis.distill import ema_update
from gdis.models import build_model
from gdis.models.backbones import DtypeKeepingFrozenBatchNorm2d
from tests.conftest import REPO, resnet50_in_torch_cache

DATASET = {"dataset": {"name": "x", "source": "synthetic"}}
SMALL = {"min_size": [64], "test_size": 64}
MASK_RCNN = validate_config(deep_merge(DATASET, {"model": {"backbone": "resnet50_fpn", **SMALL}}))["model"]
SMALL_TRANSFORMER = {"num_queries": 4, "encoder_layers": 1, "decoder_layers": 2, "hidden_dim": 32,
                     "num_attention_heads": 2, "dim_feedforward": 32, "encoder_feedforward_dim": 32,
                     "train_num_points": 64}
# The demo's Mask2Former, from random weights (its preset names the pre-trained file, which tests do not make).
PRESET = deep_merge(read_yaml(REPO / "config" / "networks" / "mask2former_tiny.yaml"), {"model": {"backbone_weights": None}})
MASK2FORMER = validate_config(deep_merge(deep_merge(PRESET, DATASET),
                                         {"model": {**SMALL, "mask2former": SMALL_TRANSFORMER}}))["model"]
STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # detectron2's stem, res2 ... res5


@pytest.fixture
def imagenet(tmp_path, monkeypatch):
    """A ResNet-50 in TORCH_HOME under torchvision's ImageNet file name, with batch-norm statistics of its own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet50_in_torch_cache(tmp_path, seed=3)
    torch.manual_seed(4)
    for module in reference.modules():  # non-trivial statistics, so that a loaded one is told apart from init
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    path = next((tmp_path / "hub" / "checkpoints").iterdir())
    torch.save(reference.state_dict(), path)
    return reference


def _targets(num_objects: int, size: int = 64) -> dict:
    masks = torch.zeros((num_objects, size, size), dtype=torch.uint8)
    for index in range(num_objects):
        masks[index, 4 + 8 * index: 20 + 8 * index, 8: 40] = 1
    boxes = torch.tensor([[8.0, 4.0 + 8 * i, 40.0, 20.0 + 8 * i] for i in range(num_objects)]).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.ones(num_objects, dtype=torch.int64), "masks": masks}


def _norm_layers(body: nn.Module) -> list[nn.Module]:
    return [m for m in body.modules() if isinstance(m, (_BatchNorm, FrozenBatchNorm2d))]


def _stage(name: str) -> str:
    return "conv1" if name.startswith("bn1") else name.split(".")[0]


def _check_frozen_stages(model, body: nn.Module, frozen: tuple[str, ...]) -> None:
    """Frozen stages need and get no gradient after a backward of the losses; the others get one."""
    buffers = {k: v.clone() for k, v in body.state_dict().items()}
    torch.manual_seed(0)
    losses = model.losses([torch.rand(3, 64, 64)], [_targets(2)])
    sum(losses.values()).backward()
    for name, parameter in body.named_parameters():
        if _stage(name) in frozen:
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    trainable = {_stage(name) for name, parameter in body.named_parameters() if parameter.requires_grad}
    assert trainable == set(STAGES) - set(frozen)
    for name, value in body.state_dict().items():  # frozen statistics did not move in the training forward
        if "running" in name and isinstance(body.get_submodule(name.rsplit(".", 1)[0]), FrozenBatchNorm2d):
            assert torch.equal(value, buffers[name]), name


def test_mask_rcnn_resnet50_under_imagenet_weights_has_frozen_statistics_and_stages(imagenet):
    """As torchvision's pre-trained path: FrozenBatchNorm2d everywhere, stem and layer1 frozen (FREEZE_AT 2)."""
    model = build_model(deep_merge(MASK_RCNN, {"backbone_weights": "imagenet"}), num_categories=2)
    body = model.net.backbone.body
    norms = _norm_layers(body)
    assert len(norms) == 53 and all(type(m) is DtypeKeepingFrozenBatchNorm2d for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.equal(body.layer3[1].bn2.running_var, imagenet.layer3[1].bn2.running_var)  # loaded into them
    assert torch.equal(body.bn1.weight, imagenet.bn1.weight)
    _check_frozen_stages(model, body, frozen=("conv1", "layer1"))


def test_mask_rcnn_resnet50_from_scratch_trains_batch_norm_everywhere():
    body = build_model(MASK_RCNN, num_categories=2).net.backbone.body
    assert all(type(m) is nn.BatchNorm2d for m in _norm_layers(body))
    assert all(parameter.requires_grad for parameter in body.parameters())


def test_mask2former_resnet50_under_imagenet_weights_freezes_statistics_not_stages(imagenet):
    """The reference's Mask2Former: FrozenBN (detectron2's default NORM) and FREEZE_AT 0, every stage trains."""
    model = build_model(deep_merge(MASK2FORMER, {"backbone": "resnet50", "backbone_weights": "imagenet"}), 2)
    body = model.backbone.body
    assert all(type(m) is DtypeKeepingFrozenBatchNorm2d for m in _norm_layers(body))
    assert torch.equal(body.layer4[2].bn3.running_mean, imagenet.layer4[2].bn3.running_mean)
    _check_frozen_stages(model, body, frozen=())


def test_frozen_stages_freeze_their_batch_norm_too(imagenet):
    """model.frozen_stages with model.norm batch: frozen stages get FrozenBatchNorm2d, the others BatchNorm2d."""
    config = deep_merge(MASK2FORMER, {"backbone": "resnet50", "backbone_weights": "imagenet", "norm": "batch",
                                      "frozen_stages": 2})
    model = build_model(validate_config(deep_merge(DATASET, {"model": config}))["model"], 2)
    body = model.backbone.body
    for name, module in body.named_modules():
        if isinstance(module, (_BatchNorm, FrozenBatchNorm2d)):
            expected = DtypeKeepingFrozenBatchNorm2d if _stage(name) in ("conv1", "layer1") else nn.BatchNorm2d
            assert type(module) is expected, name
    assert torch.equal(body.layer1[0].bn1.running_var, imagenet.layer1[0].bn1.running_var)
    assert torch.equal(body.layer2[0].bn1.running_var, imagenet.layer2[0].bn1.running_var)
    _check_frozen_stages(model, body, frozen=("conv1", "layer1"))


def test_sync_gives_sync_batch_norm(imagenet):
    model = build_model(deep_merge(MASK2FORMER, {"backbone": "resnet50", "backbone_weights": "imagenet",
                                                 "norm": "sync"}), 2)
    body = model.backbone.body
    assert all(type(m) is nn.SyncBatchNorm for m in _norm_layers(body))
    assert torch.equal(body.layer2[0].bn1.running_var, imagenet.layer2[0].bn1.running_var)
    body.train()
    body(torch.rand(2, 3, 64, 64))  # one process: it acts as BatchNorm
    assert not torch.equal(body.layer2[0].bn1.running_var, imagenet.layer2[0].bn1.running_var)

    mask_rcnn = build_model(deep_merge(MASK_RCNN, {"backbone_weights": "imagenet", "norm": "sync"}), 2)
    for name, module in mask_rcnn.net.backbone.body.named_modules():
        if isinstance(module, (_BatchNorm, FrozenBatchNorm2d)):
            expected = DtypeKeepingFrozenBatchNorm2d if _stage(name) in ("conv1", "layer1") else nn.SyncBatchNorm
            assert type(module) is expected, name


def test_ema_teacher_keeps_the_pretrained_frozen_statistics(imagenet):
    student = build_model(deep_merge(MASK_RCNN, {"backbone_weights": "imagenet"}), num_categories=2)
    teacher = copy.deepcopy(student)
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    sum(student.losses([torch.rand(3, 64, 64)], [_targets(2)]).values()).backward()
    optimizer.step()
    before = teacher.net.backbone.body.layer2[0].conv1.weight.clone()
    ema_update(teacher, student, decay=0.9)
    body, pretrained = teacher.net.backbone.body, imagenet.state_dict()
    frozen = [name for name, m in body.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53
    for name in frozen:
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            torch.testing.assert_close(body.state_dict()[f"{name}.{buffer}"], pretrained[f"{name}.{buffer}"])
    assert not torch.equal(body.layer2[0].conv1.weight, before)  # the trained parameters did move


def test_frozen_batch_norm_keeps_its_inputs_dtype_as_detectron2s(imagenet):
    """Under bf16 autocast the frozen-BN ResNet-50 keeps bf16 activations, as detectron2's FrozenBatchNorm2d
    (torchvision's turns them to float32); in float32 it computes torchvision's values to the bit."""
    torch.manual_seed(0)
    torchvision_norm = FrozenBatchNorm2d(8)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(torchvision_norm, name).uniform_(0.5, 2.0)
    norm = DtypeKeepingFrozenBatchNorm2d(8)
    norm.load_state_dict(torchvision_norm.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(norm(x), torchvision_norm(x))
    half = x.bfloat16()
    assert norm(half).dtype == torch.bfloat16 and torchvision_norm(half).dtype == torch.float32
    torch.testing.assert_close(norm(half).float(), torchvision_norm(half), rtol=0.02, atol=0.02)
    backbone = build_model(deep_merge(MASK2FORMER, {"backbone": "resnet50", "backbone_weights": "imagenet"}), 2).backbone
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone(torch.rand(1, 3, 64, 64))
    assert [f.dtype for f in features] == [torch.bfloat16] * 4


@pytest.mark.parametrize("model, message", [
    ({"backbone": "resnet50_fpn", "norm": "frozen"}, r"model\.norm: 'frozen' keeps pre-trained statistics"),
    ({"backbone": "resnet50_fpn", "frozen_stages": 2}, r"model\.frozen_stages: 2 stages would keep their random"),
    ({"backbone": "tiny", "frozen_stages": 0}, r"model\.frozen_stages: counts ResNet-50 stages"),
    ({"norm": "synced"}, r"model\.norm: 'synced' is not one of \['auto', 'frozen', 'batch', 'sync'\]"),
    ({"frozen_stages": 6}, r"model\.frozen_stages: 6 is greater than the maximum of 5"),
])
def test_norm_keys_are_checked(model, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(deep_merge(DATASET, {"model": model}))


def test_plans_normalise_as_the_reference():
    config = load_config([REPO / "config" / "config.yaml"])
    assert config["model"]["norm"] == "auto" and config["model"]["frozen_stages"] is None
    cityscapes = load_config([REPO / "config" / "config.yaml", REPO / "config" / "datasets" / "cityscapes.yaml"])
    assert cityscapes["model"]["norm"] == "sync"  # Base-Cityscapes-InstanceSegmentation.yaml: NORM "SyncBN"


# -- the set loss's normaliser over processes ------------------------------------------------------
TARGETS_PER_RANK = ([3, 2], [1])  # masks per image: rank 0 has 5, rank 1 has 1; their mean is 3


def _num_masks_worker(rank: int, world_size: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(MASK2FORMER, num_categories=2)
    images = [torch.rand(3, 64, 64) for _ in TARGETS_PER_RANK[rank]]
    targets = [_targets(n) for n in TARGETS_PER_RANK[rank]]
    labels = [t["labels"] - 1 for t in targets]
    criterion = model.net.criterion
    local = criterion.get_num_masks(labels, torch.device("cpu")).item()
    torch.manual_seed(1)
    alone = {k: v.item() for k, v in model.losses(images, targets).items()}
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        averaged = criterion.get_num_masks(labels, torch.device("cpu")).item()
        none = criterion.get_num_masks([labels[0][:0]], torch.device("cpu")).item()
        torch.manual_seed(1)
        together = {k: v.item() for k, v in model.losses(images, targets).items()}
    finally:
        dist.destroy_process_group()
    result = {"local": local, "averaged": averaged, "none": none, "alone": alone, "together": together}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_set_loss_divides_by_the_mean_number_of_masks_over_processes(tmp_path):
    """As the reference's criterion: num_masks all-reduced, divided by the world size, at least 1."""
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_num_masks_worker, args=(2, rendezvous, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["local"] for r in results] == [5.0, 1.0]  # one process: its own count
    assert [r["averaged"] for r in results] == [3.0, 3.0]  # (5 + 1) / 2 on every process
    assert [r["none"] for r in results] == [1.0, 1.0]  # no mask anywhere: clamped to 1
    for rank, result in enumerate(results):
        ratio = sum(TARGETS_PER_RANK[rank]) / 3.0  # mask and dice losses were divided by the local count
        for name in ("loss_mask", "loss_dice", "loss_mask_aux", "loss_dice_aux"):
            assert result["together"][name] == pytest.approx(result["alone"][name] * ratio, rel=1e-5), (rank, name)
        assert result["together"]["loss_cross_entropy"] == pytest.approx(result["alone"]["loss_cross_entropy"])


def test_set_loss_normaliser_in_one_process_is_the_batch_count():
    assert not dist.is_initialized()
    from gdis.models.mask2former import average_num_masks

    labels = [torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)]
    assert average_num_masks(labels, torch.device("cpu")).item() == 3.0
    assert average_num_masks(labels[1:], torch.device("cpu")).item() == 1.0
    assert os.environ.get("WORLD_SIZE", "1") == "1"
