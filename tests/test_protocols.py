"""Split protocols: stac against an independent re-implementation, list files, determinism, dataset plans."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest

from gdis.protocols import read_image_list, stac_labeled_indices
from gdis.report import render_csv
from gdis.splits import choose_labeled, write_split


def generated_annotations(path, num_images: int, seed: int = 0) -> dict:
    """A COCO file with unsorted, gappy image ids (file order differs from id order), 0-3 boxes per image."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 * num_images, size=num_images, replace=False).tolist()
    images = [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 64, "height": 48} for image_id in ids]
    annotations = []
    for image_id in ids:
        for _ in range(int(rng.integers(0, 4))):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0,
                                "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path.write_text(json.dumps(coco))
    return coco


def reference_stac_split(coco: dict, percent: float, fold: int) -> tuple[list[dict], list[dict]]:
    """The STAC / mmdetection split_coco recipe, written out as it is described, with the global legacy generator."""
    np.random.seed(fold)
    image_list = coco["images"]
    labeled_total = int(percent / 100.0 * len(image_list))
    labeled_indices = set(np.random.choice(range(len(image_list)), size=labeled_total))
    labeled = [image for index, image in enumerate(image_list) if index in labeled_indices]
    ids = {image["id"] for image in labeled}
    return labeled, [ann for ann in coco["annotations"] if ann["image_id"] in ids]


@pytest.mark.parametrize("percent, fold", [(1, 1), (2, 3), (5, 5), (10, 2), (0.4, 1)])
def test_stac_matches_the_reference_recipe_image_for_image(tmp_path, percent, fold):
    source = tmp_path / "train.json"
    coco = generated_annotations(source, 3000)
    manifest = write_split(source, tmp_path / "split", percent, fold, seed=0, protocol="stac")
    labeled = json.loads((tmp_path / "split" / "labeled.json").read_text())
    expected_images, expected_annotations = reference_stac_split(coco, percent, fold)
    assert labeled["images"] == expected_images  # same images, same (file) order
    assert labeled["annotations"] == expected_annotations
    assert manifest["protocol"] == "stac" and manifest["split_name"] == f"{fold}@{percent}"
    draws = int(percent / 100 * 3000)
    assert 0 < manifest["num_labeled"] <= draws
    if draws >= 300:  # about 15 repeats expected
        assert manifest["num_labeled"] < draws, "draws with replacement repeat images"


def test_stac_count_on_the_size_of_coco():
    """COCO train2017's 118,287 images, folds 1-5: 1 % is 1,182 draws and 1,174-1,175 distinct images,
    10 % is 11,828 draws and 11,234-11,285 distinct images, as the published split files have."""
    counts = [len(stac_labeled_indices(118287, 1, fold)) for fold in range(1, 6)]
    assert all(1174 <= count <= 1175 for count in counts), counts
    counts = [len(stac_labeled_indices(118287, 10, fold)) for fold in range(1, 6)]
    assert min(counts) == 11234 and max(counts) == 11285, counts
    with pytest.raises(ValueError, match="draws int"):
        stac_labeled_indices(100, 0.4, 1)


@pytest.mark.parametrize("protocol", ["gdis", "stac"])
def test_splits_are_deterministic_to_the_byte(tmp_path, protocol):
    source = tmp_path / "train.json"
    generated_annotations(source, 500)
    for name in ("a", "b"):
        write_split(source, tmp_path / name, 10, fold=2, seed=0, protocol=protocol)
    for file in ("labeled.json", "unlabeled.json", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    other = write_split(source, tmp_path / "c", 10, fold=3, seed=0, protocol=protocol)
    assert other["labeled_image_ids"] != json.loads((tmp_path / "a" / "manifest.json").read_text())["labeled_image_ids"]


def test_list_protocol_reads_ids_file_names_and_cityscapes_annotation_names(tmp_path):
    images = [{"id": 7, "file_name": "aachen/aachen_000000_000019_leftImg8bit.png"},
              {"id": 9, "file_name": "bochum/bochum_000000_000313_leftImg8bit.png"},
              {"id": 11, "file_name": "ulm/ulm_000001_000019_leftImg8bit.png"}]
    listing = tmp_path / "perc_5.txt"
    listing.write_text("# labelled images\n11\nbochum_000000_000313_gtFine_instanceIds.png\n\n"
                       "aachen/aachen_000000_000019_leftImg8bit.png\n")
    assert read_image_list(listing, images) == [7, 9, 11]
    assert choose_labeled(images, "list", 5.0, 1, 0, listing) == [7, 9, 11]
    listing.write_text("11\nmissing_000000_000019_leftImg8bit.png\n")
    with pytest.raises(ValueError, match=r"perc_5.txt, line 2: 'missing_000000_000019_leftImg8bit.png' matches no"):
        read_image_list(listing, images)
    with pytest.raises(FileNotFoundError, match=r"perc_10.txt \(splits.list_file\)"):
        choose_labeled(images, "list", 10, 1, 0, tmp_path / "perc_10.txt")


def test_extra_unlabeled_images_join_the_unlabeled_set(tmp_path):
    source = tmp_path / "train.json"
    generated_annotations(source, 50)
    extra = [{"id": 10**9, "file_name": "../unlabeled2017/000001000000.jpg", "width": 64, "height": 48}]
    manifest = write_split(source, tmp_path / "split", 10, 1, 0, protocol="stac", extra_unlabeled=extra)
    unlabeled = json.loads((tmp_path / "split" / "unlabeled.json").read_text())
    assert manifest["num_unlabeled"] == 51 == len(unlabeled["images"]) and manifest["num_extra_unlabeled"] == 1


def test_table_rows_carry_the_protocol_and_the_published_number_of_their_network():
    """The paper's Mask2Former ResNet-50 number stands beside a Mask2Former ResNet-50 row only, never beside a
    Mask R-CNN row of the same dataset, method and label percentage."""
    import pandas as pd

    from gdis.report import CSV_COLUMNS, TABLE_COLUMNS

    row = dict.fromkeys(TABLE_COLUMNS, 1.0)
    row.update(dataset="coco", weights="imagenet", protocol="stac", fold=1, iteration=10, model="student",
               label_percent=2.0)
    rows = [{**row, "arch": "mask2former", "backbone": "resnet50", "method": "guided_distillation"},
            {**row, "arch": "mask2former", "backbone": "resnet50", "method": "supervised"},
            {**row, "arch": "mask_rcnn", "backbone": "resnet50_fpn", "method": "guided_distillation"}]
    text = render_csv(pd.DataFrame(rows, columns=TABLE_COLUMNS))
    assert text.splitlines()[0].endswith(",paper_mask_AP,paper_cityscapes_AP,paper_entry")
    table = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert list(table.columns) == CSV_COLUMNS and list(table["protocol"]) == ["stac"] * 3
    assert list(table["paper_mask_AP"]) == ["25.3", "", ""]
    assert list(table["paper_entry"]) == ["Guided Distillation (Mask2Former, ResNet-50)", "", ""]
    assert list(table["paper_cityscapes_AP"]) == [""] * 3


def _dry_run(workflow_copy, *args) -> str:
    result = subprocess.run(["snakemake", "-n", "--cores", "all", *args], cwd=workflow_copy, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


PAPER_METHODS = ("supervised", "standard_burnin", "guided_distillation")


@pytest.mark.slow
@pytest.mark.parametrize("dataset, percents", [("coco", ["0.4", "1", "2", "5", "10"]),
                                               ("cityscapes", ["5", "10", "20", "30"]),
                                               ("ade20k", ["10"])])
def test_dry_run_plans_the_paper_table_without_the_data(workflow_copy, dataset, percents):
    """The table plans Mask2Former R50 runs of the three methods at every label percentage of the plan."""
    out = _dry_run(workflow_copy, "-p", f"results/tables/{dataset}.csv")
    prepare = {"coco": "prepare_coco2017"}.get(dataset, f"prepare_{dataset}")
    counts = dict(line.split()[:2] for line in out.splitlines() if line.split()[:1] and line.split()[0] in (
        prepare, "split", "train_supervised", "train_distillation", "evaluate", "table"))
    n = len(percents)
    assert counts == {prepare: "1", "split": str(n), "train_supervised": str(n),
                      "train_distillation": str(2 * n), "evaluate": str(3 * n), "table": "1"}
    files = f"--config config/config.yaml config/datasets/{dataset}.yaml config/networks/mask2former_r50.yaml "
    for percent in percents:
        assert f"results/splits/{dataset}/{percent}pct/fold1/manifest.json" in out
        for method in PAPER_METHODS:
            assert f"results/eval/{dataset}/mask2former_r50/{method}/{percent}pct/fold1/metrics.json" in out
            assert f"gdis train {files}--method {method} --label-percent {percent} " in out
    explicit = _dry_run(workflow_copy, f"results/plots/{dataset}.png", "--configfile", f"config/datasets/{dataset}.yaml")
    assert "plot" in explicit and prepare in explicit


@pytest.mark.slow
def test_dry_run_plans_the_dinov2_and_swin_presets(workflow_copy):
    """A user file listing the paper's other backbones plans their runs beside the R50 ones."""
    networks = ["mask2former_r50", "mask2former_dinov2_vitl", "mask2former_swin_large", "mask_rcnn_r50"]
    (workflow_copy / "networks.yaml").write_text(f"networks: [{', '.join(networks)}]\n")
    out = _dry_run(workflow_copy, "-p", "results/tables/coco.csv", "--configfile", "networks.yaml")
    for network in networks:
        assert f"results/eval/coco/{network}/guided_distillation/10pct/fold1/metrics.json" in out
        assert f"config/datasets/coco.yaml config/networks/{network}.yaml networks.yaml --method supervised " in out


@pytest.mark.slow
def test_one_dry_run_plans_every_dataset(workflow_copy):
    """The dataset is a wildcard of the target: one invocation plans the paper tables and the demo's."""
    out = _dry_run(workflow_copy, "-p", "results/tables/coco.csv", "results/tables/cityscapes.csv",
                   "results/tables/ade20k.csv", "results/tables/shapes.csv")
    for dataset, network in (("coco", "mask2former_r50"), ("cityscapes", "mask2former_r50"),
                             ("ade20k", "mask2former_r50"), ("shapes", "mask_rcnn_tiny"),
                             ("shapes", "mask2former_tiny")):
        assert f"results/eval/{dataset}/{network}/supervised/" in out
    assert "gdis train --config config/config.yaml config/datasets/coco.yaml config/networks/mask2former_r50.yaml " in out
    assert "gdis train --config config/config.yaml config/networks/mask_rcnn_tiny.yaml " in out
