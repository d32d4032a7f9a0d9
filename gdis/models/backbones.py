"""Mask2Former backbones: each gives four feature maps, at strides 4, 8, 16 and 32, and their channel counts.

- ``tiny``: the small group-normalised CNN of the Mask R-CNN demo, for CPU runs and tests;
- ``resnet50``: torchvision's ResNet-50, its batch norm and frozen stages as ``model.norm`` and
  ``model.frozen_stages`` say (``resnet50_body``; by default frozen statistics under pre-trained weights);
- ``swin_tiny|small|base|large``: Hugging Face transformers' Swin, with a layer norm on each output;
- ``dinov2_vits14|vitb14|vitl14``: Hugging Face transformers' DINOv2 ViT, its single-scale patch tokens
  resized to the four scales the pixel decoder needs, as the reference implementation does.

Each backbone knows where its published pre-trained weights live: a torchvision file in the
``TORCH_HOME`` cache or a Hugging Face hub repository in the ``HF_HOME`` cache (see ``gdis.models.weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from gdis.models.mask_rcnn import TINY_WIDTHS, TinyBody

STAGES = {"stage1": "0", "stage2": "1", "stage3": "2", "stage4": "3"}
RESNET_STAGES = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


class ConvBackbone(nn.Module):
    """A CNN body whose four stages (strides 4-32) are returned as a list."""

    def __init__(self, body: nn.Module, return_layers: dict[str, str], channels: list[int]) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())


class SwinFeatures(nn.Module):
    """transformers' Swin backbone, all four stages out, each with its own layer norm."""

    def __init__(self, embed_dim: int, depths: list[int], num_heads: list[int], window_size: int, image_size: int) -> None:
        super().__init__()
        from transformers import SwinBackbone, SwinConfig

        config = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                            image_size=image_size, drop_path_rate=0.3, out_features=list(STAGES))
        self.body = SwinBackbone(config)
        self.channels = list(self.body.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).feature_maps)


class Dinov2Features(nn.Module):
    """transformers' DINOv2 ViT, its patch tokens turned into maps at strides 4, 8, 16 and 32 as the reference does.

    As GuidedDistillation's ``DinoV2BaseBackbone`` / ``DinoV2LargeBackbone``
    (mask2former/modeling/backbone/dinov2.py): the image is resized (nearest) up to a multiple of the 14-pixel
    patch, the layer-normed patch tokens (``x_norm_patchtokens``; transformers' ``last_hidden_state``) form one
    map, which is resized (nearest) to each stride's size and projected by a 1x1 convolution to 128, 256, 512
    and 1024 channels (``base`` 128 times stride / 4). The reference adds a whole patch to a size already
    divisible by 14; here such a size is kept.
    """

    STRIDES = (4, 8, 16, 32)

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        # image_size 518 matches the position embeddings of the published checkpoints.
        config = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                              patch_size=14, image_size=518, layerscale_value=1.0)
        self.body = Dinov2Model(config)
        self.patch_size = config.patch_size
        self.channels = [128 * stride // 4 for stride in self.STRIDES]
        self.projections = nn.ModuleList(nn.Conv2d(hidden_size, channels, 1) for channels in self.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        grid = (-(-height // self.patch_size), -(-width // self.patch_size))
        resized = F.interpolate(x, size=(grid[0] * self.patch_size, grid[1] * self.patch_size))
        tokens = self.body(pixel_values=resized).last_hidden_state[:, 1:]  # drop the class token
        token_map = tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return [projection(F.interpolate(token_map, size=(height // stride, width // stride)))
                for projection, stride in zip(self.projections, self.STRIDES)]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and where its published pre-trained weights are."""

    build: Callable[[dict], nn.Module]  # from the model config (model.* keys)
    torchvision_weights: object = None  # a torchvision weights enum, cached under TORCH_HOME
    hub_repo: str | None = None  # a Hugging Face hub repository, cached under HF_HOME
    imagenet: bool = False  # whether those published weights are ImageNet weights


def _tiny(model_config: dict) -> nn.Module:
    return ConvBackbone(TinyBody(), STAGES, list(TINY_WIDTHS))


# -- ResNet-50: normalisation and frozen stages (model.norm, model.frozen_stages) -------------------------
NORMS = ("frozen", "batch", "sync")
# detectron2's five ResNet stages, in the order MODEL.BACKBONE.FREEZE_AT counts them: the stem, then res2-res5.
RESNET_FREEZE_ORDER = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
# The stages frozen by default under pre-trained weights (model.frozen_stages null), per architecture:
# - mask2former: 0, as the reference: MODEL.BACKBONE.FREEZE_AT: 0 in GuidedDistillation's (and Mask2Former's)
#   configs/coco/instance-segmentation/Base-COCO-InstanceSegmentation.yaml and
#   configs/cityscapes/instance-segmentation/Base-Cityscapes-InstanceSegmentation.yaml;
# - mask_rcnn: 2 (stem + res2 / layer1), detectron2's default MODEL.BACKBONE.FREEZE_AT (GuidedDistillation's
#   config/defaults.py), which is torchvision's trainable_backbone_layers=3 for pre-trained detection backbones.
REFERENCE_FROZEN_STAGES = {"mask_rcnn": 2, "mask2former": 0}


def resnet_norm(model_config: dict) -> str:
    """``model.norm`` resolved: 'auto' is 'frozen' under pre-trained weights (model.backbone_weights), else 'batch'.

    'frozen' is detectron2's default MODEL.RESNETS.NORM "FrozenBN" (GuidedDistillation's config/defaults.py;
    its COCO base config leaves it), 'sync' its "SyncBN" of the Cityscapes base config.
    """
    norm = model_config.get("norm", "auto")
    if norm == "auto":
        return "frozen" if model_config["backbone_weights"] else "batch"
    if norm not in NORMS:
        raise ValueError(f"model.norm: {norm!r} is none of auto, {', '.join(NORMS)}")
    return norm


def resnet_frozen_stages(model_config: dict) -> int:
    """``model.frozen_stages`` resolved: null is the architecture's reference under pre-trained weights, else 0."""
    stages = model_config.get("frozen_stages")
    if stages is None:
        return REFERENCE_FROZEN_STAGES[model_config["arch"]] if model_config["backbone_weights"] else 0
    if not 0 <= stages <= len(RESNET_FREEZE_ORDER):
        raise ValueError(f"model.frozen_stages: {stages} is not between 0 and {len(RESNET_FREEZE_ORDER)}")
    return stages


class DtypeKeepingFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d whose output keeps its input's dtype, as detectron2's FrozenBatchNorm2d.

    torchvision's multiplies the input by float32 statistics, which promotes a bfloat16 activation under autocast
    to float32: each frozen-BN ResNet activation would be kept twice, in float32 and as the next convolution's
    bfloat16 copy (measured on a ResNet-50 at 1024 x 1024: 1.6 GiB of activations instead of 0.8). In float32
    it computes exactly what torchvision's does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)


def frozen_batch_norm(norm: nn.Module) -> DtypeKeepingFrozenBatchNorm2d:
    """A frozen batch norm holding the statistics and affine parameters of the batch-norm layer ``norm``."""
    frozen = DtypeKeepingFrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(norm, name) is not None:
                getattr(frozen, name).copy_(getattr(norm, name))
    return frozen


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every batch-norm layer in it replaced by a frozen one (detectron2's freeze())."""
    if isinstance(module, _BatchNorm):
        return frozen_batch_norm(module)
    for name, child in module.named_children():
        setattr(module, name, freeze_batch_norm(child))
    return module


def resnet50_body(model_config: dict) -> nn.Module:
    """torchvision's ResNet-50 normalised and frozen as ``model.norm`` and ``model.frozen_stages`` say.

    'frozen' builds it as torchvision's pre-trained detection models do (``norm_layer=FrozenBatchNorm2d``, here
    ``DtypeKeepingFrozenBatchNorm2d``);
    'batch' and 'sync' with BatchNorm2d (then SyncBatchNorm). The first frozen stages (0: none; 1: the stem;
    2: the stem and layer1, ...; 5: all) do not train: their parameters need no gradient and their batch
    norm becomes frozen, so their statistics never move either (detectron2's FREEZE_AT).
    """
    norm, stages = resnet_norm(model_config), resnet_frozen_stages(model_config)
    body = resnet50(weights=None, norm_layer=DtypeKeepingFrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d)
    for stage in RESNET_FREEZE_ORDER[:stages]:
        for name in stage:
            part = getattr(body, name)
            part.requires_grad_(False)
            setattr(body, name, freeze_batch_norm(part))
    # torch's SyncBatchNorm: statistics over all processes' images on GPUs (NCCL); in one process, BatchNorm.
    return nn.SyncBatchNorm.convert_sync_batchnorm(body) if norm == "sync" else body


def _resnet50(model_config: dict) -> nn.Module:
    return ConvBackbone(resnet50_body(model_config), RESNET_STAGES, [256, 512, 1024, 2048])


def _swin(embed_dim, depths, num_heads, window_size, image_size):
    return lambda model_config: SwinFeatures(embed_dim, depths, num_heads, window_size, image_size)


def _dinov2(hidden_size, num_layers, num_heads):
    return lambda model_config: Dinov2Features(hidden_size, num_layers, num_heads)


BACKBONES = {
    "tiny": BackboneSpec(_tiny),
    "resnet50": BackboneSpec(_resnet50, torchvision_weights=ResNet50_Weights.IMAGENET1K_V1, imagenet=True),
    "swin_tiny": BackboneSpec(_swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
                              hub_repo="microsoft/swin-tiny-patch4-window7-224", imagenet=True),
    "swin_small": BackboneSpec(_swin(96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
                               hub_repo="microsoft/swin-small-patch4-window7-224", imagenet=True),
    "swin_base": BackboneSpec(_swin(128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
                              hub_repo="microsoft/swin-base-patch4-window12-384-in22k", imagenet=True),
    "swin_large": BackboneSpec(_swin(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
                               hub_repo="microsoft/swin-large-patch4-window12-384-in22k", imagenet=True),
    "dinov2_vits14": BackboneSpec(_dinov2(384, 12, 6), hub_repo="facebook/dinov2-small"),
    "dinov2_vitb14": BackboneSpec(_dinov2(768, 12, 12), hub_repo="facebook/dinov2-base"),
    "dinov2_vitl14": BackboneSpec(_dinov2(1024, 24, 16), hub_repo="facebook/dinov2-large"),
}


def build_backbone(name: str, model_config: dict) -> nn.Module:
    """The backbone ``name`` for ``model_config`` (ResNet's norm and frozen stages depend on model.backbone_weights)."""
    return BACKBONES[name].build(model_config)
