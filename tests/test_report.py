"""Tests for gdis.report: metrics table (CSV/Markdown) and the two figures, on fabricated inputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from matplotlib.figure import Figure

from gdis import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics(**overrides) -> dict:
    """A complete metrics record; keyword arguments replace fields."""
    record = {"dataset": "shapes", "arch": "mask_rcnn", "backbone": "tiny", "weights": "random",
              "method": "guided_distillation", "label_percent": 5.0, "fold": 1, "protocol": "gdis", "model": "ema_teacher",
              "iteration": 600, "num_images": 100,
              "mask_AP": 12.3, "mask_AP50": 30.1, "mask_AP75": 10.0, "mask_APs": 1.0, "mask_APm": 9.0,
              "mask_APl": 20.0, "box_AP": 14.2, "box_AP50": 33.0, "box_AP75": 12.0}
    record.update(overrides)
    return record


def write_metrics(directory, records) -> list:
    """Write each record to its own JSON file; return the paths in the given order."""
    paths = []
    for index, record in enumerate(records):
        path = directory / "eval" / f"{index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({record.get("model", "student"): record}), encoding="utf-8")
        paths.append(path)
    return paths


def write_log(path, entries) -> None:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")


def log_entries(distillation_from: int | None, unsupervised: bool = True) -> list:
    """A short training log; phase switches to distillation at ``distillation_from`` (never when None)."""
    entries = []
    for step in range(0, 200, 10):
        distilling = distillation_from is not None and step >= distillation_from
        entry = {"step": step, "phase": "distillation" if distilling else "burn_in", "lr": 0.01,
                 "loss": 2.0 - step / 200, "loss_supervised": 1.5 - step / 300, "seconds_per_step": 0.1,
                 "loss_supervised/loss_mask": 0.3}
        if unsupervised and distilling:
            entry["loss_unsupervised"] = 0.5
            entry["pseudo_labels_per_image"] = 2.0 + step / 100
            entry.update(pseudo_label_precision=0.8, pseudo_label_recall=0.6 + step / 1000,
                         pseudo_label_mask_iou=0.85, pseudo_label_boundary_iou=0.55)
        entries.append(entry)
    return entries


@pytest.fixture
def folds_table(tmp_path):
    """Records for all three methods, given shuffled; two folds at 5 %, one run at 0.4 %, supervised only at 100 %."""
    records = [
        metrics(method="guided_distillation", label_percent=5.0, fold=2, model="student", mask_AP=12.0),
        metrics(method="supervised", label_percent=100.0, fold=1, model="student", mask_AP=40.0),
        metrics(method="guided_distillation", label_percent=5.0, fold=1, model="ema_teacher", mask_AP=10.0),
        metrics(method="standard_burnin", label_percent=0.4, fold=1, model="ema_teacher", mask_AP=5.0),
        metrics(method="guided_distillation", label_percent=5.0, fold=2, model="ema_teacher", mask_AP=12.0),
        metrics(method="supervised", label_percent=5.0, fold=1, model="student", mask_AP=8.123456),
        metrics(method="guided_distillation", label_percent=5.0, fold=1, model="student", mask_AP=10.0),
        metrics(method="guided_distillation", label_percent=0.4, fold=1, model="ema_teacher", mask_AP=6.0),
    ]
    return write_metrics(tmp_path, records)


def test_collect_metrics_sorts_by_method_label_percent_fold_model(folds_table):
    table = report.collect_metrics(folds_table)
    assert list(table.columns) == report.TABLE_COLUMNS
    keys = list(table[["method", "label_percent", "fold", "model"]].itertuples(index=False, name=None))
    assert keys == [
        ("supervised", 5.0, 1, "student"),
        ("supervised", 100.0, 1, "student"),
        ("standard_burnin", 0.4, 1, "ema_teacher"),
        ("guided_distillation", 0.4, 1, "ema_teacher"),
        ("guided_distillation", 5.0, 1, "student"),
        ("guided_distillation", 5.0, 1, "ema_teacher"),
        ("guided_distillation", 5.0, 2, "student"),
        ("guided_distillation", 5.0, 2, "ema_teacher"),
    ]


def test_write_table_csv_is_tidy_rounded_and_byte_stable(tmp_path, folds_table):
    csv_path, markdown_path = tmp_path / "table.csv", tmp_path / "table.md"
    report.write_table(folds_table, csv_path, markdown_path)
    first = csv_path.read_bytes()
    lines = first.decode().splitlines()
    assert lines[0] == ",".join(report.CSV_COLUMNS)
    assert len(lines) == 1 + len(folds_table)
    rows = [line.split(",") for line in lines[1:]]
    percent_index = report.TABLE_COLUMNS.index("label_percent")
    assert [row[percent_index] for row in rows] == ["5", "100", "0.4", "0.4", "5", "5", "5", "5"]
    assert rows[0][report.TABLE_COLUMNS.index("mask_AP")] == "8.12"
    read_back = pd.read_csv(csv_path)
    assert list(read_back.columns) == report.CSV_COLUMNS
    report.write_table(list(reversed(folds_table)), csv_path, markdown_path)
    assert csv_path.read_bytes() == first


def test_write_table_markdown_shows_mean_std_and_missing_cells(tmp_path, folds_table):
    markdown_path = tmp_path / "table.md"
    report.write_table(folds_table, tmp_path / "table.csv", markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    mask_section = text.split("Box AP")[0]
    assert "Mask AP on the val set (%)" in mask_section
    assert "| method | model | 0.4 % | 5 % | 100 % |" in mask_section
    assert "| guided distillation | EMA teacher | 6.0 | 11.0 ± 1.4 | – |" in mask_section
    assert "| supervised | student | – | 8.1 | 40.0 |" in mask_section
    assert "| standard burn-in | EMA teacher | 5.0 | – | – |" in mask_section
    assert "| guided distillation | student |" in mask_section
    assert "Box AP on the val set (%)" in text


def test_missing_key_names_the_file(tmp_path):
    record = metrics()
    del record["box_AP75"]
    paths = write_metrics(tmp_path, [metrics(fold=2), record])
    with pytest.raises(ValueError, match=r"1\.json.*box_AP75"):
        report.collect_metrics(paths)


def test_duplicate_run_is_rejected(tmp_path):
    paths = write_metrics(tmp_path, [metrics(), metrics(mask_AP=1.0)])
    with pytest.raises(ValueError, match="same run twice"):
        report.collect_metrics(paths)


def test_ap_vs_labels_plot_writes_a_deterministic_png(tmp_path, folds_table):
    table = report.collect_metrics(folds_table)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    report.plot_ap_vs_labels(table, first, "mask AP")
    report.plot_ap_vs_labels(table, second, "mask AP")
    assert first.read_bytes().startswith(PNG_SIGNATURE)
    assert first.read_bytes() == second.read_bytes()


def test_ap_vs_labels_plot_has_a_panel_per_network(tmp_path):
    from PIL import Image

    rows = [metrics(method="supervised", model="student"),
            metrics(method="supervised", model="student", arch="mask2former", backbone="tiny")]
    table = report.collect_metrics(write_metrics(tmp_path, rows))
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    report.plot_ap_vs_labels(table[table["arch"] == "mask2former"], one, "one network")
    report.plot_ap_vs_labels(table, two, "two networks")
    with Image.open(one) as single, Image.open(two) as double:
        assert double.width == 2 * single.width and double.height == single.height


def test_ap_vs_labels_plot_with_a_single_point(tmp_path):
    table = report.collect_metrics(write_metrics(tmp_path, [metrics(method="supervised", model="student")]))
    png_path = tmp_path / "single.png"
    report.plot_ap_vs_labels(table, png_path, "one point")
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)


def test_training_curves_plot(tmp_path):
    gd_log, supervised_log = tmp_path / "gd.jsonl", tmp_path / "sup.jsonl"
    write_log(gd_log, log_entries(distillation_from=100))
    write_log(supervised_log, log_entries(distillation_from=None, unsupervised=False))
    png_path = tmp_path / "curves.png"
    report.plot_training_curves({"guided_distillation 5% fold 1": gd_log, "supervised 5% fold 1": supervised_log},
                                png_path, "training")
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)


def test_training_curves_show_pseudo_label_quality_in_one_panel(tmp_path, monkeypatch):
    """Precision, recall, mask IoU and boundary IoU share a panel, told apart by line style and named in the legend."""
    figures = []
    monkeypatch.setattr(report, "_save_png", lambda figure, path: figures.append(figure))
    gd_log = tmp_path / "gd.jsonl"
    write_log(gd_log, log_entries(distillation_from=100))
    report.plot_training_curves({"guided_distillation 5% fold 1": gd_log}, tmp_path / "curves.png", "training")
    axes = {a.get_title(): a for a in figures[0].axes}
    quality = axes["pseudo-label quality (hidden labels)"]
    lines = [line for line in quality.get_lines() if len(line.get_xdata()) > 2]  # not the switch marker
    assert len(lines) == 4 and len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 4
    # the last point of a centred 5-entry mean averages the last 3 entries: recall 0.6 + (170 + 180 + 190) / 3000
    assert [round(float(line.get_ydata()[-1]), 2) for line in lines] == [0.8, 0.78, 0.85, 0.55]
    assert quality.get_ylim() == (0, 1)
    legend = [text.get_text() for a in figures[0].axes if a.get_legend() for text in a.get_legend().get_texts()]
    assert {"pseudo-label precision", "pseudo-label recall", "pseudo-label mask IoU of matched",
            "pseudo-label boundary IoU of matched"} <= set(legend)


def test_training_curves_plot_one_run_without_unsupervised_columns(tmp_path):
    log_path = tmp_path / "sup.jsonl"
    write_log(log_path, log_entries(distillation_from=None, unsupervised=False))
    png_path = tmp_path / "curves.png"
    report.plot_training_curves({"supervised": log_path}, png_path, "training")
    assert png_path.read_bytes().startswith(PNG_SIGNATURE)


def test_read_training_log_fills_missing_as_nan_and_finds_the_switch(tmp_path):
    log_path = tmp_path / "log.jsonl"
    write_log(log_path, list(reversed(log_entries(distillation_from=100))))
    log = report.read_training_log(log_path)
    assert log["step"].is_monotonic_increasing
    assert log.loc[log["step"] < 100, "loss_unsupervised"].isna().all()
    assert report.distillation_starts(log) == [100]


def test_bad_log_line_names_file_and_line(tmp_path):
    log_path = tmp_path / "log.jsonl"
    log_path.write_text(json.dumps({"step": 0, "phase": "burn_in"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 2"):
        report.read_training_log(log_path)


def test_failed_plot_leaves_no_file(tmp_path, folds_table, monkeypatch):
    def broken_savefig(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(PNG_SIGNATURE)
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    out_dir = tmp_path / "figures"
    with pytest.raises(RuntimeError, match="disk full"):
        report.plot_ap_vs_labels(report.collect_metrics(folds_table), out_dir / "ap.png", "mask AP")
    assert list(out_dir.iterdir()) == []


def test_failed_table_write_leaves_no_file(tmp_path, folds_table, monkeypatch):
    def broken_render(table):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_markdown", broken_render)
    out_dir = tmp_path / "tables"
    with pytest.raises(RuntimeError, match="render failed"):
        report.write_table(folds_table, out_dir / "table.csv", out_dir / "table.md")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
