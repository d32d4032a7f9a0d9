"""Which config files make the plan of a dataset and of a network, merged and validated once each.

A job's configuration is the merge, in this order (later files win, key by key), of
1. ``config/config.yaml``, the defaults and the built-in demo;
2. the dataset's plan ``config/datasets/<dataset>.yaml``, when there is one;
3. for jobs of one network (training, evaluation, galleries), its preset ``config/networks/<network>.yaml``;
4. the user's own files (``snakemake --configfile``), in their order.

The workflow finds the dataset and the network in the wildcards of the file it is asked for
(``results/tables/coco.csv``, ``results/models/coco/mask2former_r50/...``) and hands each command the
exact list of files it planned the job with, so a command run by hand, by Snakemake or by DVC reads
the same configuration.
"""

from __future__ import annotations

import functools
from pathlib import Path

from gdis.config import ConfigError, deep_merge, load_config, read_yaml

DEFAULT_CONFIG = "config/config.yaml"
DATASET_PLAN_DIR = "datasets"
NETWORK_PRESET_DIR = "networks"


class Plans:
    """The config files and the validated config of each (dataset, network) a workflow run plans."""

    def __init__(self, user_files: list[str], default: str = DEFAULT_CONFIG) -> None:
        self.default = default
        self.config_dir = Path(default).parent
        self.user_files = list(user_files)

    def dataset_plan(self, dataset: str) -> str | None:
        """``config/datasets/<dataset>.yaml`` when it exists (and is not already one of the user's files)."""
        path = self.config_dir / DATASET_PLAN_DIR / f"{dataset}.yaml"
        if not path.is_file() or str(path) in self.user_files:
            return None
        return str(path)

    def network_preset(self, network: str) -> str:
        return str(self.config_dir / NETWORK_PRESET_DIR / f"{network}.yaml")

    def files(self, dataset: str, network: str | None = None) -> list[str]:
        """The config files of ``dataset`` (and of ``network``, for its training and evaluation jobs), in merge order."""
        files = [self.default]
        plan = self.dataset_plan(dataset)
        if plan:
            files.append(plan)
        if network is not None:
            files.append(self.network_preset(network))
        return files + self.user_files

    def args(self, dataset: str, network: str | None = None) -> str:
        """The files as the ``--config`` arguments of a gdis command (after checking they make a valid config)."""
        self.config(dataset, network)
        return " ".join(self.files(dataset, network))

    @functools.cache
    def config(self, dataset: str, network: str | None = None) -> dict:
        """The validated config of ``dataset`` (and ``network``); a ConfigError names the files and the key at fault."""
        files = self.files(dataset, network)
        if network is not None:
            if network not in self.networks(dataset):
                raise ConfigError(f"network {network!r} is not among the networks of dataset {dataset!r} "
                                  f"({', '.join(self.networks(dataset))}; key `networks`)")
            if not Path(self.network_preset(network)).is_file():
                raise ConfigError(f"networks: {network!r} has no preset file {self.network_preset(network)}")
        try:
            config = load_config(files)
        except ConfigError as error:
            raise ConfigError(f"{' + '.join(files)}: {error}") from None
        if config["dataset"]["name"] != dataset:
            raise ConfigError(f"dataset {dataset!r} was asked for, but {' + '.join(files)} set dataset.name to "
                              f"{config['dataset']['name']!r}")
        if network is not None:
            preset = read_yaml(self.network_preset(network)).get("model", {})
            for key in ("arch", "backbone"):
                if key in preset and config["model"][key] != preset[key]:
                    raise ConfigError(f"model.{key}: network {network!r} is a {preset[key]}, but a later config file "
                                      f"sets {config['model'][key]!r}; add a preset to config/networks instead")
        return config

    def networks(self, dataset: str) -> list[str]:
        return self.config(dataset)["networks"]

    @functools.cached_property
    def default_dataset(self) -> str:
        """The dataset of the default target: the one config.yaml and the user's files name."""
        return load_config([self.default, *self.user_files])["dataset"]["name"]

    def known_datasets(self) -> list[str]:
        """The default dataset and every dataset with a plan in config/datasets."""
        planned = sorted(path.stem for path in (self.config_dir / DATASET_PLAN_DIR).glob("*.yaml"))
        return list(dict.fromkeys([self.default_dataset, *planned]))

    def source(self, dataset: str) -> str | None:
        """``dataset.source`` of a dataset's files, read without validating them (to route rules); None when they
        name another dataset."""
        merged: dict = {}
        for path in self.files(dataset):
            merged = deep_merge(merged, read_yaml(path))
        named = merged.get("dataset", {})
        return named.get("source") if named.get("name") == dataset else None
