"""Prometheus metrics of one station service (its own registry, so apps never collide)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)


class EdgeMetrics:
    def __init__(
        self,
        queue_depth: Callable[[], float],
        outbox_pending: Callable[[], float],
        outbox_dead: Callable[[], float] = lambda: 0.0,
        failsafe_window: int = 200,
    ):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "zd_inspection_latency_seconds",
            "Time from request to verdict",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verdicts = Counter(
            "zd_verdicts", "Verdicts given", ["verdict", "failsafe"], registry=self.registry
        )
        self.batch = Histogram(
            "zd_batch_size",
            "Images per ONNX Runtime call",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=self.registry,
        )
        # The fail-safe share of the last parts (its andon rule: failsafe_rate at the record): a
        # budget_ms that does not suit the machine shows here before anyone reads the verdicts.
        self._failsafe: deque[bool] = deque(maxlen=failsafe_window)
        Gauge(
            "zd_failsafe_rate",
            f"Share of the last {failsafe_window} parts given the fail-safe verdict (not judged within budget_ms)",
            registry=self.registry,
        ).set_function(lambda: sum(self._failsafe) / len(self._failsafe) if self._failsafe else 0.0)
        self.outbox_group = Histogram(
            "zd_outbox_group_size",
            "Results per outbox commit (group commit: one fsync for all of them)",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.model = Gauge(
            "zd_model_info", "The served model (value 1)", ["name", "version"], registry=self.registry
        )
        self.model_refusals = Counter(
            "zd_model_refusals",
            "Model loads refused (unsigned, untrusted signer, tampered or malformed bundle)",
            registry=self.registry,
        )
        Gauge("zd_queue_depth", "Images waiting for a batch", registry=self.registry).set_function(
            queue_depth
        )
        Gauge(
            "zd_outbox_pending", "Results not yet in the quality record", registry=self.registry
        ).set_function(outbox_pending)
        # Alert on either: a part the record refused is kept at the station but not in the record.
        Gauge(
            "zd_outbox_dead", "Results the quality record refused (kept, not retried)", registry=self.registry
        ).set_function(outbox_dead)
        self.refused = Counter(
            "zd_record_refusals",
            "Results the quality record refused with a 4xx, by status",
            ["status"],
            registry=self.registry,
        )
        # Only when the station reads part codes (codes:); unread parts also raise the record's andon.
        self.codes = Counter(
            "zd_part_codes", "Part codes read from the frame, by result", ["result"], registry=self.registry
        )

    def observe(self, response: dict[str, Any], latency_ms: float, batch_size: int | None) -> None:
        self.latency.observe(latency_ms / 1000.0)
        self.verdicts.labels(response["verdict"], str(response["failsafe"]).lower()).inc()
        self._failsafe.append(bool(response["failsafe"]))
        if batch_size:
            self.batch.observe(batch_size)
        if response.get("code_read") is not None:
            self.codes.labels("read" if response["code_read"] else "unread").inc()

    def set_model(self, name: str, version: str) -> None:
        self.model.clear()
        self.model.labels(name, version).set(1)
