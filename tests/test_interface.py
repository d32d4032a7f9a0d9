"""The architecture interface: both architectures implement it, the registry, galleries that ask the model."""

from __future__ import annotations

import torch

import gdis.visualize
from gdis.models import ARCH_BACKBONES, ARCHITECTURES, Mask2FormerSegmenter, MaskRCNNSegmenter, build_model
from gdis.models.backbones import BACKBONES
from gdis.models.interface import Segmenter
from gdis.data import mask_boxes
from gdis.models.mask_rcnn import BUILDERS
from gdis.visualize import pseudo_label_gallery
from tests.test_mask2former import MODEL as MASK2FORMER_MODEL
from tests.test_models import MODEL as MASK_RCNN_MODEL

THRESHOLDS = {"score_threshold": 0.7, "mask_threshold": 0.5, "min_area": 10, "min_mask_probability_sum": 5.0}


def test_both_architectures_implement_the_interface():
    torch.manual_seed(0)
    for config, cls in ((MASK_RCNN_MODEL, MaskRCNNSegmenter), (MASK2FORMER_MODEL, Mask2FormerSegmenter)):
        model = build_model(config, num_categories=3)
        assert isinstance(model, cls) and isinstance(model, Segmenter)
        assert model.weights == "random"
    assert not isinstance(object(), Segmenter)


def test_the_registry_names_each_architectures_backbones():
    assert set(ARCHITECTURES) == {"mask_rcnn", "mask2former"}
    assert ARCH_BACKBONES["mask_rcnn"] == tuple(BUILDERS)
    assert ARCH_BACKBONES["mask2former"] == tuple(BACKBONES)
    assert ARCHITECTURES["mask2former"].builder() is Mask2FormerSegmenter


def test_mask_boxes_are_pixel_edges_and_empty_masks_get_zero_boxes():
    masks = torch.zeros((4, 6, 8), dtype=torch.bool)
    masks[0, 2, 3] = True  # one pixel
    masks[1, 1:4, 2:7] = True  # rows 1..3, columns 2..6
    masks[3, 0, 0] = masks[3, 5, 7] = True  # two corners: the whole image
    assert mask_boxes(masks).tolist() == [[3, 2, 4, 3], [2, 1, 7, 4], [0, 0, 0, 0], [0, 0, 8, 6]]
    assert mask_boxes(masks).dtype == torch.float32
    assert mask_boxes(masks[2:3]).tolist() == [[0, 0, 0, 0]]
    assert mask_boxes(masks[:0]).shape == (0, 4)


def _block(rows: slice, cols: slice) -> torch.Tensor:
    logits = torch.full((16, 16), -10.0)
    logits[rows, cols] = 10.0
    return logits


def _queries(images, short_side=None):
    """Hand-made queries on 64-px images (16x16 mask logits): 2 kept, then one rejected by each test."""
    class_logits = torch.tensor([[0.9, 0.05, 0.03, 0.02],  # kept, class 0
                                 [0.02, 0.03, 0.9, 0.05],  # kept, class 2
                                 [0.1, 0.1, 0.1, 0.7],  # no object
                                 [0.5, 0.3, 0.1, 0.1],  # class probability 0.5 <= 0.7
                                 [0.05, 0.9, 0.03, 0.02]]).log()  # 4 mask pixels: summed probability 4 <= 5
    mask_logits = torch.stack([_block(slice(2, 6), slice(3, 9)), _block(slice(9, 15), slice(8, 12)),
                               _block(slice(0, 8), slice(0, 8)), _block(slice(8, 16), slice(0, 8)),
                               _block(slice(12, 14), slice(1, 3))])
    return (class_logits.expand(len(images), -1, -1), mask_logits.expand(len(images), -1, -1, -1), (64, 64),
            [(64, 64)] * len(images))


def test_mask2former_gallery_shows_the_pseudo_labels_it_keeps(monkeypatch):
    torch.manual_seed(0)
    model = build_model(MASK2FORMER_MODEL, num_categories=3)
    monkeypatch.setattr(model, "_query_outputs", _queries)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    pseudo = model.pseudo_labels([image.float() / 255 for image in images], THRESHOLDS)
    explained = model.explain_pseudo_labels([image.float() / 255 for image in images], THRESHOLDS)
    assert [e["decisions"] for e in explained] == [["kept", "kept", "no_object", "score", "mask_sum"]] * 2

    panels = []  # the instances drawn in each panel, in order: kept, rejected, per image
    draw = gdis.visualize.render_panel
    monkeypatch.setattr(gdis.visualize, "render_panel",
                        lambda image, instances, size: panels.append(instances) or draw(image, instances, size))
    names = {1: "a", 2: "b", 3: "c"}
    pseudo_label_gallery(images, ["x", "y"], None, model, "teacher", None, names, THRESHOLDS,
                         {"cell_size": 64, "score_threshold": 0.3}, "title")
    assert len(panels) == 4
    for kept, rejected, targets in zip(panels[0::2], panels[1::2], pseudo):
        assert [inst.caption.split()[0] for inst in kept] == [names[label] for label in targets["labels"].tolist()]
        assert len(kept) == 2 and all(inst.filled for inst in kept)
        for inst, mask in zip(kept, targets["masks"]):
            assert (inst.mask == mask.bool().numpy()).all()
        # The no-object query's best class has probability 0.1 < 0.3: not drawn.
        assert [(inst.caption, inst.color) for inst in rejected] == [
            ("0.50", gdis.visualize.REJECTED_COLORS["score"]), ("0.90", gdis.visualize.REJECTED_COLORS["mask_sum"])]


def test_mask_rcnn_explanation_keeps_what_pseudo_labels_keep():
    torch.manual_seed(0)
    model = build_model(MASK_RCNN_MODEL, num_categories=3)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    full = model.predict(images)
    threshold = float(torch.cat([p["scores"] for p in full]).median())
    thresholds = dict(THRESHOLDS, score_threshold=threshold, min_area=1)
    for explained, target in zip(model.explain_pseudo_labels(images, thresholds),
                                 model.pseudo_labels(images, thresholds)):
        kept = [index for index, decision in enumerate(explained["decisions"]) if decision == "kept"]
        assert explained["labels"][kept].tolist() == target["labels"].tolist()
        assert torch.equal((explained["masks"][kept] > 0.5).to(torch.uint8), target["masks"])
