"""Defect classifiers: a backbone wrapped so that its input is raw pixels and its output is
class probabilities.

The wrapper takes uint8 NHWC RGB batches, exactly what OpenCV decoding gives, and does the
normalisation itself. Training, evaluation and the exported ONNX graph therefore share one
definition of preprocessing, and the edge only decodes and resizes. Permuting NHWC to NCHW
yields a channels_last tensor for free, the fast layout for CPU convolutions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from zerodefect.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    LITE_WEIGHTS,
    LoadReport,
    WeightsError,
    load_lite_imagenet,
    load_local_weights,
)

log = logging.getLogger(__name__)

# Every timm EfficientNet-Lite with offline weights (same stages, wider and deeper from 0 to 2).
TIMM_LITES = tuple(LITE_WEIGHTS)
TORCHVISION_ARCHS = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "mobilenet_v2",
)


def build_backbone(
    arch: str, num_outputs: int, pretrained: str | None, drop_rate: float = 0.2
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], LoadReport | None]:
    """Create a backbone with `num_outputs` logits; returns (net, mean, std, load report).

    `pretrained` is "imagenet" (the shipped Lite0 weights), a path to a local state dict,
    or None for random initialisation.
    """
    report = None
    if arch in TIMM_LITES:
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=1000, drop_rate=drop_rate)
        if pretrained == "imagenet":
            report = load_lite_imagenet(net, arch)
        elif pretrained:
            report = load_local_weights(net, Path(pretrained))
        if num_outputs != 1000:
            net.reset_classifier(num_outputs)
        return net, LITE_MEAN, LITE_STD, report
    if arch in TORCHVISION_ARCHS:
        import torchvision

        net = torchvision.models.get_model(arch, weights=None, num_classes=num_outputs)
        if pretrained == "imagenet":
            raise WeightsError(f"no offline ImageNet weights ship for {arch}; give a local file")
        if pretrained:
            report = load_local_weights(net, Path(pretrained))
        return net, IMAGENET_MEAN, IMAGENET_STD, report
    raise ValueError(f"unknown architecture {arch!r}; known: {(*TIMM_LITES, *TORCHVISION_ARCHS)}")


class FreezableStages(nn.Module):
    """Keeps a backbone's leading stages at their pretrained weights: `stages()` lists them."""

    frozen: list[nn.Module]

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def train(self, mode: bool = True):
        """Frozen stages stay in eval mode: their batch-norm statistics are pretrained too."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def freeze_leading_stages(self, stages: int) -> int:
        """Stop training the stem and the first `stages - 1` stages; returns the tensors frozen.

        Early, high-resolution stages hold generic edge and texture filters and cost most of the
        backward pass; keeping ImageNet's makes epochs cheaper with little loss of fit.
        """
        order = self.stages()
        if stages > len(order):
            raise ValueError(f"cannot freeze {stages} stages: the backbone has {len(order)}")
        self.frozen = order[:stages]
        count = 0
        for module in self.frozen:
            for param in module.parameters():
                param.requires_grad_(False)
                count += 1
        self.train(self.training)
        return count


class InspectionClassifier(FreezableStages):
    """Raw pixels in, class probabilities out.

    With `single_logit` (binary defect/good), the net has one output: the defect logit, so that
    soft labels (an expert's defect probability) can be regressed with BCE. Probabilities are
    always returned as [N, C] with C = number of classes, good class first in that case.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        single_logit: bool,
        tta: str = "none",
    ):
        super().__init__()
        self.net = net
        self.single_logit = single_logit
        self.tta = tta
        # Leading stages kept at their pretrained weights (see freeze_leading_stages).
        self.frozen: list[nn.Module] = []
        scale = torch.tensor(std, dtype=torch.float32) * 255.0
        self.register_buffer("offset", (torch.tensor(mean, dtype=torch.float32) * 255.0).view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def stages(self) -> list[nn.Module]:
        return leading_stages(self.net)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W] (channels_last in memory)."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.offset) / self.scale

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.single_logit:
            p = torch.sigmoid(logits[:, :1])
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.tta == "none":
            return self.probabilities(self.logits(images))
        views = tta_views(images, self.tta)
        n = images.shape[0]
        probs = self.probabilities(self.logits(torch.cat(views, dim=0)))
        return probs.view(len(views), n, -1).mean(dim=0)


def static_same_padding(model: nn.Module, height: int, width: int) -> int:
    """Turn TF-style 'same' padding, computed from the input's shape at run time, into constants.

    timm's tf_* models pad stride-2 convolutions asymmetrically from the tensor's size; traced to
    ONNX that is Shape/Ceil/Cast arithmetic around every such Pad (51 Casts become 6 at 300 px,
    measured 5-10 % faster at batch 1; ONNX Runtime still keeps the five constant Pads). A
    bundle's input size is fixed, so the padding is too. Works for any module that takes uint8
    NHWC pixels (classifier or detector). Returns the convolutions changed.
    """
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Conv2dSame)]
    # One forward pass of a single view records each convolution's input size.
    tta = getattr(model, "tta", None)
    if tta is not None:
        model.tta = "none"
    try:
        with torch.no_grad():
            model(torch.zeros(1, height, width, 3, dtype=torch.uint8))
    finally:
        if tta is not None:
            model.tta = tta
        for hook in hooks:
            hook.remove()
    for module, size in sizes.items():
        pads = pad_same_arg(list(size), list(module.kernel_size), list(module.stride), list(module.dilation))
        module.forward = _padded_conv(module, tuple(int(p) for p in pads))
    return len(sizes)


def _padded_conv(conv: nn.Conv2d, pads: tuple[int, ...]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, pads)
        return nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def leading_stages(net: nn.Module) -> list[nn.Module]:
    """The backbone's stages from the input on, the stem first (timm EfficientNet, torchvision)."""
    if hasattr(net, "conv_stem") and hasattr(net, "blocks"):  # timm EfficientNet family
        return [nn.ModuleList([net.conv_stem, net.bn1]), *net.blocks]
    if hasattr(net, "features"):  # torchvision MobileNet / EfficientNet
        return list(net.features)
    if hasattr(net, "layer1"):  # torchvision ResNet
        return [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
    raise ValueError(f"do not know the stages of {type(net).__name__}")


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Label-preserving views of an NHWC batch: 4 flips, or all 8 dihedral symmetries."""
    h_flip = images.flip(2)
    v_flip = images.flip(1)
    views = [images, h_flip, v_flip, h_flip.flip(1)]
    if mode == "dihedral":
        t = images.transpose(1, 2)
        views += [t, t.flip(2), t.flip(1), t.flip(1).flip(2)]
    return views


def build_classifier(
    arch: str,
    classes: list[str],
    good_class: str | None,
    pretrained: str | None,
    soft_labels: bool = False,
    drop_rate: float = 0.2,
) -> tuple[InspectionClassifier, LoadReport | None]:
    """A classifier for the given classes. Binary good/defect with soft labels uses one logit."""
    single_logit = soft_labels and len(classes) == 2 and good_class == classes[0]
    if soft_labels and not single_logit:
        raise ValueError("soft labels need exactly two classes with the good class first")
    net, mean, std, report = build_backbone(arch, 1 if single_logit else len(classes), pretrained, drop_rate)
    if report:
        log.info("loaded %d pretrained tensors (skipped %s)", report.matched, report.skipped or "none")
    return InspectionClassifier(net, mean, std, single_logit), report
