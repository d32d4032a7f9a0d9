"""Training curves as data: one CSV table and TensorBoard event files, from the runs' train_log.jsonl files."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping

import pandas as pd

from gdis.io import atomic_directory, write_text
from gdis.report import CURVE_COLUMNS, read_training_log


def curve_table(logs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Rows of (run, step, phase, every curve value), runs in the given order, steps increasing."""
    if not logs:
        raise ValueError("no training logs given")
    frames = [read_training_log(path).assign(run=label) for label, path in logs.items()]
    return pd.concat(frames, ignore_index=True)[["run", "step", "phase", *CURVE_COLUMNS]]


def write_curve_table(logs: Mapping[str, str | os.PathLike], csv_path: str | os.PathLike) -> None:
    write_text(csv_path, curve_table(logs).to_csv(index=False, lineterminator="\n"))


def run_folder_name(label: str) -> str:
    """A run label as a folder name TensorBoard lists: 'guided_distillation 5% fold 1' -> 'guided_distillation_5pct_fold_1'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("%", "pct")).strip("_")


def write_tensorboard(logs: Mapping[str, str | os.PathLike], directory: str | os.PathLike) -> None:
    """One event-file folder per run under ``directory`` (replaced as a whole), a scalar per curve and step."""
    from torch.utils.tensorboard import SummaryWriter

    table = curve_table(logs)
    with atomic_directory(directory) as tmp:
        for label, rows in table.groupby("run", sort=False):
            writer = SummaryWriter(log_dir=str(Path(tmp) / run_folder_name(label)))
            for row in rows.itertuples(index=False):
                for column in CURVE_COLUMNS:
                    value = getattr(row, column)
                    if not math.isnan(value):
                        writer.add_scalar(column, value, int(row.step))
            writer.close()
