"""fleet: a challenger's verdicts in shadow mode, recorded apart from the line's, and each
station's latest status report

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 04:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
# 0010 (time partitions) is made on another branch at the same time: once both are merged,
# this revises 0010.
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "shadow_verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("defect_class", sa.String(length=100), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["station_id"], ["stations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("station_id", "key", "model_version", name="uq_shadow_station_key_version"),
    )
    op.create_index("ix_shadow_model_version", "shadow_verdicts", ["model_name", "model_version"])
    op.create_table(
        "station_status",
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("shadow_version", sa.String(length=100), nullable=True),
        sa.Column("outbox_pending", sa.Integer(), nullable=False),
        sa.Column("outbox_dead", sa.Integer(), nullable=False),
        sa.Column("every_seconds", sa.Float(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["station_id"], ["stations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("station_id"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("station_status")
    op.drop_index("ix_shadow_model_version", table_name="shadow_verdicts")
    op.drop_table("shadow_verdicts")
