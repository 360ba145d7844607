"""alerts count the breaches of a rule that keeps breaching; the Pareto's partial index

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 06:00:00

Alarm floods (ISA-18.2 / EEMUA 191): a rule that keeps breaching at one station updates its one
active alert (occurrences, last_seen_at) instead of raising another. Each breach is kept in
alert_breaches, unique per (station, rule, breach) as alerts were, so evaluating again never
counts one twice; the alerts already raised are their own first breach.

The dashboard's Pareto reads the window's rejects and reviewed parts (about 5 % of the parts)
through a partial index on captured_at, not the whole window (docs/query-plans.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLAGGED = sa.text("verdict = 'reject' OR review_status IS NOT NULL")
FLAGGED_INCLUDES = ["id", "verdict", "review_status", "review_label", "failsafe", "serial"]


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("occurrences", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE alerts SET last_seen_at = raised_at")
    op.create_table(
        "alert_breaches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("breach", sa.String(length=100), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["station_id"], ["stations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("station_id", "rule", "breach", name="uq_alert_breaches"),
    )
    op.create_index("ix_alert_breaches_alert_id", "alert_breaches", ["alert_id"])
    op.execute(
        "INSERT INTO alert_breaches (alert_id, station_id, rule, breach, seen_at) "
        "SELECT id, station_id, rule, breach, raised_at FROM alerts"
    )
    op.create_index(
        "ix_inspections_flagged_time",
        "inspections",
        ["captured_at"],
        postgresql_include=FLAGGED_INCLUDES,
        postgresql_where=FLAGGED,
        sqlite_where=FLAGGED,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_inspections_flagged_time", table_name="inspections")
    op.drop_index("ix_alert_breaches_alert_id", table_name="alert_breaches")
    op.drop_table("alert_breaches")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("last_seen_at")
        batch_op.drop_column("occurrences")
