"""Synthetic dataset families, chosen by ``dataset.synthetic.family``.

'shapes' is the built-in demo (gdis.synthetic). 'cells' (microscopy-like) and 'parts'
(industrial-like) are held out: they test whether a recipe tuned on the demo generalises, and
are never used to tune it (config/datasets/heldout_*.yaml).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

from gdis.families.cells import CellsSpec, generate_cells_dataset
from gdis.families.parts import PartsSpec, generate_parts_dataset
from gdis.synthetic import DatasetSpec, SyntheticSpec, generate_synthetic_dataset

log = logging.getLogger(__name__)

# family -> (its spec, its generator). Shapes reads its keys from dataset.synthetic itself (as before families
# existed); every other family from its own section dataset.synthetic.<family>, plus the shared keys.
FAMILIES: dict[str, tuple[type[DatasetSpec], Callable[[str | Path, DatasetSpec], None]]] = {
    "shapes": (SyntheticSpec, generate_synthetic_dataset),
    "cells": (CellsSpec, generate_cells_dataset),
    "parts": (PartsSpec, generate_parts_dataset),
}
SHARED_KEYS = tuple(field.name for field in dataclasses.fields(DatasetSpec))


def spec_from_config(synthetic: dict) -> DatasetSpec:
    """The spec that ``dataset.synthetic`` describes; a bad value raises ValueError naming the config section."""
    family = synthetic.get("family", "shapes")
    if family not in FAMILIES:
        raise ValueError(f"dataset.synthetic.family: unknown family {family!r} (choose from {', '.join(FAMILIES)})")
    spec_class = FAMILIES[family][0]
    if family == "shapes":
        names = [field.name for field in dataclasses.fields(SyntheticSpec)]
        fields = {name: synthetic[name] for name in names if name in synthetic}
        section = "dataset.synthetic"
    else:
        fields = {name: synthetic[name] for name in SHARED_KEYS if name in synthetic} | synthetic.get(family, {})
        section = f"dataset.synthetic / dataset.synthetic.{family}"
    try:
        return spec_class(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{section}: {error}") from None


def generate_from_config(out_dir: str | Path, synthetic: dict) -> DatasetSpec:
    """Generate the dataset that ``dataset.synthetic`` describes into ``out_dir``; return its spec."""
    spec = spec_from_config(synthetic)
    FAMILIES[synthetic.get("family", "shapes")][1](out_dir, spec)
    return spec


def synthesize_configured(dataset: dict, out_dir: str | Path) -> DatasetSpec:
    """``gdis synthesize``: the dataset that the config's ``dataset`` section describes (``source: synthetic``)."""
    if dataset["source"] != "synthetic":
        raise ValueError(f"dataset.source is {dataset['source']!r}, not 'synthetic': nothing to generate")
    spec = generate_from_config(out_dir, dataset["synthetic"])
    log.info("wrote the synthetic %s dataset to %s", dataset["synthetic"]["family"], out_dir)
    return spec
