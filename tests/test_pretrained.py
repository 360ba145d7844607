"""The shipped ImageNet weights really load, and really recognise an image."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from zerodefect.inference.preprocess import read_image, resize
from zerodefect.models.classifier import build_classifier


def test_lite0_imagenet_weights_load_completely_and_classify() -> None:
    model, report = build_classifier("tf_efficientnet_lite0", [str(i) for i in range(1000)], None, "imagenet")
    assert report is not None
    assert report.matched == 247 and not report.missing and not report.unexpected and not report.skipped
    image = read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    batch = torch.from_numpy(np.stack([resize(image, (224, 224))]))
    with torch.no_grad():
        probs = model.eval()(batch)[0]
    assert int(probs.argmax()) == 652  # ImageNet "military uniform"
    assert float(probs[652]) > 0.3


def test_new_head_keeps_the_pretrained_backbone() -> None:
    reference, _ = build_classifier("tf_efficientnet_lite0", [str(i) for i in range(1000)], None, "imagenet")
    model, report = build_classifier("tf_efficientnet_lite0", ["good", "defective"], "good", "imagenet")
    assert report is not None and report.matched == 247
    assert model.net.classifier.out_features == 2
    assert torch.equal(model.net.conv_stem.weight, reference.net.conv_stem.weight)
    assert torch.equal(model.net.blocks[-1][0].conv_pwl.weight, reference.net.blocks[-1][0].conv_pwl.weight)
