"""Defect detectors: FCOS (torchvision's detection API) on an EfficientNet-Lite0 feature pyramid.

FCOS is anchor-free (one point per feature-map cell), so a fixed input size gives a fixed set of
points and the exported graph is dense and static: decoded boxes [N, A, 4] and class scores
[N, A, C] for every point. Score filtering, top-k and class-wise NMS then run in numpy in
`zerodefect.inference.postprocess`, with parameters the bundle carries. A static graph batches,
quantizes and runs on any ONNX Runtime; torchvision's own NMS export would make every output
ragged. `detect` is torchvision's post-processing, the reference that export parity checks.

Like the classifier, the module takes uint8 NHWC pixels and normalises inside.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from zerodefect.models.classifier import FreezableStages, build_backbone
from zerodefect.models.pretrained import LoadReport

log = logging.getLogger(__name__)

# tf_efficientnet_lite0 stages whose outputs feed the pyramid: strides 8, 16 and 32.
LITE0_PYRAMID_STAGES = {2: 40, 4: 112, 6: 320}
# FCOS assigns objects to pyramid levels P3-P7 by size; one point per cell.
POINT_SIZES = ((8,), (16,), (32,), (64,), (128,))


class Lite0Pyramid(nn.Module):
    """EfficientNet-Lite0 stages 0-6 plus an FPN with P6/P7: five feature maps."""

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks
        self.fpn = FeaturePyramidNetwork(
            list(LITE0_PYRAMID_STAGES.values()), channels, extra_blocks=LastLevelP6P7(channels, channels)
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LITE0_PYRAMID_STAGES:
                taps[str(i)] = x
        return self.fpn(taps)


class InspectionDetector(FreezableStages):
    """Raw pixels of a fixed size in; dense decoded boxes and per-class scores out."""

    def __init__(
        self,
        fcos: FCOS,
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        super().__init__()
        self.fcos = fcos
        self.size = size
        self.frozen: list[nn.Module] = []
        self.register_buffer("offset", (torch.tensor(mean) * 255.0).view(1, 3, 1, 1))
        self.register_buffer("scale", (torch.tensor(std) * 255.0).view(1, 3, 1, 1))
        points, self.level_sizes = self._points()
        self.register_buffer("points", points, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.fcos.head.classification_head.num_classes

    def stages(self) -> list[nn.Module]:
        body = self.fcos.backbone
        return [body.stem, *body.blocks]

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.offset) / self.scale
        return x, list(self.fcos.backbone(x).values())

    def _points(self) -> tuple[torch.Tensor, list[int]]:
        """The FCOS points ([A, 4] boxes of one stride each) for this input size, and the
        number of points per pyramid level (P3 first)."""
        height, width = self.size
        was = self.training
        with torch.no_grad():
            self.eval()
            x, features = self._features(torch.zeros(1, height, width, 3, dtype=torch.uint8))
            points = self.fcos.anchor_generator(ImageList(x, [(height, width)]), features)[0]
        self.train(was)
        return points, [f.shape[-2] * f.shape[-1] for f in features]

    def _head(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, features = self._features(images)
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"detector expects {self.size} images, got {tuple(x.shape[-2:])}")
        return self.fcos.head(features)

    def loss(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """FCOS losses (classification, box regression, centerness) for a batch."""
        head = self._head(images)
        points = [self.points] * images.shape[0]
        return self.fcos.compute_loss(targets, head, points, self.level_sizes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, H, W, 3] -> boxes [N, A, 4] (pixels, clipped) and scores [N, A, C]."""
        head = self._head(images)
        boxes = self.fcos.box_coder.decode(head["bbox_regression"], self.points)
        height, width = self.size
        x = boxes[..., 0::2].clamp(0, width)
        y = boxes[..., 1::2].clamp(0, height)
        boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
        scores = torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))
        return boxes, scores

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """torchvision's FCOS post-processing: the PyTorch reference for export parity."""
        head = self._head(images)
        sizes = self.level_sizes
        split_head = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
        points = [list(self.points.split(sizes))] * images.shape[0]
        return self.fcos.postprocess_detections(split_head, points, [self.size] * images.shape[0])

    def postprocess_params(self) -> dict[str, float | int]:
        fcos = self.fcos
        return {
            "score_thresh": float(fcos.score_thresh),
            "nms_thresh": float(fcos.nms_thresh),
            "topk_candidates": int(fcos.topk_candidates),
            "detections_per_img": int(fcos.detections_per_img),
        }


def build_detector(
    classes: list[str],
    size: int,
    pretrained: str | None = "imagenet",
    fpn_channels: int = 64,
    head_convs: int = 4,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
) -> tuple[InspectionDetector, LoadReport | None]:
    """FCOS with a Lite0 pyramid for `classes` (no background class) at size x size pixels."""
    net, mean, std, report = build_backbone("tf_efficientnet_lite0", 1000, pretrained, 0.0)
    if report:
        log.info("loaded %d pretrained tensors into the detector backbone", report.matched)
    body = Lite0Pyramid(net, fpn_channels)
    fcos = FCOS(
        body,
        num_classes=len(classes),
        min_size=size,
        max_size=size,
        anchor_generator=AnchorGenerator(POINT_SIZES, ((1.0,),) * len(POINT_SIZES)),
        head=FCOSHead(fpn_channels, 1, len(classes), num_convs=head_convs),
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )
    return InspectionDetector(fcos, (size, size), mean, std), report
