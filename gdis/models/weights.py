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


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def huggingface_hub_cache() -> Path:
    """The hub cache as huggingface_hub resolves it (HF_HUB_CACHE, else HF_HOME/hub), read when called."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def resolve_hub_weights(repo_id: str) -> Path:
    """Path of a Hugging Face hub repository's weights file in the local cache; nothing is downloaded."""
    from huggingface_hub import try_to_load_from_cache

    cache = huggingface_hub_cache()
    for filename in HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
    looked = " or ".join(f"{cache}/models--{repo_id.replace('/', '--')}/snapshots/<revision>/{name}"
                         for name in HUB_WEIGHT_FILES)
    raise FileNotFoundError(
        f"pre-trained weights of {repo_id} not found: looked for {looked}. Download the repository on a machine "
        f"with internet access (hf download {repo_id}) and copy its cache there (or set HF_HOME), "
        f"or set model.backbone_weights to a local file."
    )


def read_weights(path: str | Path) -> dict:
    """A state dict from a .safetensors file, a torch file (tensors only), or a folder holding one of them."""
    path = Path(path)
    if path.is_dir():
        files = [path / name for name in HUB_WEIGHT_FILES if (path / name).is_file()]
        if not files:
            raise FileNotFoundError(f"weights folder {path} holds neither {' nor '.join(HUB_WEIGHT_FILES)}")
        path = files[0]
    if path.suffix != ".safetensors":
        return load_state_dict_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"cannot load weights from {path}: {error}") from None


# Prefixes that wrap a backbone's own names in the files of torchvision, transformers and gdis checkpoints.
WEIGHT_PREFIXES = ("module.", "net.model.pixel_level_module.encoder.backbone.body.", "backbone.body.", "backbone.",
                   "swin.", "dinov2.", "body.")


def load_matching_state(module: nn.Module, path: str | Path, what: str) -> list[str]:
    """Load the tensors of ``path`` that belong to ``module``; return the names of the module's tensors not in it.

    Keys outside the module (a classifier head) are ignored. A tensor whose name fits but whose shape
    does not, or a file with no fitting tensor at all, is an error naming the file: it is the wrong variant.
    """
    state = read_weights(path)
    for wrapper in ("model", "state_dict", "student"):  # "student": a gdis checkpoint's trained network
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    own = module.state_dict()
    for prefix in WEIGHT_PREFIXES:
        if not any(key in own for key in state) and any(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    mismatched = [f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                  for key, value in state.items() if key in own and own[key].shape != value.shape]
    if mismatched:
        raise ValueError(f"weights file {path} does not fit {what}: {len(mismatched)} tensor(s) differ in shape, "
                         f"e.g. {'; '.join(mismatched[:3])}")
    matched = {key: value for key, value in state.items() if key in own}
    if not matched:
        raise ValueError(f"weights file {path} has no tensor of {what} (first keys in the file: {list(state)[:5]})")
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def load_transformers_weights(body: nn.Module, path: str | Path, what: str) -> list[str]:
    """Load a transformers-format weights file or folder into the transformers model ``body``, offline.

    Published files name tensors as on the hub; transformers' own loader (``from_pretrained``)
    renames them to the model's current names. Returns the names of the body's tensors not in the file.
    """
    import tempfile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = path
        if path.is_file():  # from_pretrained reads folders: present the file under its standard name
            folder = Path(scratch)
            name = HUB_WEIGHT_FILES[0] if path.suffix == ".safetensors" else HUB_WEIGHT_FILES[1]
            (folder / name).symlink_to(path.resolve())
        try:
            loaded, info = type(body).from_pretrained(folder, config=body.config, local_files_only=True,
                                                      output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"cannot load weights from {path} into {what}: {error}") from None
    if info["mismatched_keys"]:
        raise ValueError(f"weights file {path} does not fit {what}: {len(info['mismatched_keys'])} tensor(s) differ "
                         f"in shape, e.g. {'; '.join(str(m) for m in list(info['mismatched_keys'])[:3])}")
    missing = set(info["missing_keys"])
    own = body.state_dict()
    if missing >= set(own):
        raise ValueError(f"weights file {path} has no tensor of {what}")
    body.load_state_dict({key: value for key, value in loaded.state_dict().items() if key not in missing}, strict=False)
    return sorted(missing)
