"""ONNX Runtime inference: the runtime half of the product. Never imports torch."""
