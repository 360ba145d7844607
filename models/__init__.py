"""Models (torch side): architectures and offline pretrained weights.

The bundle format a station reads is torch-free and lives in `zerodefect.inference.bundle`.
"""
