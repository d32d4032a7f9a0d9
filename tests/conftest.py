"""Shared fixtures: a micro synthetic dataset and a config pointing at it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gdis.config import load_config
from gdis.synthetic import SyntheticSpec, generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
MICRO_SPEC = SyntheticSpec(seed=3, num_train=12, num_val=4, image_size=64, max_objects=3)


def service_unavailable(reason: str) -> None:
    """Skip a test whose outside program is missing; with GDIS_REQUIRE_SERVICES=1 (CI) fail instead."""
    if os.environ.get("GDIS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (GDIS_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory) -> Path:
    """A 12 + 4 image synthetic dataset in COCO format (generated once per test session)."""
    root = tmp_path_factory.mktemp("micro") / "dataset"
    generate_synthetic_dataset(root, MICRO_SPEC)
    return root


@pytest.fixture
def micro_config_file(micro_dataset, tmp_path) -> Path:
    """The micro test config, pointed at the micro dataset as a COCO-format dataset on disk."""
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    config["dataset"] = {
        "name": "micro",
        "source": "coco",
        "train_images": str(micro_dataset / "train"),
        "train_annotations": str(micro_dataset / "annotations" / "train.json"),
        "val_images": str(micro_dataset / "val"),
        "val_annotations": str(micro_dataset / "annotations" / "val.json"),
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def micro_config(micro_config_file) -> dict:
    return load_config([micro_config_file])


def split_trainer(config: dict, method: str, split_dir: Path, images: Path, out_dir: Path, world=None, **files):
    """A Trainer of one run on a split folder written by ``write_split`` (labeled.json, unlabeled.json); ``files``
    are the other fields of RunFiles (teacher, burn_in_checkpoint, hidden_annotations, val_annotations, ...)."""
    from gdis.builder import RunFiles
    from gdis.trainer import Trainer

    files = RunFiles(labeled=Path(split_dir) / "labeled.json", unlabeled=Path(split_dir) / "unlabeled.json",
                     images=images, **files)
    return Trainer.from_files(config, method, files, out_dir, world, run_info={"label_percent": 25.0, "fold": 1})


def train_file_args(split_dir: Path, images: Path) -> list[str]:
    """The file arguments of ``gdis train`` for a split folder written by ``gdis split`` / ``write_split``."""
    split_dir = Path(split_dir)
    return ["--labeled", str(split_dir / "labeled.json"), "--unlabeled", str(split_dir / "unlabeled.json"),
            "--manifest", str(split_dir / "manifest.json"), "--images", str(images)]


def gallery_file_args(split_dir: Path, dataset: Path) -> list[str]:
    """The file arguments of ``gdis gallery`` for a split folder and a dataset in gdis's synthetic layout."""
    split_dir, dataset = Path(split_dir), Path(dataset)
    return ["--labeled", str(split_dir / "labeled.json"), "--unlabeled", str(split_dir / "unlabeled.json"),
            "--train-annotations", str(dataset / "annotations" / "train.json"), "--train-images", str(dataset / "train"),
            "--val-annotations", str(dataset / "annotations" / "val.json"), "--val-images", str(dataset / "val")]


def resnet50_in_torch_cache(torch_home: Path, seed: int):
    """A random ResNet-50 saved under torchvision's ImageNet file name in ``torch_home``: what it loads."""
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(seed)
    reference = resnet50()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    return reference


def copy_workflow(target: Path) -> Path:
    for name in ("Snakefile", "workflow", "config", "environment.yml", "constraints.txt"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy(source, target / name)
    return target


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A scratch copy of the workflow (Snakefile, rules, configs) to run Snakemake in."""
    return copy_workflow(tmp_path)


@pytest.fixture(scope="session")
def micro_workflow_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The micro config through the real workflow, once per session, in a scratch copy.

    As a default run, it ends by writing its HTML report (report.after_run).
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    command = ["snakemake", "--cores", "2", "--configfile", "config/micro.yaml"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=1200)
    return workdir, result
