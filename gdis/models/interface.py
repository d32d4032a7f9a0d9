"""The architecture interface the trainer, the evaluation and the galleries rely on.

Both ``MaskRCNNSegmenter`` and ``Mask2FormerSegmenter`` implement it (``isinstance(model, Segmenter)``
holds for them). ``grouped_losses`` (one shared backbone forward for several batches) is optional:
the trainer looks for it with ``hasattr``.

This module imports no torch at run time, so ``gdis.models`` stays cheap to import (``gdis.config``
reads the registry of architectures from it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

KEPT = "kept"


@runtime_checkable
class Segmenter(Protocol):
    """An instance segmentation network behind the gdis interface.

    Images are float (3, H, W) tensors in [0, 1]; labels are 1..K (0 is background).
    """

    weights: str  # where the backbone's weights came from: "random", "imagenet", "pretrained" or a file
    rejection_reasons: tuple[str, ...]  # the ways ``explain_pseudo_labels`` can reject a detection, in test order
    loss_kinds: dict[str, str]  # each term ``losses`` returns -> its kind (train.unlabeled_loss_weights keys)

    def losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Training losses on ``images`` with ``targets`` (boxes, labels, masks), by name."""

    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        """Per image: boxes (xyxy), labels (1..K), scores, masks as (N, H, W) probabilities."""

    def pseudo_labels(self, images: list[torch.Tensor], thresholds: dict, short_side: int | None = None) -> list[dict]:
        """Per image, targets (boxes, labels, masks) for a student, from this network as teacher
        (``thresholds``: the train.pseudo_label keys), predicted with the images' short side resized to
        ``short_side`` (None: the test size). Masks are uint8 (binary), or float in [0, 1] when
        ``thresholds["mask_target"]`` asks for soft targets."""

    def explain_pseudo_labels(self, images: list[torch.Tensor], thresholds: dict) -> list[dict]:
        """Per image, every candidate the pseudo-label rule considered and what it did with it.

        Each dict has ``scores``, ``labels`` (1..K) and ``masks`` ((N, H, W) probabilities at image size)
        like a prediction, and ``decisions``: one string per candidate, ``"kept"`` or the first of
        ``rejection_reasons`` that rejects it. The kept ones, binarised at ``thresholds["mask_threshold"]``,
        are exactly the masks (and labels) ``pseudo_labels`` returns.
        """

    def backbone_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters of the backbone (trained at ``train.backbone_lr_multiplier`` times the learning rate)."""

    def load_backbone_weights(self, spec: str) -> None:
        """Initialise the backbone from ``spec`` ('imagenet', 'pretrained' or a weights file); sets ``weights``."""
