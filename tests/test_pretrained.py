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


def test_torchvision_backbone_from_a_local_weights_file(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.resnet18(weights=None, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, report = build_classifier("resnet18", ["good", "dent", "scratch"], "good", str(path))
    assert report is not None and report.skipped == ["fc.bias", "fc.weight"]
    assert report.matched == len(source.state_dict()) - 2
    assert torch.equal(model.net.conv1.weight, source.conv1.weight)
    probs = model.eval()(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))


def test_unknown_architecture_and_missing_weights_are_clear(tmp_path: Path) -> None:
    import pytest

    from zerodefect.models.pretrained import WeightsError

    with pytest.raises(ValueError, match="unknown architecture 'vgg99'"):
        build_classifier("vgg99", ["good", "bad"], "good", None)
    with pytest.raises(WeightsError, match="no offline ImageNet weights ship for mobilenet_v3_small"):
        build_classifier("mobilenet_v3_small", ["good", "bad"], "good", "imagenet")
    with pytest.raises(WeightsError, match="weights file not found"):
        build_classifier("mobilenet_v3_small", ["good", "bad"], "good", str(tmp_path / "none.pth"))


def test_frozen_stages_keep_their_pretrained_weights_and_statistics() -> None:
    model, _ = build_classifier("tf_efficientnet_lite0", ["good", "defective"], "good", "imagenet")
    assert model.freeze_leading_stages(3) > 0
    stem_before = model.net.conv_stem.weight.clone()
    stats_before = model.net.blocks[1][0].bn1.running_mean.clone()
    head_before = model.net.classifier.weight.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()
    assert not model.net.bn1.training and model.net.blocks[3].training
    images = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8)
    loss = model.logits(images).square().mean()
    loss.backward()
    optimizer.step()
    assert model.net.conv_stem.weight.grad is None
    assert torch.equal(model.net.conv_stem.weight, stem_before)
    assert torch.equal(model.net.blocks[1][0].bn1.running_mean, stats_before)
    assert not torch.equal(model.net.classifier.weight, head_before)


def test_static_same_padding_keeps_the_outputs_and_removes_runtime_shape_arithmetic() -> None:
    import onnx

    from zerodefect.models.classifier import static_same_padding
    from zerodefect.training.export import export_onnx

    model, _ = build_classifier("tf_efficientnet_lite0", ["good", "defective"], "good", "imagenet")
    model.eval()
    images = torch.randint(0, 255, (2, 75, 75, 3), dtype=torch.uint8)
    with torch.no_grad():
        before = model(images)
        assert static_same_padding(model, 75, 75) == 5  # the stem and four stride-2 stages
        after = model(images)
    assert torch.equal(before, after)
    graph = onnx.load_from_string(export_onnx(model, 75, 75)).graph
    assert not {"Ceil", "Shape"} & {node.op_type for node in graph.node}
