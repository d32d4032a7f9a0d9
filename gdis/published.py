"""The paper's and related methods' published results (gdis/published_results.yaml), as a tidy frame."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import yaml

from gdis.distill import METHODS
from gdis.models import ARCH_BACKBONES

PUBLISHED_PATH = Path(__file__).with_name("published_results.yaml")
# Each published metric and the column of gdis's metrics files that it can stand beside.
PUBLISHED_METRICS = {"coco_mask_AP": "mask_AP", "cityscapes_AP": "cityscapes_AP"}
METRIC_NAMES = {"coco_mask_AP": "COCO mask AP", "cityscapes_AP": "Cityscapes AP (official evaluator)"}
ENTRY_KEYS = ("entry", "method", "arch", "backbone", "source", "dataset", "metric", "AP")
PUBLISHED_COLUMNS = ["entry", "method", "arch", "backbone", "source", "dataset", "metric", "label_percent", "AP"]


def check_entry(item: object, path: str | Path, index: int) -> None:
    """Raise ValueError naming the file, the item and the key when a published item is malformed."""
    where = f"{path}, item {index + 1}"
    if not isinstance(item, dict) or set(item) != set(ENTRY_KEYS):
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"{where}: expected exactly the keys {', '.join(ENTRY_KEYS)}; got {keys}")
    where = f"{path}, {item['entry']!r} ({item['dataset']})"
    if item["method"] is not None and item["method"] not in METHODS:
        raise ValueError(f"{where}: method {item['method']!r} is not a gdis method ({', '.join(METHODS)}) or null")
    if item["arch"] is not None and item["arch"] not in ARCH_BACKBONES:
        raise ValueError(f"{where}: arch {item['arch']!r} is not a gdis model.arch ({', '.join(ARCH_BACKBONES)}) "
                         "or null")
    if item["backbone"] is not None and item["backbone"] not in ARCH_BACKBONES.get(item["arch"], ()):
        raise ValueError(f"{where}: backbone {item['backbone']!r} is not a model.backbone of arch {item['arch']!r}")
    if item["metric"] not in PUBLISHED_METRICS:
        raise ValueError(f"{where}: metric {item['metric']!r} is not one of {', '.join(PUBLISHED_METRICS)}")
    values = item["AP"]
    if not isinstance(values, dict) or not values or not all(
            isinstance(value, (int, float)) for pair in values.items() for value in pair):
        raise ValueError(f"{where}: AP must map label percentages to numbers")


@functools.cache
def published_results(path: str | Path = PUBLISHED_PATH) -> pd.DataFrame:
    """One row per (entry, dataset, label percentage) of the published numbers; the file is checked first."""
    with open(path, encoding="utf-8") as handle:
        items = yaml.safe_load(handle)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of published results")
    for index, item in enumerate(items):
        check_entry(item, path, index)
    rows = [{**{key: item[key] for key in ENTRY_KEYS if key != "AP"}, "label_percent": float(percent), "AP": float(value)}
            for item in items for percent, value in item["AP"].items()]
    table = pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)
    duplicated = table[table.duplicated(["entry", "dataset", "metric", "label_percent"], keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise ValueError(f"{path}: {first['entry']!r} gives {first['dataset']} at {first['label_percent']:g} % twice")
    return table


def published_for(dataset: str) -> pd.DataFrame:
    """Published numbers of one dataset (empty when none are known, e.g. the synthetic demo)."""
    table = published_results()
    return table[table["dataset"] == dataset].reset_index(drop=True)
