"""Tests serve apps through the package's own runner: real uvicorn on a loopback port."""

from zerodefect.services import serve_in_thread as serve

__all__ = ["serve"]
