"""Bad input through the command line: a clear error naming the culprit, exit code 1, no finished-looking output."""

from __future__ import annotations

import json

import pytest
import yaml

from gdis.cli import build_parser, main
from tests.conftest import gallery_file_args, train_file_args


def _train_set(config_path) -> list[str]:
    """``--annotations`` and ``--images`` of ``gdis split``: the training set the config names."""
    dataset = yaml.safe_load(open(config_path))["dataset"]
    return ["--annotations", dataset["train_annotations"], "--images", dataset["train_images"]]


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_every_subcommand_has_help():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert set(subcommands) == {"check-config", "check-dataset", "pretrain", "synthesize", "prepare-dataset", "split", "train",
                                "evaluate", "table", "plot", "curves", "gallery", "visualize", "dvc"}
    for name, sub in subcommands.items():
        assert sub.format_help().startswith(f"usage: gdis {name}")


def test_unknown_config_key(capsys, micro_config_file, tmp_path):
    config = yaml.safe_load(micro_config_file.read_text())
    config["splits"]["label_percent"] = [5]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    code, err = _run(capsys, "split", "--config", str(bad), *_train_set(bad), "--label-percent", "25", "--fold", "1",
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
    code, err = _run(capsys, "split", "--config", path, *_train_set(path), "--label-percent", "25", "--fold", "1",
                     "--out-dir", str(tmp_path / "split"))
    assert code == 1 and f"{broken} is not COCO: 'annotations' must be a list" in err
    assert not (tmp_path / "split").exists()


def test_truncated_annotation_file(capsys, micro_config_file, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_text('{"images": [')
    path = _with_dataset(micro_config_file, tmp_path, train_annotations=truncated)
    code, err = _run(capsys, "split", "--config", path, *_train_set(path), "--label-percent", "25", "--fold", "1",
                     "--out-dir", str(tmp_path / "split"))
    assert code == 1 and f"annotation file {truncated} is not valid JSON" in err


def test_missing_image_names_id_and_file(capsys, micro_config_file, micro_dataset, tmp_path):
    import shutil

    images = tmp_path / "train_images"
    shutil.copytree(micro_dataset / "train", images)
    path = _with_dataset(micro_config_file, tmp_path, train_images=images)
    split = tmp_path / "split"
    assert _run(capsys, "split", "--config", path, *_train_set(path), "--label-percent", "100", "--fold", "1",
                "--out-dir", str(split))[0] == 0
    labeled = json.loads((split / "labeled.json").read_text())
    victim = labeled["images"][0]
    (images / victim["file_name"]).unlink()
    out = tmp_path / "run"
    code, err = _run(capsys, "train", "--config", path, "--method", "supervised", "--label-percent", "100",
                     "--fold", "1", *train_file_args(split, images), "--out-dir", str(out))
    assert code == 1
    assert f"1 image file(s) not found: image {victim['id']}: {images / victim['file_name']}" in err
    assert not (out / "model_final.pt").exists()


def test_bad_label_percent_is_rejected(capsys, micro_config_file, tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["split", "--config", str(micro_config_file), *_train_set(micro_config_file), "--label-percent", "0",
              "--fold", "1", "--out-dir", str(tmp_path)])
    assert "label percentage must be in (0, 100], got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_commands_read_only_the_files_they_are_given(capsys, micro_config_file, micro_dataset, tmp_path):
    """The rules hand every file to the command: with the config's dataset paths pointing nowhere, split, train,
    evaluate (with its galleries) and gallery still work on the files they are given."""
    config = yaml.safe_load(micro_config_file.read_text())
    nowhere = tmp_path / "no_such_folder"
    config["dataset"].update({key: str(nowhere / key) for key in config["dataset"] if key != "name" and key != "source"})
    path = tmp_path / "nowhere.yaml"
    path.write_text(yaml.safe_dump(config))
    split, run, out = tmp_path / "split", tmp_path / "run", tmp_path / "out"
    train_set = ["--annotations", str(micro_dataset / "annotations" / "train.json"), "--images", str(micro_dataset / "train")]
    assert _run(capsys, "split", "--config", str(path), *train_set, "--label-percent", "25", "--fold", "1",
                "--out-dir", str(split))[0] == 0
    for method, start in (("supervised", []), ("guided_distillation", ["--teacher", str(run / "model_final.pt")])):
        code, err = _run(capsys, "train", "--config", str(path), "--method", method, "--label-percent", "25", "--fold",
                         "1", *train_file_args(split, micro_dataset / "train"), *start,
                         "--hidden-annotations", str(micro_dataset / "annotations" / "train.json"),
                         "--out-dir", str(tmp_path / method if method != "supervised" else run))
        assert code == 0, err
    guided = tmp_path / "guided_distillation"
    code, err = _run(capsys, "evaluate", "--config", str(path), "--checkpoint", str(guided / "model_final.pt"),
                     "--run-record", str(guided / "run.json"),
                     "--annotations", str(micro_dataset / "annotations" / "val.json"),
                     "--images", str(micro_dataset / "val"), "--predictions-dir", str(out / "predictions"),
                     "--metrics", str(out / "metrics.json"), "--val-gallery", str(out / "val.png"),
                     "--unlabeled-gallery", str(out / "unlabeled.png"), "--labeled", str(split / "labeled.json"),
                     "--unlabeled", str(split / "unlabeled.json"),
                     "--train-annotations", str(micro_dataset / "annotations" / "train.json"),
                     "--train-images", str(micro_dataset / "train"))
    assert code == 0, err
    rows = json.loads((out / "metrics.json").read_text())
    assert set(rows) == {"student", "ema_teacher"}
    assert (rows["ema_teacher"]["method"], rows["ema_teacher"]["label_percent"]) == ("guided_distillation", 25.0)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["ema_teacher.json", "student.json"]
    code, err = _run(capsys, "gallery", "--config", str(path), "--checkpoint", str(guided / "model_final.pt"),
                     *gallery_file_args(split, micro_dataset), "--val-out", str(out / "val_again.png"),
                     "--unlabeled-out", str(out / "unlabeled_again.png"))
    assert code == 0, err
    assert (out / "val.png").read_bytes() == (out / "val_again.png").read_bytes()
    assert (out / "unlabeled.png").read_bytes() == (out / "unlabeled_again.png").read_bytes() and not nowhere.exists()
    code, err = _run(capsys, "evaluate", "--config", str(path), "--checkpoint", str(guided / "model_final.pt"),
                     "--run-record", str(guided / "run.json"), "--annotations", str(micro_dataset / "annotations" / "val.json"),
                     "--images", str(micro_dataset / "val"), "--predictions-dir", str(out / "p2"),
                     "--metrics", str(out / "m2.json"), "--val-gallery", str(out / "v2.png"))
    assert code == 1 and "the galleries need --unlabeled-gallery, --labeled" in err
