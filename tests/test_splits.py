"""Label splits: sizes, determinism to the byte, nesting, manifest, unlabelled modes."""

from __future__ import annotations

import json

import pytest

from gdis.io import sha256_file
from gdis.splits import labeled_image_ids, num_labeled, write_split


@pytest.mark.parametrize("total, percent, expected", [(1000, 0.4, 4), (118287, 1, 1183), (12, 25, 3), (12, 1, 1), (7, 100, 7)])
def test_num_labeled(total, percent, expected):
    assert num_labeled(total, percent) == expected


@pytest.mark.parametrize("percent", [0, 101, -3])
def test_num_labeled_rejects_bad_percent(percent):
    with pytest.raises(ValueError, match="label_percent must be in"):
        num_labeled(10, percent)


def test_split_ids_ignore_file_order_and_are_nested():
    ids = list(range(1, 501))
    shuffled = ids[::-1]
    assert labeled_image_ids(ids, 5, fold=1, seed=0) == labeled_image_ids(shuffled, 5, fold=1, seed=0)
    small, large = set(labeled_image_ids(ids, 1, 1, 0)), set(labeled_image_ids(ids, 10, 1, 0))
    assert len(small) == 5 and len(large) == 50 and small <= large
    assert labeled_image_ids(ids, 10, fold=1, seed=0) != labeled_image_ids(ids, 10, fold=2, seed=0)


def test_same_inputs_same_bytes(micro_dataset, tmp_path):
    annotations = micro_dataset / "annotations" / "train.json"
    for name in ("a", "b"):
        write_split(annotations, tmp_path / name, 25, fold=1, seed=0)
    for file in ("labeled.json", "unlabeled.json", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_split_contents_and_manifest(micro_dataset, tmp_path):
    annotations = micro_dataset / "annotations" / "train.json"
    manifest = write_split(annotations, tmp_path, 25, fold=2, seed=0)
    labeled = json.loads((tmp_path / "labeled.json").read_text())
    unlabeled = json.loads((tmp_path / "unlabeled.json").read_text())
    assert manifest == json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["source_sha256"] == sha256_file(annotations)
    assert manifest["num_labeled"] == 3 == len(labeled["images"])
    assert sorted(image["id"] for image in labeled["images"]) == manifest["labeled_image_ids"]
    assert {ann["image_id"] for ann in labeled["annotations"]} <= set(manifest["labeled_image_ids"])
    assert len(unlabeled["images"]) == 12 and unlabeled["annotations"] == []  # labels of unlabelled images stay hidden


def test_unlabeled_only_leaves_out_labelled_images(micro_dataset, tmp_path):
    manifest = write_split(micro_dataset / "annotations" / "train.json", tmp_path, 25, 1, 0, unlabeled="unlabeled_only")
    unlabeled = json.loads((tmp_path / "unlabeled.json").read_text())
    assert len(unlabeled["images"]) == 9
    assert not {image["id"] for image in unlabeled["images"]} & set(manifest["labeled_image_ids"])
