"""Pre-trained weight loading from local files and the standard caches, offline."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn


def resolve_torchvision_weights(weights) -> Path:
    """Path of a torchvision weights file in the TORCH_HOME cache; a clear error when it is not there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pre-trained weights {weights} not found at {path}. Download {weights.url} on a machine with "
            f"internet access and place it there (or set TORCH_HOME), or set model.backbone_weights to a local file."
        )
    return path


def load_state_dict_file(path: str | Path) -> dict:
    """Load tensors only (``weights_only=True``): a checkpoint from elsewhere cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot load weights from {path}: {error}") from None


def load_backbone_state(body: nn.Module, path: str | Path) -> None:
    """Load a backbone state dict (plain, or wrapped in 'model'/'state_dict', optionally prefixed) into ``body``."""
    state = load_state_dict_file(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    for prefix in ("backbone.body.", "backbone.", "module."):
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    own = body.state_dict()
    matched = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    if not matched:
        raise ValueError(f"weights file {path} has no tensor that fits the backbone (first keys: {list(state)[:5]})")
    body.load_state_dict(matched, strict=False)
