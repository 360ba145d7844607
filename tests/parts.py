"""Judged parts posted to a record service the way a station does, with images and defects."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import cv2
import httpx
import numpy as np

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def post_parts(url: str, key: str, station: str, verdicts: str, start: datetime, cls: str = "crack") -> None:
    for i, v in enumerate(verdicts):
        png = cv2.imencode(".png", np.full((40, 40, 3), 60 + i % 100, np.uint8))[1].tobytes()
        body = {
            "key": f"k-{station}-{start:%H%M}-{i:05d}",
            "serial": f"{station}-{i}",
            "batch": "B1",
            "captured_at": (start + timedelta(seconds=30 * i)).isoformat(),
            "model_name": "m",
            "model_version": "1" if start < T0 + timedelta(hours=2) else "2",
            "threshold": 0.5,
            "score": 0.9 if v == "r" else 0.1,
            "verdict": "reject" if v == "r" else "pass",
            "latency_ms": 5.0 + i % 7,
            "image_b64": base64.b64encode(png).decode(),
            "image_type": "image/png",
            "defects": [{"class_name": cls, "score": 0.9, "box": [2, 2, 20, 20]}] if v == "r" else [],
        }
        answer = httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key})
        assert answer.status_code == 201, answer.text
