"""The paper-scale plans: every shipped plan and preset validates, and the COCO Mask2Former R50 plan trains
through ``gdis train`` (supervised teacher, then guided distillation) at a reduced crop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from gdis.config import ConfigError
from gdis.plans import Plans
from gdis.splits import write_split
from tests.conftest import REPO, resnet50_in_torch_cache, train_file_args

DEFAULT = str(REPO / "config" / "config.yaml")
DATASET_PLANS = sorted(path.stem for path in (REPO / "config" / "datasets").glob("*.yaml"))
PAPER_DATASETS = ("coco", "cityscapes", "ade20k")
PAPER_PRESETS = ("mask2former_r50", "mask2former_dinov2_vitl", "mask2former_swin_large", "mask_rcnn_r50")


def _networks_file(tmp_path: Path, networks: list[str]) -> str:
    path = tmp_path / "networks.yaml"
    path.write_text(yaml.safe_dump({"networks": networks}))
    return str(path)


@pytest.mark.parametrize("dataset", DATASET_PLANS)
def test_every_dataset_plan_validates_with_each_of_its_networks(dataset):
    plans = Plans([], default=DEFAULT)
    networks = plans.networks(dataset)
    assert networks
    for network in networks:
        config = plans.config(dataset, network)
        assert config["dataset"]["name"] == dataset and config["model"]["arch"] in ("mask2former", "mask_rcnn")


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_the_paper_presets_validate_on_each_paper_plan(dataset, tmp_path):
    plans = Plans([_networks_file(tmp_path, list(PAPER_PRESETS))], default=DEFAULT)
    for network in PAPER_PRESETS:
        config = plans.config(dataset, network)
        preset = yaml.safe_load((REPO / "config" / "networks" / f"{network}.yaml").read_text())["model"]
        assert (config["model"]["arch"], config["model"]["backbone"]) == (preset["arch"], preset["backbone"])
        assert config["train"]["batch_size"] == config["train"]["unlabeled_batch_size"] == 16  # the paper's batch


def test_the_paper_plans_train_mask2former_r50_by_default():
    plans = Plans([], default=DEFAULT)
    for dataset in PAPER_DATASETS:
        assert plans.networks(dataset) == ["mask2former_r50"]
        model = plans.config(dataset, "mask2former_r50")["model"]
        settings = model["mask2former"]
        assert (settings["num_queries"], settings["train_num_points"]) == (100, 12544)  # Mask2Former's COCO settings


def test_a_preset_not_listed_by_the_plan_is_refused():
    with pytest.raises(ConfigError, match="network 'mask2former_dinov2_vitl' is not among the networks of dataset"):
        Plans([], default=DEFAULT).config("coco", "mask2former_dinov2_vitl")


# -- the COCO Mask2Former R50 plan through `gdis train` ------------------------------------------------------
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80


def coco_like_dataset(root: Path, num_images: int, seed: int = 0) -> Path:
    """640 x 480 JPEGs (COCO's usual size) of random polygons, annotated with COCO's 80 category ids."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in COCO_CATEGORY_IDS]}
    for image_id in range(1, num_images + 1):
        image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((640, 480), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.uniform((0, 0), (440, 300))
            w, h = rng.uniform(60, 200, 2)
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0, "area": float(w * h),
                "category_id": int(rng.choice(COCO_CATEGORY_IDS)), "bbox": [float(x0), float(y0), float(w), float(h)],
                "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]]})
        image.save(root / "train" / f"{image_id:012d}.jpg", quality=90)
        coco["images"].append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 640, "height": 480})
    annotations = root / "annotations" / "train.json"
    annotations.parent.mkdir()
    annotations.write_text(json.dumps(coco))
    return annotations


# Only the crop (and the model's matching training size), the run's length (with its schedule's steps) and the
# batch differ from the plan.
REDUCED_RUN = {
    "model": {"min_size": [256]},
    "train": {"iterations": 2, "burn_in": 1, "lr_steps": [], "warmup_iterations": 1, "batch_size": 1,
              "unlabeled_batch_size": 1, "num_workers": 0, "threads": 2,
              "augment": {"geometry": {"target_size": [256, 256]}}},
}


def _gdis_train(config: list[str], method: str, split_dir: Path, images: Path, out_dir: Path, env: dict,
                *extra: str) -> None:
    command = [sys.executable, "-m", "gdis.cli", "train", "--config", *config, "--method", method,
               "--label-percent", "50", "--fold", "1", *train_file_args(split_dir, images), *extra,
               "--out-dir", str(out_dir)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_the_coco_mask2former_r50_plan_trains_guided_distillation_through_gdis_train(tmp_path):
    """The plan's own files, as the train rules pass them, plus a user file reducing the crop: a 2-step supervised
    teacher, then 2 guided steps (one from the pre-trained teacher, one after burn-in from the EMA teacher)."""
    resnet50_in_torch_cache(tmp_path / "torch", seed=0)
    annotations = coco_like_dataset(tmp_path / "coco", num_images=4)
    split_dir, images = tmp_path / "split", tmp_path / "coco" / "train"
    write_split(annotations, split_dir, 50, 1, 0, "all")
    overlay = tmp_path / "reduced.yaml"
    overlay.write_text(yaml.safe_dump(REDUCED_RUN))
    config = [*Plans([], default=DEFAULT).files("coco", "mask2former_r50"), str(overlay)]
    assert config[1:3] == [str(REPO / "config" / "datasets" / "coco.yaml"),
                           str(REPO / "config" / "networks" / "mask2former_r50.yaml")]  # as the train rules pass them
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), PYTHONPATH=str(REPO))

    teacher_dir, guided_dir = tmp_path / "supervised", tmp_path / "guided"
    _gdis_train(config, "supervised", split_dir, images, teacher_dir, env)
    _gdis_train(config, "guided_distillation", split_dir, images, guided_dir, env,
                "--hidden-annotations", str(annotations), "--teacher", str(teacher_dir / "model_final.pt"))

    record = json.loads((guided_dir / "run.json").read_text())
    assert (record["method"], record["iterations"], record["weights"]) == ("guided_distillation", 2, "imagenet")
    model, train = record["config"]["model"], record["config"]["train"]
    assert (model["arch"], model["backbone"], model["mask2former"]["num_queries"],
            model["mask2former"]["train_num_points"]) == ("mask2former", "resnet50", 100, 12544)
    assert (train["precision"], train["augment"]["geometry"]["kind"]) == ("bf16", "large_scale_jitter")
    assert (train["labeled_sampler"]["distillation"], train["lr"], train["grad_clip"]) == ("repeat_factor", 1e-4, 0.01)
    last = [json.loads(line) for line in (guided_dir / "train_log.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 2 and last["phase"] == "distillation"
    assert np.isfinite(last["loss"]) and np.isfinite(last["loss_unsupervised"])
    state = torch.load(guided_dir / "model_final.pt", weights_only=True)
    assert state["ema_teacher"] is not None  # past burn-in: the EMA teacher is saved
    pretrained = torch.load(teacher_dir / "model_final.pt", weights_only=True)["student"]
    moved = [key for key, value in state["ema_teacher"].items()
             if value.is_floating_point() and not torch.equal(value, pretrained[key])]
    assert moved  # after burn-in the teacher is the EMA of the student, no longer the supervised network
