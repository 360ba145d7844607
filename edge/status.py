"""A station's periodic status report to the record, for `zerodefect fleet status`: the model
it serves (and its shadow), and its outbox backlog, which only the station can know."""

from __future__ import annotations

import asyncio
import logging

import httpx

from zerodefect.edge.model import ModelHolder
from zerodefect.edge.outbox import Outbox
from zerodefect.inference.wire import StationStatusIn

log = logging.getLogger(__name__)


def status_report(
    holder: ModelHolder, outbox: Outbox, shadow_holder: ModelHolder | None, every: float
) -> dict:
    counts = outbox.counts()
    return StationStatusIn(
        model_name=holder.current.name,
        model_version=holder.current.version,
        shadow_version=shadow_holder.current.version if shadow_holder else None,
        outbox_pending=counts["pending"],
        outbox_dead=counts["dead"],
        every_seconds=every,
    ).model_dump(mode="json")


async def report_status(
    record_url: str,
    api_key: str | None,
    holder: ModelHolder,
    outbox: Outbox,
    shadow_holder: ModelHolder | None,
    every: float,
) -> None:
    """PUT /v1/station-status now and every `every` seconds until cancelled; a record that is
    away misses reports (it then shows the station as stale), nothing else."""
    url = record_url.rstrip("/") + "/v1/station-status"
    async with httpx.AsyncClient(timeout=10.0, headers={"X-API-Key": api_key or ""}) as client:
        while True:
            body = await asyncio.to_thread(status_report, holder, outbox, shadow_holder, every)
            try:
                answer = await client.put(url, json=body)
                if answer.status_code >= 400:
                    log.warning(
                        "the record answered %s to the status report: %s",
                        answer.status_code,
                        answer.text[:200],
                    )
            except httpx.HTTPError as exc:
                log.debug("status report not delivered: %s", exc)
            await asyncio.sleep(every)
