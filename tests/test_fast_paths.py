"""Every fast path gives the results of the plain one: the shared student forward, the C++ COCOeval."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gdis.checkpoint import save_checkpoint
from gdis.coco import annotation_mask, category_ids, encode_mask, load_coco
from gdis.data import CocoInstances, to_float
from gdis.evaluate import STAT_NAMES, coco_metrics
from gdis.io import write_json
from gdis.models import build_model
from gdis.splits import write_split
from gdis.trainer import Trainer
from tests.conftest import split_trainer


def _all_samples_kept(model) -> None:
    """Make the RPN and ROI samplers keep every candidate, so the losses do not depend on the random draw."""
    model.net.rpn.fg_bg_sampler.batch_size_per_image = 10**6
    model.net.roi_heads.fg_bg_sampler.batch_size_per_image = 10**6


def _groups(micro_dataset, widen_second_group: bool) -> tuple[list, int]:
    dataset = CocoInstances(load_coco(micro_dataset / "annotations" / "train.json"), micro_dataset / "train")
    groups = []
    for indices in ((0, 1, 2), (3, 4)):
        images, targets = zip(*[dataset[i] for i in indices])
        groups.append(([to_float(image) for image in images], list(targets)))
    if widen_second_group:  # wider images pad to another size: the backbone then runs group by group
        images, targets = groups[1]
        groups[1] = ([torch.nn.functional.pad(image, (0, 36)) for image in images],
                     [dict(t, masks=torch.nn.functional.pad(t["masks"], (0, 36))) for t in targets])
    return groups, len(dataset.label_of)


def _losses_and_gradients(model, groups, grouped: bool):
    model.zero_grad(set_to_none=True)
    if grouped:
        losses = model.grouped_losses(groups)
    else:
        losses = [model.losses(images, targets) for images, targets in groups]
    (sum(losses[0].values()) + 2.0 * sum(losses[1].values())).backward()
    values = [{name: value.item() for name, value in group.items()} for group in losses]
    return values, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("widen_second_group", [False, True], ids=["shared backbone", "backbone per group"])
def test_grouped_losses_equal_separate_losses(micro_dataset, micro_config, widen_second_group):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    groups, num_categories = _groups(micro_dataset, widen_second_group)
    model = build_model(micro_config["model"], num_categories, load_weights=False)
    _all_samples_kept(model)
    backbone_batches = []
    model.net.backbone.register_forward_hook(lambda module, inputs, output: backbone_batches.append(len(inputs[0])))

    plain, plain_gradients = _losses_and_gradients(model, copy.deepcopy(groups), grouped=False)
    grouped, grouped_gradients = _losses_and_gradients(model, copy.deepcopy(groups), grouped=True)

    assert backbone_batches == [3, 2] + ([3, 2] if widen_second_group else [5])
    for plain_group, grouped_group in zip(plain, grouped):
        assert list(grouped_group) == list(plain_group)
        for name in plain_group:
            assert grouped_group[name] == pytest.approx(plain_group[name], rel=1e-5, abs=1e-7), name
    assert plain[1]["loss_mask"] > 0  # the mask head took part
    assert plain_gradients.keys() == grouped_gradients.keys()
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(grouped_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_guided_step_with_shared_backbone_equals_separate_forwards(micro_dataset, micro_config, tmp_path):
    """One real guided training step, both ways, from the same state: same losses, same updated weights."""
    torch.set_num_threads(1)
    split = tmp_path / "split"
    write_split(micro_dataset / "annotations" / "train.json", split, 50, fold=1, seed=0)

    def trainer(name: str, shared: bool, teacher=None) -> Trainer:
        config = copy.deepcopy(micro_config)
        config["train"]["shared_backbone"] = shared
        built = split_trainer(config, "guided_distillation" if teacher else "supervised", split,
                              micro_dataset / "train", tmp_path / name, teacher=teacher)
        _all_samples_kept(built.student)
        return built

    supervised = trainer("supervised", True)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, **supervised._state())
    labeled = [supervised.parts.labeled.images[i] for i in (0, 1)]
    unlabeled = [supervised.parts.labeled.images[i] for i in (2, 3)]
    batches = ([image for image, _ in labeled], [target for _, target in labeled])
    unlabeled_batch = ([image for image, _ in unlabeled], [image for image, _ in unlabeled],
                       [{"image_id": t["image_id"]} for _, t in unlabeled])
    records, weights = [], []
    for shared in (False, True):
        guided = trainer(f"guided_{shared}", shared, teacher=str(teacher))
        guided._load_pretrained_teacher()
        torch.manual_seed(1)
        records.append(guided.step(batches, unlabeled_batch))
        weights.append(guided.student.state_dict())
    plain, shared = records
    assert plain["pseudo_labels_per_image"] > 0 and plain.keys() == shared.keys()
    for name in plain:
        if name.startswith("loss"):
            assert shared[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-7), name
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def _predictions_with_duplicates_and_crowds(coco: dict, seed: int) -> list[dict]:
    """Shifted, relabelled, duplicated and missed copies of the objects, plus false positives."""
    rng = np.random.default_rng(seed)
    ids = category_ids(coco)
    images = {image["id"]: image for image in coco["images"]}
    results = []
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        mask = annotation_mask(ann, image["height"], image["width"])
        for _ in range(int(rng.integers(0, 3))):  # missed, found once, or found twice
            shifted = np.roll(mask, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
            x, y, w, h = ann["bbox"]
            results.append({
                "image_id": ann["image_id"],
                "category_id": ann["category_id"] if rng.random() > 0.2 else int(rng.choice(ids)),
                "bbox": [round(float(v + rng.normal(0, 1.5)), 2) for v in (x, y)] + [w, h],
                "score": round(float(rng.random()), 3),  # rounded: ties between detections happen
                "segmentation": encode_mask(shifted),
            })
    for image in coco["images"]:
        false_positive = np.zeros((image["height"], image["width"]), np.uint8)
        false_positive[5:20, 10:30] = 1
        results.append({"image_id": image["id"], "category_id": ids[0], "bbox": [10, 5, 20, 15], "score": 0.5,
                        "segmentation": encode_mask(false_positive)})
    return results


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_gives_the_pycocotools_numbers(micro_dataset, tmp_path, seed):
    coco = load_coco(micro_dataset / "annotations" / "train.json")
    crowd = dict(coco["annotations"][0], id=10**6, iscrowd=1)  # a crowd region: matched detections are ignored
    crowd["segmentation"] = encode_mask(annotation_mask(crowd, *[(i["height"], i["width"]) for i in coco["images"]
                                                                   if i["id"] == crowd["image_id"]][0]))
    coco["annotations"].append(crowd)
    annotations, results = tmp_path / "annotations.json", tmp_path / "results.json"
    write_json(annotations, coco)
    write_json(results, _predictions_with_duplicates_and_crowds(coco, seed))

    reference = coco_metrics(annotations, results, evaluator="pycocotools")
    fast = coco_metrics(annotations, results, evaluator="faster_coco_eval")
    assert fast.keys() == reference.keys() == {f"{p}_{n}" for p in ("mask", "box") for n in STAT_NAMES}
    for name, value in reference.items():
        if value is None:
            assert fast[name] is None, name
        else:
            assert fast[name] == pytest.approx(value, abs=1e-7), name  # 1e-9 in COCO's 0..1 units
    assert 5 < reference["mask_AP"] < 95


def test_both_evaluators_agree_on_no_detections_and_reject_an_unknown_one(micro_dataset, tmp_path):
    write_json(tmp_path / "empty.json", [])
    annotations = micro_dataset / "annotations" / "val.json"
    assert coco_metrics(annotations, tmp_path / "empty.json", "faster_coco_eval") == \
        coco_metrics(annotations, tmp_path / "empty.json", "pycocotools")
    with pytest.raises(ValueError, match="evaluate.evaluator"):
        coco_metrics(annotations, tmp_path / "empty.json", "detectron2")
