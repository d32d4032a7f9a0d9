"""Load, merge and validate experiment configuration against the JSON schema in workflow/schemas."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Iterable

import jsonschema
import yaml

from gdis.distill import DISTILLATION_METHODS, METHODS, SUPERVISED
from gdis.models import (
    ARCH_BACKBONES,  # arch -> backbone names; the schema's enums repeat them (tests/test_config.py)
    ARCHITECTURES,
)

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
# Backbones with batch norm, which model.norm and model.frozen_stages apply to (the others ignore model.norm).
BATCH_NORM_BACKBONES = ("resnet50_fpn", "resnet50")


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or inconsistent; the message names the key."""


@functools.cache
def load_schema() -> dict:
    with SCHEMA_PATH.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``, recursing into nested mappings (Snakemake's rule)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(paths: Iterable[str | Path]) -> dict:
    """Merge the YAML files in order (later ones win) and validate the result."""
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    return validate_config(merged)


def _fill_defaults(schema: dict, data: dict) -> None:
    for key, subschema in schema.get("properties", {}).items():
        if key not in data and "default" in subschema:
            data[key] = copy.deepcopy(subschema["default"])
        if isinstance(data.get(key), dict) and subschema.get("type") == "object":
            _fill_defaults(subschema, data[key])


def _key_of(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_of(error)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = "" if key == "<top level>" else key + "."
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key {', '.join(prefix + name for name in unknown)} (known keys here: {known})"
    if error.validator == "required":
        return f"{key}: {error.message}"
    expected = error.schema.get("description", "")
    return f"{key}: {error.message}" + (f" — expected: {expected}" if expected else "")


def validate_config(config: dict) -> dict:
    """Return a validated copy of ``config`` with defaults filled in, or raise ConfigError naming every bad key."""
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, not {type(config).__name__}")
    schema = load_schema()
    filled = copy.deepcopy(config)
    _fill_defaults(schema, filled)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    _check_cross_fields(filled)
    return filled


def _check_cross_fields(config: dict) -> None:
    problems = []
    dataset = config["dataset"]
    if dataset["source"] == "coco":
        for key in DATASET_PATH_KEYS:
            if not dataset.get(key):
                problems.append(f"dataset.{key}: required when dataset.source is 'coco'")
    synthetic = dataset.get("synthetic", {})
    if dataset["source"] == "synthetic":
        if synthetic["min_objects"] > synthetic["max_objects"]:
            problems.append("dataset.synthetic.min_objects: must not exceed dataset.synthetic.max_objects")
        if synthetic["min_object_size"] > synthetic["max_object_size"]:
            problems.append("dataset.synthetic.min_object_size: must not exceed dataset.synthetic.max_object_size")
    if dataset["source"] == "ade20k" and not dataset["ade20k"]["local_copy"]:
        for name, spec in dataset["ade20k"]["archives"].items():
            if spec["md5"] is None and spec["size"] is None:
                problems.append(f"dataset.ade20k.archives.{name}: md5 and size are both null, so nothing would "
                                "check the download (give the archive's size or MD5)")
    if config["splits"]["protocol"] == "list" and not config["splits"]["list_file"]:
        problems.append("splits.list_file: required when splits.protocol is 'list'")
    percents = config["splits"]["label_percents"]
    if len(set(percents)) != len(percents):
        problems.append(f"splits.label_percents: {percents} lists a percentage twice")
    if len(set(config["splits"]["folds"])) != len(config["splits"]["folds"]):
        problems.append(f"splits.folds: {config['splits']['folds']} lists a fold twice")
    model = config["model"]
    if model["backbone"] not in ARCH_BACKBONES[model["arch"]]:
        problems.append(f"model.backbone: '{model['backbone']}' is not a backbone of model.arch '{model['arch']}' "
                        f"(choose from {', '.join(ARCH_BACKBONES[model['arch']])})")
    train = config["train"]
    if any(method in DISTILLATION_METHODS for method in config["methods"]) and train["burn_in"] >= train["iterations"]:
        problems.append(
            f"train.burn_in: {train['burn_in']} must be below train.iterations ({train['iterations']}), "
            "or distillation never starts"
        )
    for method in config["methods"]:
        if METHODS[method].needs_teacher and SUPERVISED not in config["methods"]:
            problems.append(f"methods: {method} needs '{SUPERVISED}' too (its pre-trained teacher)")
    if any(step > train["iterations"] for step in train["lr_steps"]):
        problems.append(f"train.lr_steps: {train['lr_steps']} has a step beyond train.iterations ({train['iterations']})")
    problems += _training_problems(config)
    problems += _augment_problems(config)
    problems += _model_problems(config["model"])
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _training_problems(config: dict) -> list[str]:
    train, problems = config["train"], []
    if train["warmup_iterations"] > train["iterations"]:
        problems.append(f"train.warmup_iterations: {train['warmup_iterations']} is beyond train.iterations "
                        f"({train['iterations']}): the learning rate would never reach train.lr")
    if train["eval_period"] % train["log_period"]:
        problems.append(f"train.eval_period: {train['eval_period']} is not a multiple of train.log_period "
                        f"({train['log_period']}): evaluations are logged with the losses")
    if train["lr_steps"] != sorted(set(train["lr_steps"])):
        problems.append(f"train.lr_steps: {train['lr_steps']} must be strictly increasing")
    augment = train["augment"]
    if augment["color_jitter"][3] > 0.5:
        problems.append(f"train.augment.color_jitter: hue jitter {augment['color_jitter'][3]} must be at most 0.5")
    if augment["blur_sigma"][0] > augment["blur_sigma"][1]:
        problems.append(f"train.augment.blur_sigma: {augment['blur_sigma']} must be [low, high] with low <= high")
    distilling = any(method in DISTILLATION_METHODS for method in config["methods"])
    mask_target, arch = train["pseudo_label"]["mask_target"], config["model"]["arch"]
    if mask_target not in ARCHITECTURES[arch].mask_targets:
        problems.append(f"train.pseudo_label.mask_target: '{mask_target}' is not made by model.arch '{arch}' "
                        f"(choose from {', '.join(ARCHITECTURES[arch].mask_targets)})")
    ignore, score = train["pseudo_label"]["ignore_threshold"], train["pseudo_label"]["score_threshold"]
    if ignore is not None and not ARCHITECTURES[arch].ignores_uncertain:
        problems.append(f"train.pseudo_label.ignore_threshold: model.arch '{arch}' has no background to leave "
                        "uncertain detections out of (set it to null)")
    if ignore is not None and ignore >= score:
        problems.append(f"train.pseudo_label.ignore_threshold: {ignore} must be below train.pseudo_label."
                        f"score_threshold ({score}): detections scoring between the two are ignored")
    if distilling and train["pseudo_label"]["score_threshold"] >= 1:
        problems.append(f"train.pseudo_label.score_threshold: {train['pseudo_label']['score_threshold']} keeps no "
                        "detection (scores are below 1), so distillation would have no targets")
    return problems


def _augment_problems(config: dict) -> list[str]:
    """What is wrong with ``train.augment``'s geometry keys (gdis.augment) for this config, each naming its key."""
    augment, model = config["train"]["augment"], config["model"]
    geometry, problems = augment["geometry"], []
    low, high = geometry["scale_range"]
    if low > high:
        problems.append(f"train.augment.geometry.scale_range: {geometry['scale_range']} must be [low, high] with "
                        "low <= high")
    too_long = [side for side in geometry["short_sides"] if side > geometry["max_size"]]
    if too_long:
        problems.append(f"train.augment.geometry.short_sides: {too_long} exceed train.augment.geometry.max_size "
                        f"({geometry['max_size']})")
    view = {"large_scale_jitter": geometry["target_size"], "short_side_crop": geometry["crop_size"]}.get(
        geometry["kind"])
    # The views are the training resolution already: the model's own resize must leave them as they are.
    if view is not None and (model["min_size"] != [min(view)] or model["max_size"] < max(view)):
        problems.append(f"model.min_size: {model['min_size']} (model.max_size {model['max_size']}) would rescale the "
                        f"{view[0]}x{view[1]} views of train.augment.geometry.kind '{geometry['kind']}'; use "
                        f"[{min(view)}] and model.max_size >= {max(view)}")
    return problems


def _model_problems(model: dict) -> list[str]:
    problems = []
    too_large = [size for size in model["min_size"] + [model["test_size"]] if size > model["max_size"]]
    if too_large:
        problems.append(f"model.max_size: {model['max_size']} is below the image side(s) {too_large} of model.min_size "
                        "/ model.test_size")
    weights = model["backbone_weights"]
    if weights == "imagenet" and model["backbone"] == "tiny":
        problems.append("model.backbone_weights: 'imagenet' exists for resnet50_fpn only, not for backbone 'tiny' "
                        "(use null or a state-dict file)")
    if model["backbone"] in BATCH_NORM_BACKBONES and not weights:
        if model["norm"] == "frozen":
            problems.append("model.norm: 'frozen' keeps pre-trained statistics, but model.backbone_weights is null "
                            "(use 'batch', 'sync' or 'auto', or set model.backbone_weights)")
        if model["frozen_stages"]:
            problems.append(f"model.frozen_stages: {model['frozen_stages']} stages would keep their random "
                            "initialisation, model.backbone_weights being null (use 0 or null)")
    elif model["backbone"] not in BATCH_NORM_BACKBONES and model["frozen_stages"] is not None:
        problems.append(f"model.frozen_stages: counts ResNet-50 stages ({', '.join(BATCH_NORM_BACKBONES)}), "
                        f"not those of backbone '{model['backbone']}' (use null)")
    return problems


def format_percent(percent: float) -> str:
    """Canonical text of a label percentage for paths and tables: 0.4 -> '0.4', 10.0 -> '10'."""
    text = f"{float(percent):.6f}".rstrip("0").rstrip(".")
    return text


DATASET_PATH_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")
# Where a generated or prepared dataset keeps its files under data/<name>, in DATASET_PATH_KEYS order.
PREPARED_LAYOUTS = {
    "synthetic": ("train", "annotations/train.json", "val", "annotations/val.json"),
    "coco2017": ("train2017", "annotations/instances_train2017.json", "val2017",
                 "annotations/instances_val2017.json"),
    "cityscapes": ("leftImg8bit/train", "annotations/instances_train.json", "leftImg8bit/val",
                   "annotations/instances_val.json"),
    "ade20k": ("ADEChallengeData2016/images/training", "annotations/instances_train.json",
               "ADEChallengeData2016/images/validation", "annotations/instances_val.json"),
}


def dataset_paths(config: dict) -> dict[str, str]:
    """Image folders and annotation files of the configured dataset (generated or prepared ones live under data/<name>)."""
    dataset = config["dataset"]
    layout = PREPARED_LAYOUTS.get(dataset["source"])
    if layout is None:
        return {key: dataset[key] for key in DATASET_PATH_KEYS}
    return {key: f"data/{dataset['name']}/{relative}" for key, relative in zip(DATASET_PATH_KEYS, layout)}


# Official ground truth some prepared datasets keep for their own evaluators, under data/<name>.
OFFICIAL_GROUND_TRUTH = {"cityscapes": "gtFine/val"}


def official_ground_truth(config: dict) -> str | None:
    """The folder of the val set's official ground truth (Cityscapes' gtFine/val), or None."""
    dataset = config["dataset"]
    relative = OFFICIAL_GROUND_TRUTH.get(dataset["source"])
    return f"data/{dataset['name']}/{relative}" if relative else None


def extra_unlabeled_paths(config: dict) -> dict[str, str]:
    """Images folder and image-info file of extra unlabelled data (COCO unlabeled2017), or {} when unused."""
    dataset = config["dataset"]
    if dataset["source"] == "coco2017" and dataset["coco2017"]["unlabeled2017"]:
        root = f"data/{dataset['name']}"
        return {"images": f"{root}/unlabeled2017", "image_info": f"{root}/annotations/image_info_unlabeled2017.json"}
    return {}
