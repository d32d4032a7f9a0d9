"""Config validation: defaults, errors that name the key, cross-field checks, shipped configs valid."""

from __future__ import annotations

import pytest

from gdis.config import ConfigError, deep_merge, format_percent, load_config, load_schema, validate_config
from tests.conftest import REPO

MINIMAL = {"dataset": {"name": "shapes", "source": "synthetic"}}


def test_minimal_config_gets_every_default():
    config = validate_config(MINIMAL)
    assert config["train"]["unlabeled_weight"] == 2.0
    assert config["train"]["pseudo_label"]["score_threshold"] == 0.7
    assert config["dataset"]["synthetic"]["num_train"] == 400
    assert config["resources"]["train"]["mem_mb"] == 4000


def test_every_schema_default_is_itself_valid():
    """The defaults and the schema cannot drift: a config of defaults only validates."""
    validate_config(MINIMAL)
    assert "default" not in load_schema()["properties"]["dataset"]


@pytest.mark.parametrize("name", ["config.yaml", "micro.yaml"])
def test_shipped_configs_are_valid(name):
    files = [REPO / "config" / "config.yaml"] + ([REPO / "config" / name] if name != "config.yaml" else [])
    load_config(files)


@pytest.mark.parametrize("plan", ["datasets/coco.yaml", "datasets/cityscapes.yaml", "examples/my_dataset.yaml"])
def test_real_datasets_get_the_papers_strong_view(plan):
    """The demo scales the blur to its 128 px images; a plan layered on the demo config must not inherit that."""
    config = load_config([REPO / "config" / "config.yaml", REPO / "config" / plan])
    photometric = ("color_jitter", "color_jitter_probability", "grayscale_probability", "blur_sigma", "blur_probability")
    paper = validate_config(MINIMAL)["train"]["augment"]
    assert {key: config["train"]["augment"][key] for key in photometric} == {key: paper[key] for key in photometric}


def test_config_examples_in_docs_are_valid():
    load_config([REPO / "config" / "config.yaml", REPO / "config" / "examples" / "my_dataset.yaml"])


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key train\.iteratoins"):
        validate_config(deep_merge(MINIMAL, {"train": {"iteratoins": 10}}))


def test_wrong_type_names_key_and_expectation():
    with pytest.raises(ConfigError, match=r"train\.lr: 'fast' is not of type 'number'.*expected: Base learning rate"):
        validate_config(deep_merge(MINIMAL, {"train": {"lr": "fast"}}))


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"dataset: 'source' is a required property"):
        validate_config({"dataset": {"name": "x"}})


@pytest.mark.parametrize("percent", [0, -1, 100.5])
def test_label_percent_outside_range(percent):
    with pytest.raises(ConfigError, match=r"splits\.label_percents\.0"):
        validate_config(deep_merge(MINIMAL, {"splits": {"label_percents": [percent]}}))


def test_unknown_method_is_named():
    with pytest.raises(ConfigError, match=r"methods\.1: 'mean_teacher' is not one of"):
        validate_config(deep_merge(MINIMAL, {"methods": ["supervised", "mean_teacher"]}))


def test_burn_in_beyond_iterations():
    with pytest.raises(ConfigError, match=r"train\.burn_in: 50 must be below train\.iterations \(50\)"):
        validate_config(deep_merge(MINIMAL, {"train": {"iterations": 50, "burn_in": 50, "lr_steps": []}}))


def test_coco_source_needs_its_paths():
    with pytest.raises(ConfigError, match=r"dataset\.val_annotations: required when dataset\.source is 'coco'"):
        validate_config({"dataset": {"name": "x", "source": "coco", "train_images": "a", "train_annotations": "b",
                                     "val_images": "c"}})


def test_guided_distillation_needs_supervised_teacher():
    with pytest.raises(ConfigError, match="guided_distillation needs 'supervised'"):
        validate_config(deep_merge(MINIMAL, {"methods": ["guided_distillation"]}))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config([bad])


def test_later_files_win(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("train:\n  lr: 0.5\n")
    config = load_config([REPO / "config" / "config.yaml", override])
    assert config["train"]["lr"] == 0.5
    assert config["train"]["iterations"] == load_config([REPO / "config" / "config.yaml"])["train"]["iterations"]


@pytest.mark.parametrize("value, text", [(0.4, "0.4"), (10.0, "10"), (100, "100"), (2.5, "2.5")])
def test_format_percent(value, text):
    assert format_percent(value) == text


def test_schema_lists_the_architectures_and_backbones_of_the_code():
    """The schema's model.arch and model.backbone enums are ARCH_BACKBONES's, which gdis.models builds."""
    from gdis.config import ARCH_BACKBONES
    from gdis.models import ARCHITECTURES

    model = load_schema()["properties"]["model"]["properties"]
    assert model["arch"]["enum"] == list(ARCH_BACKBONES)
    assert set(ARCHITECTURES) == set(ARCH_BACKBONES)
    backbones = list(dict.fromkeys(b for names in ARCH_BACKBONES.values() for b in names))
    assert model["backbone"]["enum"] == backbones


SCHEMA_KEYWORDS = {"description", "type", "default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                   "enum", "items", "properties", "additionalProperties", "required", "pattern", "minItems",
                   "maxItems", "uniqueItems", "multipleOf"}


def test_schema_properties_use_only_schema_keywords():
    """A description with an unquoted comma in YAML flow style turns its tail into a bogus keyword: none may."""
    def bogus(node, path):
        for name, child in node.get("properties", {}).items():
            yield from ([f"{path}{name}: {sorted(set(child) - SCHEMA_KEYWORDS)}"] if set(child) - SCHEMA_KEYWORDS else [])
            yield from bogus(child, f"{path}{name}.")
            if isinstance(child.get("items"), dict):
                yield from bogus(child["items"], f"{path}{name}[].")

    assert list(bogus(load_schema(), "")) == []
