"""Which config files make the plan of each dataset and network (gdis.plans)."""

from __future__ import annotations

import pytest
import yaml

from gdis.config import ConfigError
from gdis.plans import Plans
from tests.conftest import REPO


def _write(path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A config folder: defaults (demo 'toy'), a dataset plan 'big', two network presets."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "config" / "config.yaml", {
        "dataset": {"name": "toy", "source": "synthetic"}, "networks": ["small"], "train": {"lr": 0.1}})
    _write(tmp_path / "config" / "datasets" / "big.yaml", {
        "dataset": {"name": "big", "source": "coco2017"}, "networks": ["small", "large"], "train": {"lr": 0.2}})
    _write(tmp_path / "config" / "networks" / "small.yaml", {"model": {"arch": "mask_rcnn", "backbone": "tiny"}})
    _write(tmp_path / "config" / "networks" / "large.yaml", {
        "model": {"arch": "mask2former", "backbone": "tiny"}, "train": {"lr": 0.3}})
    return tmp_path / "config"


def test_files_layer_defaults_dataset_network_then_the_users(config_dir, tmp_path):
    mine = _write(tmp_path / "mine.yaml", {"train": {"iterations": 700}})
    plans = Plans([mine])
    assert plans.files("big") == ["config/config.yaml", "config/datasets/big.yaml", mine]
    assert plans.files("big", "large") == ["config/config.yaml", "config/datasets/big.yaml",
                                           "config/networks/large.yaml", mine]
    assert plans.files("toy", "small") == ["config/config.yaml", "config/networks/small.yaml", mine]
    assert plans.config("big")["train"]["lr"] == 0.2 and plans.config("big", "large")["train"]["lr"] == 0.3
    assert plans.config("big", "large")["train"]["iterations"] == 700  # the user's file comes last and wins
    assert plans.networks("big") == ["small", "large"] and plans.config("big", "large")["model"]["arch"] == "mask2former"
    assert plans.args("big", "small") == "config/config.yaml config/datasets/big.yaml config/networks/small.yaml " + mine


def test_default_dataset_and_routing_by_source(config_dir, tmp_path):
    assert Plans([]).default_dataset == "toy"
    assert Plans([]).known_datasets() == ["toy", "big"]
    assert (Plans([]).source("toy"), Plans([]).source("big")) == ("synthetic", "coco2017")
    paths = {key: f"data/cells/{key}" for key in ("train_images", "train_annotations", "val_images", "val_annotations")}
    renamed = Plans([_write(tmp_path / "mine.yaml", {"dataset": {"name": "cells", "source": "coco", **paths}})])
    assert renamed.default_dataset == "cells" and renamed.known_datasets() == ["cells", "big"]
    assert renamed.source("toy") is None  # its files name another dataset
    # A plan that is also one of the user's files is layered once, in the user's place.
    assert Plans(["config/datasets/big.yaml"]).files("big") == ["config/config.yaml", "config/datasets/big.yaml"]


def test_errors_name_the_files_and_the_key(config_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"dataset 'toy' was asked for, but .*mine.yaml set dataset.name to 'cells'"):
        Plans([_write(tmp_path / "mine.yaml", {"dataset": {"name": "cells"}})]).config("toy")
    with pytest.raises(ConfigError, match=r"network 'large' is not among the networks of dataset 'toy' \(small; key"):
        Plans([]).config("toy", "large")
    with pytest.raises(ConfigError, match=r"model.backbone: network 'small' is a tiny, but a later config file sets "
                                          r"'resnet50_fpn'"):
        Plans([_write(tmp_path / "swap.yaml", {"model": {"backbone": "resnet50_fpn"}})]).config("toy", "small")
    with pytest.raises(ConfigError, match=r"config/datasets/big.yaml(.|\n)*unknown key train.lrr"):
        _write(config_dir / "datasets" / "big.yaml", {"dataset": {"name": "big", "source": "coco2017"},
                                                      "train": {"lrr": 1}})
        Plans([]).config("big")


def test_every_shipped_plan_and_network_validates():
    """Each dataset plan with each of its networks, and every preset on the demo, is a valid config."""
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        plans = Plans([])
        for dataset in plans.known_datasets():
            for network in plans.networks(dataset):
                assert plans.config(dataset, network)["dataset"]["name"] == dataset
        presets = sorted(path.stem for path in (REPO / "config" / "networks").glob("*.yaml"))
        assert presets, "no network presets"
        for preset in presets:
            plans = Plans([_write_preset_list(preset)])
            plans.config(plans.default_dataset, preset)
    finally:
        os.chdir(cwd)


def _write_preset_list(preset: str) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    handle.write(yaml.safe_dump({"networks": [preset]}))
    handle.close()
    return handle.name
