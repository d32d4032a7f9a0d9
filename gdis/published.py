"""The paper's and related methods' published mask AP (gdis/published_results.yaml), as a tidy frame."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import yaml

PUBLISHED_PATH = Path(__file__).with_name("published_results.yaml")
PUBLISHED_COLUMNS = ["entry", "method", "source", "dataset", "label_percent", "mask_AP"]


@functools.cache
def published_results(path: str | Path = PUBLISHED_PATH) -> pd.DataFrame:
    """One row per (entry, dataset, label percentage) of the published numbers."""
    with open(path, encoding="utf-8") as handle:
        entries = yaml.safe_load(handle)
    rows = [
        {"entry": entry["entry"], "method": entry["method"], "source": entry["source"], "dataset": dataset,
         "label_percent": float(percent), "mask_AP": float(value)}
        for entry in entries
        for dataset, values in entry["mask_AP"].items()
        for percent, value in values.items()
    ]
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


def published_for(dataset: str) -> pd.DataFrame:
    """Published numbers of one dataset (empty when none are known, e.g. the synthetic demo)."""
    table = published_results()
    return table[table["dataset"] == dataset].reset_index(drop=True)
