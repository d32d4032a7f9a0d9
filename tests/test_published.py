"""Published results: matched to gdis rows by network and metric, never a Mask R-CNN row beside a Mask2Former number."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import yaml

from gdis import report
from gdis.published import PUBLISHED_PATH, published_for, published_results

DATASET_METRICS = {"coco": "coco_mask_AP", "ade20k": "coco_mask_AP", "cityscapes": "cityscapes_AP"}


def _row(**fields) -> dict:
    row = dict.fromkeys(report.TABLE_COLUMNS, 1.0)
    row.update(weights="imagenet", protocol="list", fold=1, iteration=10, model="student", cityscapes_AP=float("nan"),
               cityscapes_AP50=float("nan"))
    row.update(fields)
    return row


def test_every_entry_names_its_network_and_metric():
    table = published_results()
    assert table[["arch", "backbone"]].notna().any(axis=None)
    assert set(table.groupby("dataset")["metric"].unique().map(tuple).items()) == {
        (dataset, (metric,)) for dataset, metric in DATASET_METRICS.items()}
    values = {(entry, dataset, percent): value for entry, dataset, percent, value
              in table[["entry", "dataset", "label_percent", "AP"]].itertuples(index=False)}
    assert values[("Guided Distillation (as listed by later work)", "ade20k", 10.0)] == 14.2
    assert values[("CAST (distilled student)", "ade20k", 10.0)] == 16.7
    assert values[("Guided Distillation (re-run by later work)", "cityscapes", 10.0)] == 30.8
    assert values[("Guided Distillation (Mask2Former, ResNet-50)", "coco", 2.0)] == 25.3
    pais = table[table["entry"] == "PAIS (Mask R-CNN)"]
    assert set(zip(pais["arch"], pais["backbone"])) == {("mask_rcnn", "resnet50_fpn")}


def test_cityscapes_rows_get_the_official_evaluator_number_of_their_network_only():
    rows = [_row(dataset="cityscapes", arch="mask2former", backbone="dinov2_vitl14", method="guided_distillation",
                 label_percent=10.0, cityscapes_AP=31.0),
            _row(dataset="cityscapes", arch="mask_rcnn", backbone="resnet50_fpn", method="guided_distillation",
                 label_percent=10.0),
            _row(dataset="cityscapes", arch="mask2former", backbone="resnet50", method="guided_distillation",
                 label_percent=10.0)]  # the re-run (30.8) gives no backbone: beside no row
    out = report.with_published(pd.DataFrame(rows, columns=report.TABLE_COLUMNS))
    assert out["paper_cityscapes_AP"].tolist()[0] == 33.9 and out["paper_cityscapes_AP"].iloc[1:].isna().all()
    assert out["paper_mask_AP"].isna().all()
    assert out["paper_entry"].tolist()[0] == "Guided Distillation (Mask2Former, DINOv2 ViT-L)"


def test_markdown_lists_networks_and_says_cityscapes_numbers_are_official_evaluator_ap():
    rows = [_row(dataset="cityscapes", arch="mask_rcnn", backbone="resnet50_fpn", method=method, label_percent=10.0,
                 cityscapes_AP=ap) for method, ap in [("supervised", 20.0), ("guided_distillation", 25.0)]]
    text = report.render_markdown(pd.DataFrame(rows, columns=report.TABLE_COLUMNS))
    assert "Cityscapes AP (the official evaluator, cityscapesscripts) on the val set" in text
    assert "| guided distillation | student | 25.0 |" in text.split("Cityscapes AP (the official")[1]
    assert "the Cityscapes numbers are the official evaluator's AP (cityscapesscripts), not COCO mask AP" in text
    assert ("| PAIS (Mask R-CNN) | mask_rcnn, resnet50_fpn | yes | Cityscapes AP (official evaluator) | 22.9 |"
            in text)
    assert ("| Guided Distillation (re-run by later work) | mask2former, ? | no | Cityscapes AP (official evaluator) "
            "| 30.8 |" in text)


def test_coco_markdown_has_no_cityscapes_section_and_marks_other_networks():
    rows = [_row(dataset="coco", arch="mask2former", backbone="resnet50", method="guided_distillation",
                 label_percent=1.0, mask_AP=20.0)]
    text = report.render_markdown(pd.DataFrame(rows, columns=report.TABLE_COLUMNS))
    assert "Cityscapes AP" not in text and "official evaluator" not in text
    assert "| Guided Distillation (Mask2Former, ResNet-50) | mask2former, resnet50 | yes | COCO mask AP | 21.5 |" in text
    assert "| PAIS (Mask R-CNN) | mask_rcnn, resnet50_fpn | no | COCO mask AP | 21.2 |" in text


def test_plot_shows_published_numbers_of_the_same_network_and_metric_only(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save_png", lambda figure, path: figures.append(figure))
    for arch, backbone, expected in [("mask_rcnn", "resnet50_fpn", {"published: PAIS (Mask R-CNN)"}),
                                     ("mask2former", "resnet50", {"published: Guided Distillation (Mask2Former, "
                                                                  "ResNet-50)", "published: S4M (Mask2Former, "
                                                                  "ResNet-50)"})]:
        rows = [_row(dataset="coco", arch=arch, backbone=backbone, method="guided_distillation", label_percent=1.0,
                     mask_AP=20.0)]
        table = pd.read_csv(io.StringIO(report.render_csv(pd.DataFrame(rows, columns=report.TABLE_COLUMNS))))
        report.plot_ap_vs_labels(table, tmp_path / "plot.png", "coco")
        labels = {text.get_text() for text in figures[-1].axes[0].get_legend().get_texts()}
        assert {label for label in labels if label.startswith("published")} == expected


@pytest.mark.parametrize("change, message", [
    ({"backbone": "resnet50"}, "backbone 'resnet50' is not a model.backbone of arch 'mask_rcnn'"),
    ({"arch": "yolo"}, "arch 'yolo' is not a gdis model.arch"),
    ({"metric": "mask_AP"}, "metric 'mask_AP' is not one of coco_mask_AP, cityscapes_AP"),
    ({"method": "unbiased_teacher"}, "method 'unbiased_teacher' is not a gdis method"),
    ({"AP": {10: "high"}}, "AP must map label percentages to numbers"),
])
def test_malformed_entry_is_named(tmp_path, change, message):
    item = {"entry": "PAIS (Mask R-CNN)", "method": None, "arch": "mask_rcnn", "backbone": "resnet50_fpn",
            "source": "s", "dataset": "coco", "metric": "coco_mask_AP", "AP": {1: 21.2}}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump([{**item, **change}]))
    with pytest.raises(ValueError, match=f"'PAIS \\(Mask R-CNN\\)' \\(coco\\): {message}"):
        published_results(path)
    del item["metric"]
    path.write_text(yaml.safe_dump([item]))
    with pytest.raises(ValueError, match="item 1: expected exactly the keys"):
        published_results(path)


def test_shipped_file_is_the_default():
    assert published_for("coco").equals(published_results(PUBLISHED_PATH)[lambda t: t["dataset"] == "coco"]
                                        .reset_index(drop=True))
