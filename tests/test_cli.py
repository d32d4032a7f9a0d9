"""Bad input through the command line: a clear error naming the culprit, exit code 1, no finished-looking output."""

from __future__ import annotations

import json

import yaml

from gdis.cli import build_parser, main


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_every_subcommand_has_help():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert set(subcommands) == {"check-config", "check-dataset", "synthesize", "prepare-dataset", "split", "train",
                                "evaluate", "table", "plot", "curves", "gallery", "visualize", "dvc"}
    for name, sub in subcommands.items():
        assert sub.format_help().startswith(f"usage: gdis {name}")


def test_unknown_config_key(capsys, micro_config_file, tmp_path):
    config = yaml.safe_load(micro_config_file.read_text())
    config["splits"]["label_percent"] = [5]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    code, err = _run(capsys, "split", "--config", str(bad), "--label-percent", "25", "--fold", "1",
                     "--out-dir", str(tmp_path / "split"))
    assert code == 1
    assert "unknown key splits.label_percent" in err
    assert not (tmp_path / "split").exists()


def test_missing_required_key(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  source: synthetic\n")
    code, err = _run(capsys, "check-config", "--config", str(bad))
    assert code == 1 and "dataset: 'name' is a required property" in err


def _with_dataset(micro_config_file, tmp_path, **dataset) -> str:
    """The micro config with some dataset keys replaced, written to a new file."""
    config = yaml.safe_load(micro_config_file.read_text())
    config["dataset"].update({key: str(value) for key, value in dataset.items()})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_annotation_file_that_is_not_coco(capsys, micro_config_file, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "annotations": {}}))
    path = _with_dataset(micro_config_file, tmp_path, train_annotations=broken)
    code, err = _run(capsys, "split", "--config", path, "--label-percent", "25", "--fold", "1",
                     "--out-dir", str(tmp_path / "split"))
    assert code == 1 and f"{broken} is not COCO: 'annotations' must be a list" in err
    assert not (tmp_path / "split").exists()


def test_truncated_annotation_file(capsys, micro_config_file, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_text('{"images": [')
    path = _with_dataset(micro_config_file, tmp_path, train_annotations=truncated)
    code, err = _run(capsys, "split", "--config", path, "--label-percent", "25", "--fold", "1",
                     "--out-dir", str(tmp_path / "split"))
    assert code == 1 and f"annotation file {truncated} is not valid JSON" in err


def test_missing_image_names_id_and_file(capsys, micro_config_file, micro_dataset, tmp_path):
    import shutil

    images = tmp_path / "train_images"
    shutil.copytree(micro_dataset / "train", images)
    path = _with_dataset(micro_config_file, tmp_path, train_images=images)
    split = tmp_path / "split"
    assert _run(capsys, "split", "--config", path, "--label-percent", "100", "--fold", "1", "--out-dir", str(split))[0] == 0
    labeled = json.loads((split / "labeled.json").read_text())
    victim = labeled["images"][0]
    (images / victim["file_name"]).unlink()
    out = tmp_path / "run"
    code, err = _run(capsys, "train", "--config", path, "--method", "supervised", "--label-percent", "100",
                     "--fold", "1", "--split-dir", str(split), "--out-dir", str(out))
    assert code == 1
    assert f"1 image file(s) not found: image {victim['id']}: {images / victim['file_name']}" in err
    assert not (out / "model_final.pt").exists()


def test_bad_label_percent_is_rejected(capsys, micro_config_file, tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["split", "--config", str(micro_config_file), "--label-percent", "0", "--fold", "1", "--out-dir", str(tmp_path)])
    assert "label percentage must be in (0, 100], got 0" in capsys.readouterr().err
