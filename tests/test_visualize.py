"""Overlay drawing, the pseudo-label decisions shown in galleries, and the gallery commands on a micro run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gdis.cli import main
from gdis.models.mask_rcnn import filter_pseudo_labels, pseudo_label_decisions
from gdis.visualize import (PSEUDO_OUTLINE, TRUTH_OUTLINE, Instance, compose_grid, mask_outline, outline_captions,
                            outline_comparison, overlay_masks, render_panel, sample_ids)
from tests.conftest import gallery_file_args, train_file_args

RED, BLUE = (255, 0, 0), (0, 0, 255)


def test_overlay_puts_a_known_mask_on_its_pixels():
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:10, 12:20] = True  # rows 4..9, columns 12..19
    out = overlay_masks(image, [mask], [RED], [True], alpha=0.5)
    outline = mask_outline(mask)
    interior = mask & ~outline
    assert outline.sum() == 2 * 8 + 2 * 4 and interior.sum() == 4 * 6
    assert (out[interior] == [178, 50, 50]).all()  # 0.5 * 100 + 0.5 * (255, 0, 0), rounded
    assert (out[outline] == RED).all()
    assert (out[~mask] == 100).all()  # nothing outside the mask changes
    assert (image == 100).all()  # the input is left alone


def test_unfilled_masks_are_outlines_and_later_masks_draw_on_top():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    a = np.zeros((10, 10), dtype=bool)
    a[0:6, 0:6] = True
    b = np.zeros((10, 10), dtype=bool)
    b[3:9, 3:9] = True
    out = overlay_masks(image, [a, b], [RED, BLUE], [True, False], alpha=1.0)
    assert (out[1, 1] == RED).all()  # inside a, filled
    assert (out[3, 5] == BLUE).all()  # b's outline over a's fill
    assert (out[5, 5] == RED).all()  # inside b (not filled): a shows through
    assert (out[6, 6] == 0).all()  # inside b only, not filled


def test_outline_width_counts_steps_from_the_outside():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:9, 1:9] = True  # 8x8
    assert mask_outline(mask, 2).sum() == 64 - 16  # all but the central 4x4
    assert (mask_outline(mask, 1) == (mask & ~np.pad(np.ones((6, 6), bool), 2))).all()


def _box(x0, y0, x1, y1, size=20):
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_outline_captions_give_each_kept_pseudo_label_its_match_quality():
    truth = [Instance(_box(5, 5, 11, 11), "a", RED, label=1), Instance(_box(12, 12, 18, 18), "b", RED, label=2)]
    kept = [Instance(_box(6, 5, 12, 11), "a", RED, label=1),  # one pixel off gt 0: IoU 30/42, boundary IoU 1/3
            Instance(_box(12, 12, 18, 18), "a", RED, label=1),  # right place, wrong class
            Instance(_box(0, 0, 3, 3), "b", RED, label=2)]  # nothing there
    captions, lines = outline_captions(kept, truth, 20, 20)
    assert captions == ["0.71/0.33", "no match", "no match"]
    assert lines == ["matched 1 of 3 kept, 2 true", "mean IoU 0.71, boundary 0.33"]
    assert outline_captions([], truth, 20, 20) == ([], ["matched 0 of 0 kept, 2 true"])


def test_outline_comparison_draws_truth_and_pseudo_label_outlines_in_their_colours():
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    truth = [Instance(_box(2, 20, 10, 30, size=40), "a", RED, label=1)]
    kept = [Instance(_box(2, 20, 10, 32, size=40), "a", RED, label=1)]  # two rows too tall; caption above it
    panel = outline_comparison(image, kept, truth, size=40)
    pixels = np.asarray(panel)
    assert panel.width == 40 and panel.height > 40  # the summary lines below the image
    # outlines 2 px wide: the truth's bottom edge (rows 28-29) lies inside the pseudo-label's (rows 30-31)
    assert (pixels[29, 5] == TRUTH_OUTLINE).all() and (pixels[31, 5] == PSEUDO_OUTLINE).all()
    assert (pixels[25, 2] == PSEUDO_OUTLINE).all()  # shared left edge: the pseudo-label is drawn on top
    assert (pixels[25, 5] == 128).all()  # nothing is filled


def test_panel_scales_masks_with_the_image():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 5:7] = True
    panel = np.asarray(render_panel(image, [Instance(mask, "", RED)], size=32))
    assert panel.shape == (32, 32, 3)
    drawn = panel.any(axis=2)
    rows, columns = np.nonzero(drawn)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (8, 15, 20, 27)  # 4x the mask's pixels


def test_grid_places_cells_below_titles():
    cell = Image.new("RGB", (40, 30), RED)
    grid = compose_grid([[cell, cell], [cell, cell]], ["a", "b"], ["row 1", "row 2"], "title")
    pixels = np.asarray(grid)
    assert (pixels == RED).all(axis=2).sum() == 4 * 40 * 30


def _prediction():
    masks = torch.zeros((4, 10, 10))
    masks[0, :5, :5] = 0.9  # 25 px, confident: kept
    masks[1, :2, :2] = 0.9  # 4 px, confident: too small
    masks[2, :5, :5] = 0.9  # 25 px, score at the threshold: rejected (strictly above is needed)
    masks[3, 5:, 5:] = 0.4  # mask below the mask threshold: zero area
    return {"scores": torch.tensor([0.9, 0.8, 0.7, 0.95]), "labels": torch.tensor([1, 2, 1, 2]), "masks": masks}


def test_decisions_match_the_pseudo_label_filter():
    prediction = _prediction()
    decisions = pseudo_label_decisions(prediction, score_threshold=0.7, mask_threshold=0.5, min_area=10)
    assert decisions == ["kept", "area", "score", "area"]
    kept = filter_pseudo_labels(prediction, score_threshold=0.7, mask_threshold=0.5, min_area=10)
    assert kept["labels"].tolist() == [label for label, d in zip(prediction["labels"].tolist(), decisions) if d == "kept"]


def test_sample_is_seeded_and_independent_of_order():
    ids = list(range(100, 0, -1))
    assert sample_ids(ids, 4, seed=0) == sample_ids(sorted(ids), 4, seed=0)
    assert sample_ids(ids, 4, seed=0) != sample_ids(ids, 4, seed=1)
    assert sample_ids([3, 1], 4, seed=0) == [1, 3]


@pytest.mark.slow
def test_gallery_and_visualize_commands(micro_config_file, micro_dataset, tmp_path):
    """Train a 2-step micro network, then draw its galleries and its predictions on a folder of images."""
    split = tmp_path / "split"
    run = tmp_path / "run"
    config = ["--config", str(micro_config_file)]
    train_set = ["--annotations", str(micro_dataset / "annotations" / "train.json"), "--images",
                 str(micro_dataset / "train")]
    assert main(["split", *config, *train_set, "--label-percent", "25", "--fold", "1", "--out-dir", str(split)]) == 0
    assert main(["train", *config, "--method", "supervised", "--label-percent", "25", "--fold", "1",
                 *train_file_args(split, micro_dataset / "train"), "--out-dir", str(run)]) == 0
    val_png, unlabeled_png = tmp_path / "val.png", tmp_path / "unlabeled.png"
    assert main(["gallery", *config, "--checkpoint", str(run / "model_final.pt"), *gallery_file_args(split, micro_dataset),
                 "--val-out", str(val_png), "--unlabeled-out", str(unlabeled_png)]) == 0
    cell = 192  # figures.cell_size's default
    # unlabelled: hidden truth, kept, kept vs truth outlines, rejected
    for png, columns in ((val_png, 2), (unlabeled_png, 4)):
        with Image.open(png) as image:
            assert image.width > columns * cell and image.height > 4 * cell  # 4 images (figures.num_images)
    out = tmp_path / "mine.png"
    assert main(["visualize", *config, "--checkpoint", str(run / "model_final.pt"),
                 "--images", str(micro_dataset / "val"), "--annotations",
                 str(micro_dataset / "annotations" / "val.json"), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.height > 4 * cell  # the 4 val images, one row each
    assert main(["visualize", *config, "--checkpoint", str(run / "model_final.pt"),
                 "--images", str(tmp_path / "missing.png"), "--out", str(out)]) == 1
