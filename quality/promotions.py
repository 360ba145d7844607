"""Model promotions in the record: which version became @champion, when, by whom, and why.

The registry (MLflow) holds the aliases; the record keeps the audit trail beside the parts
those versions judged, so an auditor reading a part's model version can see how it came to
serve, and a FORCED promotion's reason is never only in one person's terminal.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from zerodefect.problems import errors
from zerodefect.quality.deps import DB, Viewer
from zerodefect.quality.models import PROMOTION_REASON_MAX, ModelPromotion


class PromotionOut(BaseModel):
    id: int
    model_name: str
    model_version: str
    alias: str
    previous_version: str | None
    gate: str
    reason: str | None
    promoted_by: str
    promoted_at: datetime
    gate_rows: list[dict[str, Any]]


def add_promotion(
    session: Session,
    model_name: str,
    model_version: str,
    alias: str,
    previous_version: str | None,
    gate: str,
    reason: str | None,
    promoted_by: str,
    gate_rows: list[dict[str, Any]],
) -> ModelPromotion:
    """Store one promotion (append-only) and commit it."""
    if reason is not None and len(reason) > PROMOTION_REASON_MAX:
        # PostgreSQL refuses it (SQLite would keep it): one rule for both, named.
        raise ValueError(
            f"a promotion's reason takes at most {PROMOTION_REASON_MAX} characters, not {len(reason)}"
        )
    row = ModelPromotion(
        model_name=model_name,
        model_version=model_version,
        alias=alias,
        previous_version=previous_version,
        gate=gate,
        reason=reason,
        promoted_by=promoted_by,
        gate_rows_json=json.dumps(gate_rows)[:4000],
    )
    session.add(row)
    session.commit()
    return row


def to_out(row: ModelPromotion) -> PromotionOut:
    return PromotionOut(
        id=row.id,
        model_name=row.model_name,
        model_version=row.model_version,
        alias=row.alias,
        previous_version=row.previous_version,
        gate=row.gate,
        reason=row.reason,
        promoted_by=row.promoted_by,
        promoted_at=row.promoted_at,
        gate_rows=json.loads(row.gate_rows_json or "[]"),
    )


router = APIRouter()


@router.get("/v1/model-promotions", response_model=list[PromotionOut], responses=errors(401, 403, 422))
def list_promotions(
    session: DB,
    _user: Viewer,
    model: Annotated[str | None, Query(max_length=200, description="Only this registered model.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PromotionOut]:
    """Promotions, newest first: the gate's verdict, and the reason of any FORCED one."""
    query = select(ModelPromotion).order_by(ModelPromotion.id.desc()).limit(limit)
    if model:
        query = query.where(ModelPromotion.model_name == model)
    return [to_out(row) for row in session.scalars(query)]
