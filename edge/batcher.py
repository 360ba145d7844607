"""Micro-batching: concurrent requests share one ONNX Runtime call.

A worker thread takes the first waiting image, adds whatever else is already queued (and, with
a wait window, whatever arrives within it), up to max_batch, and scores them together. Under
load, requests pile up while the model is busy, so batches form without any added wait; a lone
camera is never held back waiting for partners.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from zerodefect.edge.model import LoadedModel, ModelHolder
from zerodefect.inference.result import InspectionResult

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One image's verdict from a batch, and the model that gave it."""

    result: InspectionResult
    model: LoadedModel
    batch_size: int


class MicroBatcher:
    def __init__(self, holder: ModelHolder, max_batch: int = 8, wait_ms: float = 2.0, nice: int = 0):
        self.holder = holder
        # Linux niceness of the worker thread (the shadow's: 19, so the line's model comes first).
        self.nice = nice
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self._queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, image: np.ndarray) -> Future:
        """Queue a decoded RGB image; the future resolves to a Scored."""
        future: Future = Future()
        self._queue.put((image, future))
        return future

    def _run(self) -> None:
        if self.nice and sys.platform == "linux":  # per thread on Linux; per process elsewhere
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            until = time.perf_counter() + self.wait
            limit = min(self.max_batch, self.holder.current.engine.batch_size)
            while len(batch) < limit:
                remaining = until - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            live = [(img, fut) for img, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            # One snapshot per batch: a hot swap never splits a batch between two models.
            model = self.holder.current
            try:
                # Verdicts here, in the worker: a detector's NMS stays off the event loop. The
                # engine's one scoring path (a tiled bundle scores each frame tile by tile).
                results = model.engine.predict([img for img, _ in live])
            except Exception as exc:  # a model failure must fail these requests, not the worker
                log.exception("batch of %d failed", len(live))
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                fut.set_result(Scored(result, model, len(live)))
