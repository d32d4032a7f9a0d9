"""Repeat-factor sampling (gdis.sampling): the factors by hand, rebalancing, resume, sharding, positions."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from gdis.data import StepBatchSampler
from gdis.sampling import (PositionedBatchSampler, RepeatFactorBatchSampler, image_repeat_factors,
                           labeled_batch_sampler, labeled_sampler_kind)


def coco_with(categories_per_image: list[list[int]], crowd: dict[int, int] | None = None) -> dict:
    """Images 10, 11, ... holding one annotation per listed category; ``crowd`` adds a crowd annotation
    of category ``crowd[image index]``."""
    images = [{"id": 10 + i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(len(categories_per_image))]
    annotations = []
    for i, categories in enumerate(categories_per_image):
        for category in categories:
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": category,
                                "bbox": [0, 0, 1, 1], "iscrowd": 0})
    for i, category in (crowd or {}).items():
        annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": category,
                            "bbox": [0, 0, 1, 1], "iscrowd": 1})
    return {"images": images, "annotations": annotations, "categories": [{"id": c} for c in (1, 2, 3)]}


def test_repeat_factors_by_hand():
    # 10 images: category 1 in all of them (twice in image 0), category 2 in images 0-1, category 3 in image 9,
    # plus a crowd annotation of category 3 in image 8 (it counts, as in detectron2).
    per_image = [[1, 1, 2], [1, 2]] + [[1]] * 7 + [[1, 3]]
    coco = coco_with(per_image, crowd={8: 3})
    ids = [10 + i for i in range(10)]
    # f_1 = 1, f_2 = 0.2, f_3 = 0.2 (images 8 and 9). With t = 0.5: r_1 = 1, r_2 = r_3 = sqrt(0.5 / 0.2).
    factors = image_repeat_factors(coco, ids, 0.5)
    rare = math.sqrt(0.5 / 0.2)
    assert factors.tolist() == pytest.approx([rare, rare] + [1.0] * 6 + [rare, rare])
    # The reference's t = 10 exceeds every frequency: r_1 = sqrt(10), the others sqrt(50).
    factors = image_repeat_factors(coco, ids, 10.0)
    assert factors.tolist() == pytest.approx([math.sqrt(50)] * 2 + [math.sqrt(10)] * 6 + [math.sqrt(50)] * 2)


def test_repeat_factors_follow_the_given_images_and_order():
    coco = coco_with([[1], [2], [], [1]])
    # Only images 13 and 10 (both category 1): f_1 = 1, so factor 1 each, in the order given.
    assert image_repeat_factors(coco, [13, 10], 0.5).tolist() == [1.0, 1.0]
    # Image 12 has no annotation: factor 1; f_1 = 0.5 over the 4 images, f_2 = 0.25.
    assert image_repeat_factors(coco, [12, 11, 10, 13], 0.5).tolist() == pytest.approx([1.0, math.sqrt(2), 1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        image_repeat_factors(coco, [10], 0.0)


def drawn(sampler) -> list[int]:
    return [index for batch in sampler for index in batch]


def test_a_rare_class_is_drawn_in_proportion_to_its_repeat_factor():
    # 20 images: 2 hold the rare category 2 (f = 0.1), all hold category 1.
    coco = coco_with([[1, 2]] * 2 + [[1]] * 18)
    factors = image_repeat_factors(coco, [10 + i for i in range(20)], 0.4)  # rare: 2, common: 1
    assert factors.tolist() == [2.0, 2.0] + [1.0] * 18
    counts = Counter(drawn(RepeatFactorBatchSampler(factors, 4, seed=0, start_step=0, num_steps=2200)))
    rare_share = (counts[0] + counts[1]) / sum(counts.values())
    assert rare_share == pytest.approx(4 / 22, abs=0.005)  # uniform sampling would give 2 / 20
    # Fractional factors: rounded up with the fractional part's probability, so 1.5 is drawn 1.5x as often.
    counts = Counter(drawn(RepeatFactorBatchSampler([1.5, 1.0], 5, seed=3, start_step=0, num_steps=2000)))
    assert counts[0] / counts[1] == pytest.approx(1.5, rel=0.03)


def test_every_epoch_holds_each_image_its_rounded_number_of_times():
    sampler = RepeatFactorBatchSampler([1.0, 2.0, 3.5], 1, seed=1, start_step=0, num_steps=200)
    stream = drawn(sampler)
    position = 0
    for epoch in range(20):
        length = int(sampler._repeats(epoch).sum())
        counts = Counter(stream[position:position + length])
        assert counts[0] == 1 and counts[1] == 2 and counts[2] in (3, 4)
        position += length


def test_batch_s_is_the_same_when_resumed_at_s():
    factors = [1.0, 2.7, 1.3, 4.0, 1.0, 1.9, 1.0]
    whole = list(RepeatFactorBatchSampler(factors, 3, seed=5, start_step=0, num_steps=60))
    for start in (1, 17, 41):
        resumed = list(RepeatFactorBatchSampler(factors, 3, seed=5, start_step=start, num_steps=60 - start))
        assert resumed == whole[start:]
    assert list(RepeatFactorBatchSampler(factors, 3, seed=6, start_step=0, num_steps=60)) != whole


def test_two_ranks_together_draw_the_single_process_batch():
    factors = [1.0, 2.7, 1.3, 4.0, 1.0, 1.9, 1.0]
    single = list(RepeatFactorBatchSampler(factors, 4, seed=2, start_step=3, num_steps=30))
    ranks = [list(RepeatFactorBatchSampler(factors, 4, seed=2, start_step=3, num_steps=30, rank=r, world_size=2))
             for r in (0, 1)]
    for batch, first, second in zip(single, *ranks):
        assert batch[0::2] == first and batch[1::2] == second


def test_positions_name_each_sample_of_the_run_once_on_every_rank():
    single = list(PositionedBatchSampler(StepBatchSampler(5, 4, seed=0, start_step=2, num_steps=3)))
    assert [position for batch in single for _, position in batch] == list(range(8, 20))
    rank1 = list(PositionedBatchSampler(StepBatchSampler(5, 4, seed=0, start_step=2, num_steps=3, rank=1,
                                                         world_size=2)))
    assert rank1 == [batch[1::2] for batch in single]
    factors = [1.0, 3.0, 1.5]
    repeat = list(PositionedBatchSampler(RepeatFactorBatchSampler(factors, 2, seed=0, start_step=4, num_steps=2)))
    assert repeat == [list(zip(RepeatFactorBatchSampler(factors, 2, 0, 4, 2).batch(s), range(2 * s, 2 * s + 2)))
                      for s in (4, 5)]


def test_the_run_kind_picks_the_sampler():
    config = {"supervised": "uniform", "distillation": "repeat_factor", "repeat_threshold": 10.0}
    assert labeled_sampler_kind(config, "supervised") == "uniform"
    assert labeled_sampler_kind(config, "guided_distillation") == "repeat_factor"
    assert labeled_sampler_kind(config, "standard_burnin") == "repeat_factor"
    coco = coco_with([[1], [2], [1]])
    ids = [10, 11, 12]
    uniform = labeled_batch_sampler(config, "supervised", coco, ids, 2, 0, 0, 5)
    assert isinstance(uniform, StepBatchSampler)
    repeat = labeled_batch_sampler(config, "guided_distillation", coco, ids, 2, 0, 0, 5, rank=1, world_size=2)
    assert isinstance(repeat, RepeatFactorBatchSampler) and repeat.rank == 1
    assert np.allclose(repeat.whole + repeat.fraction, [math.sqrt(15), math.sqrt(30), math.sqrt(15)])
    with pytest.raises(ValueError, match="train.labeled_sampler"):
        labeled_sampler_kind({**config, "distillation": "balanced"}, "guided_distillation")
