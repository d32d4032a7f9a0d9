"""Training curves as data: the CSV table, and TensorBoard event files read back by TensorBoard."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from gdis.training_curves import curve_table, run_folder_name, write_curve_table, write_tensorboard


@pytest.fixture
def logs(tmp_path):
    supervised = tmp_path / "supervised.jsonl"
    supervised.write_text("".join(json.dumps({"step": s, "phase": "supervised", "loss": 3.0 / s, "lr": 0.01}) + "\n"
                                  for s in (10, 20)))
    guided = tmp_path / "guided.jsonl"
    guided.write_text("".join(json.dumps({
        "step": s, "phase": "burn_in", "loss": 5.0 / s, "lr": 0.01, "pseudo_labels_per_image": 1.5,
        "pseudo_label_precision": None if s == 10 else 0.5, "pseudo_label_recall": 0.25,
        "pseudo_label_mask_iou": None if s == 10 else 0.8, "pseudo_label_boundary_iou": None if s == 10 else 0.4})
        + "\n" for s in (10, 20)))
    return {"supervised 5% fold 1": supervised, "guided_distillation 5% fold 1": guided}


def test_curve_table_is_one_row_per_run_and_step(logs, tmp_path):
    table = curve_table(logs)
    assert list(table["run"]) == ["supervised 5% fold 1"] * 2 + ["guided_distillation 5% fold 1"] * 2
    assert table["pseudo_label_precision"].isna().tolist() == [True, True, True, False]
    assert table["pseudo_label_mask_iou"].tolist()[3] == 0.8 and table["pseudo_label_boundary_iou"].tolist()[3] == 0.4
    write_curve_table(logs, tmp_path / "curves.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "curves.csv"), table, check_dtype=False)


def test_tensorboard_reads_the_event_files_back(logs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_tensorboard(logs, tmp_path / "tb")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["guided_distillation_5pct_fold_1",
                                                                   "supervised_5pct_fold_1"]
    events = EventAccumulator(str(tmp_path / "tb" / run_folder_name("guided_distillation 5% fold 1"))).Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(10, 0.5), (20, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("pseudo_label_precision")] == [(20, 0.5)]  # None is not a point
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("pseudo_label_boundary_iou")] == [(20, 0.4)]

