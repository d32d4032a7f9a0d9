"""Repeat-factor sampling of labelled images (class rebalancing) and sample positions for per-sample randomness.

Guided Distillation trains its semi-supervised run's labelled images with detectron2's
``RepeatFactorTrainingSampler`` (GuidedDistillation's train_net.py, ``setup``: when SSL.TRAIN_SSL,
DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler" and DATALOADER.REPEAT_THRESHOLD = 10.0; the
unlabelled loader is set back to the plain "TrainingSampler" in ``build_train_loader``, and the
supervised teacher run, SSL.TRAIN_SSL False, keeps detectron2's default TrainingSampler).

An image's repeat factor is r_i = max over the categories c in it of max(1, sqrt(t / f_c)), f_c the
fraction of the images that contain c (LVIS, Gupta et al. 2019, appendix B.2). Each epoch rounds
every r_i stochastically (floor, plus 1 with probability of the fractional part), repeats each
image that often and shuffles.

Note the reference's t = 10.0: f_c is a fraction (at most 1), so every category's factor is
sqrt(10 / f_c) >= sqrt(10), none is clipped at 1 (LVIS uses t = 0.001). Images are then drawn in
proportion to 1 / sqrt(f) of their rarest category: pure square-root inverse-frequency rebalancing of
every class, not only of the rare ones, and an image without annotations (factor 1) is drawn at most
1 / sqrt(10) as often as any annotated one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from gdis.coco import DatasetError

SAMPLERS = ("uniform", "repeat_factor")
# The reference's DATALOADER.REPEAT_THRESHOLD (train_net.py, setup()).
REFERENCE_REPEAT_THRESHOLD = 10.0


def image_repeat_factors(coco: dict, image_ids: Sequence[int], threshold: float) -> np.ndarray:
    """r_i for each of ``image_ids`` (in that order): max over its categories of max(1, sqrt(threshold / f_c)).

    f_c is the fraction of ``image_ids`` with at least one annotation of category c. As detectron2's
    ``repeat_factors_from_category_frequency``, every annotation of an image counts, crowd ones
    included; an image without annotations gets 1. (detectron2 sees only the images with a non-crowd
    annotation, DATALOADER.FILTER_EMPTY_ANNOTATIONS; gdis samples from the images it is given.)
    """
    if threshold <= 0:
        raise ValueError(f"repeat threshold must be positive, not {threshold}")
    position = {image_id: index for index, image_id in enumerate(image_ids)}
    if len(position) != len(image_ids):
        raise DatasetError("image_repeat_factors: an image id is listed twice")
    categories_of: list[set[int]] = [set() for _ in image_ids]
    for ann in coco["annotations"]:
        index = position.get(ann["image_id"])
        if index is not None:
            categories_of[index].add(ann["category_id"])
    images_with: dict[int, int] = {}
    for categories in categories_of:
        for category in categories:
            images_with[category] = images_with.get(category, 0) + 1
    category_factor = {category: max(1.0, math.sqrt(threshold / (count / len(image_ids))))
                       for category, count in images_with.items()}
    return np.array([max((category_factor[c] for c in categories), default=1.0) for categories in categories_of],
                    dtype=np.float64)


class RepeatFactorBatchSampler(Sampler):
    """Batches for steps ``start_step, start_step + 1, ...`` drawn with repeat factors; batch s depends on (seed, s) only.

    The contract of ``gdis.data.StepBatchSampler``: a stream of epochs, read ``batch_size`` items per
    step, so a resumed run sees the batches of an uninterrupted one; process ``rank`` of ``world_size``
    takes items ``rank, rank + world_size, ...`` of each global batch. Epoch e (detectron2's
    ``_get_epoch_indices`` and shuffle) rounds each factor up with probability of its fractional part,
    repeats each image that many times and permutes the list, with generators seeded by (seed, e);
    epochs differ in length, so an epoch's start is the sum of the earlier epochs' lengths (computed
    once, from the rounding draws alone).
    """

    def __init__(self, repeat_factors: Sequence[float], batch_size: int, seed: int, start_step: int, num_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        factors = np.asarray(repeat_factors, dtype=np.float64)
        if factors.ndim != 1 or len(factors) < 1:
            raise DatasetError("cannot sample from an empty image set")
        if (factors < 1).any() or not np.isfinite(factors).all():
            raise ValueError("repeat factors must be finite and at least 1")
        self.whole, self.fraction = np.floor(factors).astype(np.int64), factors - np.floor(factors)
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.rank, self.world_size = rank, world_size
        self._epoch_starts = [0]  # _epoch_starts[e]: stream position where epoch e begins
        self._cached_epoch, self._cached_items = -1, np.empty(0, dtype=np.int64)

    def _repeats(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0]))
        return self.whole + (rng.random(len(self.fraction)) < self.fraction)

    def _epoch_of(self, position: int) -> int:
        while self._epoch_starts[-1] <= position:
            self._epoch_starts.append(self._epoch_starts[-1] + int(self._repeats(len(self._epoch_starts) - 1).sum()))
        return int(np.searchsorted(self._epoch_starts, position, side="right")) - 1

    def _items(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            items = np.repeat(np.arange(len(self.whole)), self._repeats(epoch))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 1]))
            self._cached_epoch, self._cached_items = epoch, items[rng.permutation(len(items))]
        return self._cached_items

    def batch(self, step: int) -> list[int]:
        batch = []
        for position in range(step * self.batch_size + self.rank, (step + 1) * self.batch_size, self.world_size):
            epoch = self._epoch_of(position)
            batch.append(int(self._items(epoch)[position - self._epoch_starts[epoch]]))
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.start_step + self.num_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.num_steps


class PositionedBatchSampler(Sampler):
    """A step batch sampler's batches as (dataset index, stream position) pairs.

    The position (step × global batch size + slot) names a sample once in a whole run, whichever
    process, worker or resumed start draws it: the views datasets of ``gdis.augment`` seed each
    sample's augmentation with it. Wraps ``gdis.data.StepBatchSampler`` or ``RepeatFactorBatchSampler``.
    """

    def __init__(self, batch_sampler) -> None:
        self.batch_sampler = batch_sampler

    def positions(self, step: int) -> range:
        sampler = self.batch_sampler
        return range(step * sampler.batch_size + sampler.rank, (step + 1) * sampler.batch_size, sampler.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        sampler = self.batch_sampler
        for step in range(sampler.start_step, sampler.start_step + sampler.num_steps):
            yield list(zip(sampler.batch(step), self.positions(step)))

    def __len__(self) -> int:
        return len(self.batch_sampler)


def labeled_sampler_kind(sampler_config: dict, method: str) -> str:
    """'uniform' or 'repeat_factor' for the labelled images of a ``method`` run (``train.labeled_sampler``).

    A supervised run takes ``supervised``; guided_distillation and standard_burnin take
    ``distillation`` (the reference's SSL.TRAIN_SSL run, burn-in included). standard_burnin's first
    ``train.burn_in`` steps are those of the supervised run it continues, so they were drawn as
    ``supervised`` says.
    """
    kind = sampler_config["supervised"] if method == "supervised" else sampler_config["distillation"]
    if kind not in SAMPLERS:
        raise ValueError(f"train.labeled_sampler: {kind!r} is none of {', '.join(SAMPLERS)}")
    return kind


def labeled_batch_sampler(sampler_config: dict, method: str, coco: dict, image_ids: Sequence[int], batch_size: int,
                          seed: int, start_step: int, num_steps: int, rank: int = 0, world_size: int = 1) -> Sampler:
    """The labelled images' step batch sampler of a ``method`` run, as ``train.labeled_sampler`` says.

    ``image_ids`` are the dataset's images in index order (``CocoInstances.images``); ``coco`` holds
    their annotations. 'uniform' is ``gdis.data.StepBatchSampler``, unchanged.
    """
    from gdis.data import StepBatchSampler

    shard = {"rank": rank, "world_size": world_size}
    if labeled_sampler_kind(sampler_config, method) == "uniform":
        return StepBatchSampler(len(image_ids), batch_size, seed, start_step, num_steps, **shard)
    factors = image_repeat_factors(coco, image_ids, sampler_config["repeat_threshold"])
    return RepeatFactorBatchSampler(factors, batch_size, seed, start_step, num_steps, **shard)
