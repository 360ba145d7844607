"""indexes for the dashboard's and the andon's SQL aggregation on a plant-size record

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 04:30:00

The dashboard's window over every station and the record's newest part need captured_at first
(ix_inspections_station_time and ix_inspections_verdict_time lead with another column); on
PostgreSQL that index carries the columns the dashboard groups by (INCLUDE), so the window is
read from the index alone (an index-only scan, no heap). The control-limit rule's hours of one
station read (station_id, captured_at, verdict) alone: it replaces ix_inspections_station_time,
whose queries it serves too. The andon's "last N parts of a station" needs (station_id, id),
with the verdict, so the streak rule reads the index alone; the drift watch's "first parts of
the current model version" needs (station_id, model_name, model_version, id); the false-reject
rule's reviews of the last hours need reviewed_at, only on reviewed rows (a partial index).
Measured on 10 million parts: docs/query-plans.md.

ix_inspections_time also serves retention's oldest-first reads, so it replaces 0010's plain
ix_inspections_captured_at.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVIEWED = sa.text("reviewed_at IS NOT NULL")
TIME_INCLUDES = ["station_id", "verdict", "review_status", "model_version", "latency_ms"]


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_inspections_time", "inspections", ["captured_at"], postgresql_include=TIME_INCLUDES)
    op.drop_index("ix_inspections_captured_at", table_name="inspections")
    op.drop_index("ix_inspections_station_time", table_name="inspections")
    op.create_index(
        "ix_inspections_station_time_verdict", "inspections", ["station_id", "captured_at", "verdict"]
    )
    op.create_index("ix_inspections_station_id", "inspections", ["station_id", "id", "verdict"])
    op.create_index(
        "ix_inspections_station_model", "inspections", ["station_id", "model_name", "model_version", "id"]
    )
    op.create_index(
        "ix_inspections_station_reviewed",
        "inspections",
        ["station_id", "reviewed_at"],
        postgresql_where=REVIEWED,
        sqlite_where=REVIEWED,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_inspections_station_reviewed", table_name="inspections")
    op.drop_index("ix_inspections_station_model", table_name="inspections")
    op.drop_index("ix_inspections_station_id", table_name="inspections")
    op.drop_index("ix_inspections_station_time_verdict", table_name="inspections")
    op.create_index("ix_inspections_station_time", "inspections", ["station_id", "captured_at"])
    op.create_index("ix_inspections_captured_at", "inspections", ["captured_at"])
    op.drop_index("ix_inspections_time", table_name="inspections")
