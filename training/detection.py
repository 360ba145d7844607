"""Training detectors: cached images with boxes, box-aware augmentation, FCOS losses, and
validation by COCO mAP@0.5.

Images are decoded and resized to the model's square input once, their boxes scaled with
them; albumentations then moves boxes with every flip or crop. The loop itself is the shared
`fit` of zerodefect.training.train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.inference.bundle import Tiling
from zerodefect.inference.preprocess import read_image, resize
from zerodefect.inference.result import Detections
from zerodefect.inference.tiling import cut, merge_views, place, windows
from zerodefect.models.detector import InspectionDetector
from zerodefect.training.config import Config
from zerodefect.training.detection_metrics import coco_map
from zerodefect.training.train import FitResult, fit


def load_detection_data(
    manifest: Manifest, samples: list[Sample], size: int, interpolation: str, progress=None
) -> tuple[np.ndarray, list[Detections]]:
    """uint8 [N, size, size, 3] images and their true boxes scaled to that size (score 1)."""
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    truths = []
    for i, sample in enumerate(samples):
        image = read_image(manifest.resolve(sample))
        images[i] = resize(image, (size, size), interpolation)
        truths.append(truth_for(manifest, sample, image.shape[:2], (size, size)))
        if progress:
            progress(1)
    return images, truths


def truth_for(
    manifest: Manifest, sample: Sample, image_size: tuple[int, int], size: tuple[int, int] | None = None
) -> Detections:
    """A sample's true boxes (score 1), in its own pixels or scaled to `size` (h, w); boxes are
    clipped to the image and boxes with no area dropped, the same way for every split."""
    height, width = size or image_size
    h, w = image_size
    truth = sample.boxes.scaled(width / w, height / h)
    truth.xyxy = np.clip(truth.xyxy, 0, np.array([width, height, width, height], np.float32))
    return truth[(truth.xyxy[:, 2] > truth.xyxy[:, 0]) & (truth.xyxy[:, 3] > truth.xyxy[:, 1])]


# A box cut by a tile's edge is kept in that tile when at least this share of its area is
# inside: a sliver teaches the model to box fragments, and the tile that holds the rest (the
# overlap) or the merge of the pieces (zerodefect.inference.tiling) finds the defect.
MIN_VISIBLE = 0.2


def clip_to_window(
    truth: Detections, window: np.ndarray, size: tuple[int, int], min_visible: float = MIN_VISIBLE
) -> Detections:
    """The boxes of an image (its pixels) as a view sees them: clipped to the window, those
    with under `min_visible` of their area inside dropped, in the view's input pixels (h, w)."""
    x1, y1, x2, y2 = (float(v) for v in window)
    inside = np.clip(truth.xyxy, [x1, y1, x1, y1], [x2, y2, x2, y2]).astype(np.float32)
    area = (truth.xyxy[:, 2] - truth.xyxy[:, 0]) * (truth.xyxy[:, 3] - truth.xyxy[:, 1])
    kept = (inside[:, 2] - inside[:, 0]) * (inside[:, 3] - inside[:, 1])
    keep = (kept > 0) & (kept >= min_visible * np.maximum(area, 1e-12))
    moved = Detections(
        inside[keep] - np.array([x1, y1, x1, y1], np.float32), truth.scores[keep], truth.class_id[keep]
    )
    return moved.scaled(size[1] / (x2 - x1), size[0] / (y2 - y1))


@dataclass
class TileLayout:
    """How a tiled split's views (training images) map back to its images: each view's image
    and window, and each image's size and true boxes in its own pixels, which validation and
    calibration measure the merged detections against, as the line sees them."""

    owner: np.ndarray
    windows: np.ndarray
    sizes: list[tuple[int, int]]
    truths: list[Detections]
    input_size: tuple[int, int]

    def merge(self, detections: list[Detections], limit: int | None = None) -> list[Detections]:
        """Per image, its views' detections (input pixels) placed and merged, as the engine's
        sliced path does (zerodefect.inference.tiling)."""
        placed = [place(d, w, self.input_size) for d, w in zip(detections, self.windows, strict=True)]
        return merge_views(placed, self.owner, len(self.sizes), limit)


def load_tiled_detection_data(
    manifest: Manifest, samples: list[Sample], size: int, interpolation: str, tiling: Tiling, progress=None
) -> tuple[np.ndarray, list[Detections], TileLayout]:
    """The views of each image as the engine cuts them (`windows`, `cut`) at size x size, their
    boxes clipped into each view, and the layout back to the images."""
    views, truths, owner, wins, sizes, image_truths = [], [], [], [], [], []
    for i, sample in enumerate(samples):
        image = read_image(manifest.resolve(sample))
        truth = truth_for(manifest, sample, image.shape[:2])
        found = windows(image.shape[0], image.shape[1], tiling)
        views.append(cut(image, found, (size, size), interpolation))
        truths += [clip_to_window(truth, w, (size, size)) for w in found]
        owner += [i] * len(found)
        wins.append(found)
        sizes.append(image.shape[:2])
        image_truths.append(truth)
        if progress:
            progress(1)
    empty = np.zeros((0, size, size, 3), np.uint8)
    layout = TileLayout(
        np.array(owner, np.int64),
        np.concatenate(wins) if wins else np.zeros((0, 4), np.int64),
        sizes,
        image_truths,
        (size, size),
    )
    return (np.concatenate(views) if views else empty), truths, layout


class DetectionDataset(Dataset):
    """Cached images with boxes; `augment` is a box-aware albumentations pipeline or None."""

    def __init__(self, images: np.ndarray, truths: list[Detections], augment=None):
        self.images = images
        self.truths = truths
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, gt = self.images[i], self.truths[i]
        boxes, labels = gt.xyxy, gt.class_id
        if self.augment is not None:
            out = self.augment(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64)
        target = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy())}
        return torch.from_numpy(np.ascontiguousarray(image)), target


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def detector_loss(model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
    images, targets = batch
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return sum(model.loss(images.to(device), targets).values())


@torch.no_grad()
def predict_detections(
    model: InspectionDetector, images: np.ndarray, device: torch.device, batch_size: int = 16
) -> list[Detections]:
    """torchvision's post-processed detections for cached images, in input pixels."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        for det in model.detect(batch):
            out.append(
                Detections(
                    det["boxes"].float().cpu().numpy(),
                    det["scores"].float().cpu().numpy(),
                    det["labels"].cpu().numpy().astype(np.int64),
                )
            )
    return out


def fit_detector(
    cfg: Config,
    model: InspectionDetector,
    classes: list[str],
    train_images: np.ndarray,
    train_truths: list[Detections],
    val_images: np.ndarray,
    val_truths: list[Detections],
    run_dir: Path,
    augment=None,
    resume: bool = False,
    on_batch: Callable[[float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    val_layout: TileLayout | None = None,
) -> FitResult:
    """Train a detector, keeping the weights with the best validation mAP@0.5 (with tiling, of
    the merged detections on the whole val images, as the line scores them)."""

    def validate(net: nn.Module, device: torch.device) -> dict[str, Any]:
        found = predict_detections(net, val_images, device)
        truths, sizes = val_truths, [val_images.shape[1:3]] * len(val_images)
        if val_layout is not None:
            found = val_layout.merge(found, model.fcos.detections_per_img)
            truths, sizes = val_layout.truths, val_layout.sizes
        scores = coco_map(truths, found, classes, sizes)
        return {"score": scores["map50"], "val_map50": scores["map50"], "val_map50_95": scores["map50_95"]}

    dataset = DetectionDataset(train_images, train_truths, augment)
    return fit(
        cfg, model, dataset, detector_loss, validate, run_dir, augment, collate, resume, on_batch, on_epoch
    )


TRUE_BGR, PREDICTED_BGR = (0, 170, 0), (0, 0, 220)


def draw_samples(
    folder: Path,
    images: list[np.ndarray],
    truths: list[Detections],
    detections: list[Detections],
    classes: list[str],
    names: list[str],
) -> list[Path]:
    """PNG sheets of images with true boxes (green) and detections over threshold (red, with
    class and score), a colour legend on top, and labels placed so they never overlap."""
    import cv2

    from zerodefect.inference.draw import draw_detections

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    for image, gt, det, name in zip(images, truths, detections, names, strict=True):
        canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        scale = max(1, 400 // max(canvas.shape[:2]))
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        draw_detections(canvas, gt, None, TRUE_BGR, scale=scale)
        draw_detections(canvas, det, classes, PREDICTED_BGR, scale=scale)
        legend = np.full((22, canvas.shape[1], 3), 255, np.uint8)
        cv2.rectangle(legend, (4, 6), (16, 16), TRUE_BGR, -1)
        cv2.putText(legend, "true box", (20, 16), font, 0.4, (0, 0, 0), 1)
        cv2.rectangle(legend, (90, 6), (102, 16), PREDICTED_BGR, -1)
        cv2.putText(legend, "predicted (class score)", (106, 16), font, 0.4, (0, 0, 0), 1)
        path = folder / f"{Path(name).stem}.png"
        cv2.imwrite(str(path), np.vstack([legend, canvas]))
        paths.append(path)
    return paths


def save_pr_curves(folder: Path, scores: dict[str, Any], title: str) -> Path:
    """One PR curve per class at IoU 0.5, with its AP."""
    from zerodefect.training.plots import _pyplot

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, curve in scores["pr_curves"].items():
        ax.plot(curve["recall"], curve["precision"], label=f"{name} AP {scores['per_class_ap'][name]:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR @ IoU 0.5: {title} (mAP {scores['map50']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    path = folder / "pr_curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
