"""Models: architectures, offline pretrained weights, and the ONNX model bundle.

Only `zerodefect.models.bundle` is torch-free; the edge imports nothing else from here.
"""
