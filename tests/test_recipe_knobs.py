"""The distillation recipe's options (issue 16): soft or coarse pseudo-masks, unlabelled loss weights by kind,
where Mask R-CNN pastes its masks, uncertain detections left out of the background.

Each option leaves the default behaviour exactly as it was; each reaches the loss as documented.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import roi_heads
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from gdis.config import ConfigError, deep_merge, read_yaml, validate_config
from gdis.models import build_model
from gdis.models.mask2former import Mask2FormerSegmenter, pseudo_label_masks
from gdis.models.mask_rcnn import (
    FloatMaskTransform,
    filter_pseudo_labels,
    ignore_background,
    paste_masks,
    resize_float_masks,
)
from gdis.splits import write_split
from gdis.trainer import binarised, taught_views, weighted_unlabeled_loss
from tests.conftest import REPO, split_trainer

BASE = {"dataset": {"name": "x", "source": "synthetic"}, "model": {"min_size": [64], "test_size": 64}}
MASK_RCNN = validate_config(BASE)
MASK2FORMER = validate_config(deep_merge(read_yaml(REPO / "config" / "networks" / "mask2former_tiny.yaml"), BASE))


def _target(masks: torch.Tensor) -> dict:
    return {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 60.0, 50.0]]),
            "labels": torch.tensor([1, 2]), "masks": masks}


def _square_masks(dtype=torch.uint8) -> torch.Tensor:
    masks = torch.zeros((2, 64, 64), dtype=dtype)
    masks[0, 8:40, 8:40] = 1
    masks[1, 20:50, 30:60] = 1
    return masks


# -- config ------------------------------------------------------------------------------------------
def test_defaults_are_the_papers_recipe():
    train = MASK_RCNN["train"]
    assert train["pseudo_label"]["mask_target"] == "binary"
    assert train["unlabeled_loss_weights"] == {"class": 1.0, "box": 1.0, "mask": 1.0, "rpn": 1.0}
    assert train["pseudo_label"]["ignore_threshold"] is None


@pytest.mark.parametrize("train, key", [
    ({"unlabeled_loss_weights": {"loss_mask": 0.5}}, "train.unlabeled_loss_weights.loss_mask"),
    ({"unlabeled_loss_weights": {"mask": -1}}, "train.unlabeled_loss_weights.mask"),
    ({"pseudo_label": {"mask_target": "fuzzy"}}, "train.pseudo_label.mask_target"),
])
def test_bad_recipe_values_name_their_key(train, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(deep_merge(BASE, {"train": train}))


def test_a_mask_target_the_architecture_does_not_make_is_refused():
    coarse = {"train": {"pseudo_label": {"mask_target": "coarse_binary"}}}
    with pytest.raises(ConfigError, match=r"train\.pseudo_label\.mask_target: 'coarse_binary' .* 'mask_rcnn'"):
        validate_config(deep_merge(MASK_RCNN, coarse))
    validate_config(deep_merge(MASK2FORMER, coarse))


def test_an_ignore_threshold_must_be_below_the_score_threshold_and_for_mask_rcnn():
    band = {"train": {"pseudo_label": {"ignore_threshold": 0.3}}}
    assert validate_config(deep_merge(MASK_RCNN, band))["train"]["pseudo_label"]["ignore_threshold"] == 0.3
    with pytest.raises(ConfigError, match=r"ignore_threshold: 0\.7 must be below .*score_threshold \(0\.7\)"):
        validate_config(deep_merge(MASK_RCNN, {"train": {"pseudo_label": {"ignore_threshold": 0.7}}}))
    with pytest.raises(ConfigError, match=r"train\.pseudo_label\.ignore_threshold: model\.arch 'mask2former'"):
        validate_config(deep_merge(MASK2FORMER, band))


def test_every_loss_term_has_a_kind_the_config_names():
    kinds = set(validate_config(BASE)["train"]["unlabeled_loss_weights"])
    images = [torch.rand(3, 64, 64)]
    for config in (MASK_RCNN, MASK2FORMER):
        model = build_model(config["model"], 2, load_weights=False)
        terms = model.losses(images, [_target(_square_masks())])
        assert set(terms) == set(model.loss_kinds) and set(model.loss_kinds.values()) <= kinds


# -- per-kind weights ----------------------------------------------------------------------------------
KINDS = {"loss_cross_entropy": "class", "loss_mask": "mask", "loss_mask_aux": "mask", "loss_dice": "mask",
         "loss_box_reg": "box"}


def test_weights_of_one_give_the_plain_sum_exactly():
    terms = {name: torch.rand((), dtype=torch.float64) for name in KINDS}
    ones = {"class": 1.0, "box": 1.0, "mask": 1.0, "rpn": 1.0}
    assert weighted_unlabeled_loss(terms, KINDS, ones).item() == sum(terms.values()).item()
    assert weighted_unlabeled_loss(terms, KINDS, {}).item() == sum(terms.values()).item()


def test_a_weight_scales_every_term_of_its_kind():
    values = {"loss_cross_entropy": 1.0, "loss_mask": 2.0, "loss_mask_aux": 8.0, "loss_dice": 4.0, "loss_box_reg": 16.0}
    terms = {name: torch.tensor(value) for name, value in values.items()}
    assert weighted_unlabeled_loss(terms, KINDS, {"mask": 0.25, "box": 1.0}).item() == 1.0 + 0.5 + 2.0 + 1.0 + 16.0


def test_a_zero_weight_removes_the_terms_even_when_they_are_not_finite():
    value = torch.tensor(3.0, requires_grad=True)
    terms = {"loss_cross_entropy": value, "loss_mask": torch.tensor(float("inf"))}
    assert weighted_unlabeled_loss(terms, KINDS, {"mask": 0.0}).item() == 3.0
    assert weighted_unlabeled_loss({"loss_mask": value}, KINDS, {"mask": 0.0}).item() == 0.0


# -- soft and coarse pseudo-masks ------------------------------------------------------------------------
def test_soft_pseudo_labels_keep_the_probabilities_of_the_same_detections():
    probabilities = torch.zeros((3, 32, 32))
    probabilities[0, 4:20, 4:20] = 0.9
    probabilities[0, 4:20, 20:22] = 0.4  # an uncertain outline: below the threshold
    probabilities[1, 0:2, 0:2] = 0.95  # too small
    probabilities[2, 10:30, 10:30] = 0.8  # scores too low
    prediction = {"scores": torch.tensor([0.9, 0.9, 0.5]), "labels": torch.tensor([1, 2, 1]), "masks": probabilities}
    binary = filter_pseudo_labels(prediction, 0.7, 0.5, 10)
    soft = filter_pseudo_labels(prediction, 0.7, 0.5, 10, soft=True)
    assert binary["masks"].dtype == torch.uint8 and soft["masks"].dtype == torch.float32
    assert torch.equal(soft["masks"], probabilities[:1])
    assert torch.equal(soft["labels"], binary["labels"]) and torch.equal(soft["boxes"], binary["boxes"])
    assert torch.equal(binarised([soft], 0.5)[0]["masks"], binary["masks"])
    assert binarised([binary], 0.5)[0] is binary


def test_float_masks_are_resized_as_floats_and_binary_ones_as_torchvision_does():
    transform = FloatMaskTransform(min_size=(96,), max_size=200, image_mean=[0.5] * 3, image_std=[0.2] * 3).train()
    image = torch.rand(3, 64, 64)
    soft = _square_masks(torch.float32) * 0.6
    _, resized = transform.resize(image, _target(soft))
    assert resized["masks"].dtype == torch.float32 and resized["masks"].shape == (2, 96, 96)
    assert torch.allclose(resized["masks"].max(), torch.tensor(0.6))
    plain = FloatMaskTransform(min_size=(96,), max_size=200, image_mean=[0.5] * 3, image_std=[0.2] * 3).train()
    expected_image, expected = super(FloatMaskTransform, plain).resize(image, _target(_square_masks()))
    got_image, got = transform.resize(image, _target(_square_masks()))
    assert torch.equal(got["masks"], expected["masks"]) and got["masks"].dtype == torch.uint8
    assert torch.equal(got_image, expected_image) and torch.equal(got["boxes"], expected["boxes"])
    assert resize_float_masks(torch.zeros((0, 8, 8)), (16, 16)).shape == (0, 16, 16)


def test_mask_rcnn_learns_soft_targets_as_floats(monkeypatch):
    model = build_model(MASK_RCNN["model"], 2, load_weights=False)
    images = [torch.rand(3, 64, 64)]
    seen = []
    real_loss = roi_heads.maskrcnn_loss

    def spy(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs):
        seen.append(gt_masks[0].dtype)
        return real_loss(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs)

    monkeypatch.setattr(roi_heads, "maskrcnn_loss", spy)
    losses = {}
    for name, masks in (("binary", _square_masks()), ("float 0/1", _square_masks(torch.float32)),
                        ("soft", _square_masks(torch.float32) * 0.5)):
        torch.manual_seed(0)
        losses[name] = model.losses(images, [_target(masks)])
    assert seen == [torch.uint8, torch.float32, torch.float32]
    for term in losses["binary"]:  # 0/1 floats: the very loss of the binary masks
        assert torch.equal(losses["float 0/1"][term], losses["binary"][term]), term
    assert losses["soft"]["loss_mask"] != losses["binary"]["loss_mask"]
    assert torch.equal(losses["soft"]["loss_classifier"], losses["binary"]["loss_classifier"])


def _low_resolution_logits() -> torch.Tensor:
    logits = torch.full((1, 16, 16), -6.0)
    logits[0, 4:10, 4:12] = 6.0
    logits[0, 10, 4:12] = 0.5  # sigmoid 0.62: inside at 0.5
    return logits


def _to_image(logits: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(logits[None], size=(64, 64), mode="bilinear", align_corners=False)[0]


def test_mask2former_pseudo_mask_targets():
    logits = _low_resolution_logits()
    binary, binary_outline = pseudo_label_masks(logits, _to_image, 0.5, "binary")
    assert binary.dtype == torch.uint8 and torch.equal(binary.bool(), _to_image(logits).sigmoid() > 0.5)
    assert torch.equal(binary.bool(), binary_outline)
    soft, soft_outline = pseudo_label_masks(logits, _to_image, 0.5, "soft")
    assert soft.dtype == torch.float32 and torch.equal(soft, _to_image(logits).sigmoid())
    assert torch.equal(soft_outline, binary_outline)
    coarse, coarse_outline = pseudo_label_masks(logits, _to_image, 0.5, "coarse_binary")
    assert coarse.dtype == torch.float32 and coarse.min() >= 0 and coarse.max() <= 1
    assert torch.equal(coarse, _to_image((logits.sigmoid() > 0.5).float()).clamp(0, 1))
    inside = coarse[0, 20:36, 20:44]
    assert torch.all(inside == 1)  # binarised at stride 4: confident inside, soft only along the outline
    assert ((coarse > 0) & (coarse < 1)).any() and torch.equal(coarse_outline, coarse > 0.5)


def test_mask2former_target_masks_keep_floats_and_binary_ones_stay_nearest():
    masks = _square_masks()
    resized = Mask2FormerSegmenter._target_masks(masks, (96, 96), (96, 128))
    expected = torch.nn.functional.interpolate(masks[:, None].float(), size=(96, 96), mode="nearest")[:, 0]
    assert torch.equal(resized[:, :, :96], expected) and not resized[:, :, 96:].any()
    soft = Mask2FormerSegmenter._target_masks(masks.float() * 0.5, (96, 96), (96, 128))
    assert soft.max() == 0.5 and ((soft > 0) & (soft < 0.5)).any()  # bilinear: outlines in between


def test_mask2former_learns_soft_targets(monkeypatch):
    torch.manual_seed(0)
    model = build_model(MASK2FORMER["model"], 2, load_weights=False)
    images = [torch.rand(3, 64, 64)]
    losses = {}
    for name, masks in (("binary", _square_masks()), ("float 0/1", _square_masks(torch.float32)),
                        ("soft", _square_masks(torch.float32) * 0.5)):
        torch.manual_seed(1)
        losses[name] = model.losses(images, [_target(masks)])
    for term in losses["binary"]:  # 64 -> 64: bilinear and nearest agree on 0/1 masks
        assert torch.equal(losses["float 0/1"][term], losses["binary"][term]), term
    assert losses["soft"]["loss_mask"] != losses["binary"]["loss_mask"]
    assert losses["soft"]["loss_dice"] != losses["binary"]["loss_dice"]


# -- a guided run ----------------------------------------------------------------------------------------
@pytest.fixture
def split_dir(micro_dataset, tmp_path):
    write_split(micro_dataset / "annotations" / "train.json", tmp_path / "split", 25, fold=1, seed=0)
    return tmp_path / "split"


# -- uncertain detections left out of the background (train.pseudo_label.ignore_threshold) -----------------
def test_uncertain_detections_become_ignore_boxes_and_the_confident_ones_pseudo_labels():
    masks = torch.zeros((3, 32, 32))
    masks[:, 4:20, 4:20] = 0.9
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 30.0, 30.0]])
    prediction = {"scores": torch.tensor([0.9, 0.5, 0.2]), "labels": torch.tensor([1, 2, 1]), "masks": masks,
                  "boxes": boxes}
    paper = filter_pseudo_labels(prediction, 0.7, 0.5, 10)
    band = filter_pseudo_labels(prediction, 0.7, 0.5, 10, ignore_threshold=0.3)
    assert "ignore_boxes" not in paper
    assert torch.equal(band["ignore_boxes"], boxes[1:2])  # 0.5 is uncertain; 0.2 is background as before
    assert all(torch.equal(band[key], paper[key]) for key in paper)


def test_only_background_overlapping_an_ignore_box_is_ignored():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [40.0, 40.0, 50.0, 50.0]])
    labels = torch.tensor([0, 3, 0])
    ignore_background(labels, boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 0.5)
    assert labels.tolist() == [-1, 3, 0]  # a pseudo-label's match stays; far background stays background
    ignore_background(labels, boxes, torch.zeros((0, 4)), 0.5)
    assert labels.tolist() == [-1, 3, 0]


def test_the_transform_resizes_ignore_boxes_with_the_image():
    transform = FloatMaskTransform.like(build_model(MASK_RCNN["model"], 2).net.transform)
    transform.min_size = (128,)
    target = {**_target(_square_masks()), "ignore_boxes": torch.tensor([[10.0, 12.0, 20.0, 30.0]])}
    _, resized = transform.resize(torch.rand(3, 64, 64), dict(target))
    assert torch.allclose(resized["ignore_boxes"], torch.tensor([[20.0, 24.0, 40.0, 60.0]]))
    assert torch.allclose(resized["boxes"], target["boxes"] * 2)


def test_proposals_and_anchors_on_an_ignore_box_are_sampled_as_neither_object_nor_background():
    torch.manual_seed(0)
    net = build_model(MASK_RCNN["model"], 2).net
    pseudo = {"boxes": torch.tensor([[4.0, 4.0, 24.0, 24.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros((1, 64, 64), dtype=torch.uint8)}
    uncertain = torch.tensor([[36.0, 36.0, 60.0, 60.0]])
    proposals = [torch.tensor([[36.0, 36.0, 60.0, 60.0], [37.0, 35.0, 59.0, 61.0], [0.0, 40.0, 20.0, 60.0]])]

    def background_on_the_uncertain_object(target: dict) -> tuple[int, int]:
        kept, _, labels, _ = net.roi_heads.select_training_samples([p.clone() for p in proposals], [target])
        on_it = box_iou(kept[0], uncertain)[:, 0] >= 0.5
        image = ImageList(torch.zeros((1, 3, 64, 64)), [(64, 64)])
        features = [torch.zeros((1, 64, 64 // stride, 64 // stride)) for stride in (4, 8, 16, 32, 64)]
        anchors = net.rpn.anchor_generator(image, features)
        anchor_labels, _ = net.rpn.assign_targets_to_anchors(anchors, [target])
        anchors_on_it = box_iou(anchors[0], uncertain)[:, 0] >= 0.3
        return int(((labels[0] == 0) & on_it).sum()), int(((anchor_labels[0] == 0) & anchors_on_it).sum())

    assert min(background_on_the_uncertain_object(pseudo)) > 0  # the paper's rule: taught as background
    assert background_on_the_uncertain_object({**pseudo, "ignore_boxes": uncertain}) == (0, 0)


def test_guided_steps_without_the_mask_term_and_with_soft_masks(micro_config, split_dir, micro_dataset, tmp_path):
    torch.set_num_threads(1)
    images = micro_dataset / "train"
    split_trainer(micro_config, "supervised", split_dir, images, tmp_path / "sup").run()
    teacher = tmp_path / "sup" / "model_final.pt"
    hidden = micro_dataset / "annotations" / "train.json"
    first = {}
    for name, train in (("default", {}), ("no mask term", {"unlabeled_loss_weights": {"mask": 0.0}}),
                        ("soft", {"pseudo_label": {"mask_target": "soft"}})):
        config = validate_config(deep_merge(micro_config, {"train": train}))
        trainer = split_trainer(config, "guided_distillation", split_dir, images, tmp_path / name, teacher=teacher,
                                hidden_annotations=hidden)
        trainer.run()
        first[name] = trainer.log_records[0]  # step 1: the same student and teacher weights in every run
    default, no_mask, soft = first["default"], first["no mask term"], first["soft"]
    assert no_mask["loss_unsupervised/loss_mask"] == default["loss_unsupervised/loss_mask"] > 0
    assert no_mask["loss_unsupervised"] == pytest.approx(default["loss_unsupervised"]
                                                         - default["loss_unsupervised/loss_mask"])
    assert soft["loss_unsupervised/loss_classifier"] == default["loss_unsupervised/loss_classifier"]
    assert soft["loss_unsupervised/loss_mask"] != default["loss_unsupervised/loss_mask"]
    assert soft["pseudo_label_precision"] == default["pseudo_label_precision"]  # measured on the binarised masks


def test_images_without_pseudo_labels_are_background_or_left_out():
    strong = ["a", "b", "c"]
    pseudo = [{"labels": torch.tensor([1])}, {"labels": torch.zeros(0, dtype=torch.int64)}, {"labels": torch.tensor([2, 1])}]
    assert taught_views(strong, pseudo, "background") == (strong, pseudo)
    assert taught_views(strong, pseudo, "skip") == (["a", "c"], [pseudo[0], pseudo[2]])


def test_a_teacher_keeping_nothing_teaches_background_or_nothing(micro_config, split_dir, micro_dataset, tmp_path):
    torch.set_num_threads(1)
    images = micro_dataset / "train"
    split_trainer(micro_config, "supervised", split_dir, images, tmp_path / "sup").run()
    first = {}
    for empty_images in ("background", "skip"):
        # a teacher of 4 steps is far from this sure of anything: it keeps no pseudo-label on any image
        train = {"pseudo_label": {"score_threshold": 0.9999, "empty_images": empty_images}}
        config = validate_config(deep_merge(micro_config, {"train": train}))
        trainer = split_trainer(config, "guided_distillation", split_dir, images, tmp_path / empty_images,
                                teacher=tmp_path / "sup" / "model_final.pt")
        trainer.run()
        first[empty_images] = trainer.log_records[0]
    background, skip = first["background"], first["skip"]
    assert background["pseudo_labels_per_image"] == skip["pseudo_labels_per_image"] == 0
    assert background["loss_unsupervised"] > 0 and background["unlabeled_images_taught"] > 0
    assert skip["loss_unsupervised"] == 0 and skip["unlabeled_images_taught"] == 0
    assert not any(name.startswith("loss_unsupervised/") for name in skip)
    assert skip["loss"] == pytest.approx(skip["loss_supervised"])


def test_skipping_images_is_refused_for_several_processes(micro_config, split_dir, micro_dataset, tmp_path):
    from gdis.builder import RunFiles, build_run
    from gdis.distributed import World

    config = validate_config(deep_merge(micro_config, {"train": {"pseudo_label": {"empty_images": "skip"}}}))
    files = RunFiles(labeled=split_dir / "labeled.json", unlabeled=split_dir / "unlabeled.json",
                     images=micro_dataset / "train", teacher=tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="train.pseudo_label.empty_images"):
        build_run(config, "guided_distillation", files, World(rank=0, size=2))


# -- where Mask R-CNN pastes its masks ----------------------------------------------------------------------
def _ellipse(size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((rows - top - height / 2 + 0.5) / (height / 2)) ** 2
            + ((cols - left - width / 2 + 0.5) / (width / 2)) ** 2) <= 1


def test_aligned_paste_inverts_the_target_projection_and_torchvisions_grows_masks():
    torch.manual_seed(0)
    ratios = {"torchvision": [], "aligned": []}
    for _ in range(40):
        height, width = torch.randint(6, 30, (2,)).tolist()
        top, left = torch.randint(2, 30, (2,)).tolist()
        truth = _ellipse(64, top, left, height, width)
        rows, cols = torch.where(truth)
        box = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
        target = roi_heads.project_masks_on_boxes(truth[None].float(), box, torch.tensor([0]), 28)[:, None]
        for name, pasted in (("torchvision", roi_heads.paste_masks_in_image(target, box, (64, 64))),
                             ("aligned", paste_masks(target, box, (64, 64)))):
            binary = pasted[0, 0] > 0.5
            ratios[name].append(binary.sum() / truth.sum())
            if name == "aligned":
                assert (binary & truth).sum() / (binary | truth).sum() > 0.97
                assert not pasted[0, 0][~_inside(box[0], 64)].any()
    assert abs(torch.stack(ratios["aligned"]).mean() - 1) < 0.01
    assert torch.stack(ratios["torchvision"]).mean() > 1.05  # about a pixel wider and taller than the box


def _inside(box: torch.Tensor, size: int) -> torch.Tensor:
    centres = torch.arange(size) + 0.5
    inside_x = (centres >= box[0]) & (centres <= box[2])
    inside_y = (centres >= box[1]) & (centres <= box[3])
    return inside_y[:, None] & inside_x[None, :]


def test_mask_paste_changes_only_the_masks_of_predictions():
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64)]
    predictions = {}
    for paste in ("torchvision", "aligned"):
        torch.manual_seed(0)
        model = build_model({**MASK_RCNN["model"], "mask_paste": paste}, 2, load_weights=False)
        model.net.roi_heads.score_thresh = 0.0  # an untrained network: keep its low-scoring detections
        predictions[paste] = model.predict(images)[0]
    default, aligned = predictions["torchvision"], predictions["aligned"]
    assert len(default["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(default[key], aligned[key])
    assert aligned["masks"].shape == default["masks"].shape == (len(default["boxes"]), 64, 64)
    assert not torch.equal(aligned["masks"], default["masks"])
    assert aligned["masks"].min() >= 0 and aligned["masks"].max() <= 1
    assert paste_masks(torch.zeros((0, 1, 28, 28)), torch.zeros((0, 4)), (8, 8)).shape == (0, 1, 8, 8)
