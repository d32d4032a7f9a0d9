"""torch and torchvision must be a working pair: the compiled ops load and run."""

import torch
from torchvision.ops import nms, roi_align


def test_nms_and_roi_align_run():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = roi_align(features, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], output_size=2, sampling_ratio=1, aligned=True)
    assert pooled.shape == (1, 1, 2, 2)
    assert torch.allclose(pooled.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
