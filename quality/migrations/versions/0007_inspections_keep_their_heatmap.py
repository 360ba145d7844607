"""inspections keep the sha256 of their anomaly heatmap (stored beside the image)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 00:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heatmap_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_column("heatmap_sha256")
