"""inspections keep the image statistics the station measured (brightness, contrast, sharpness)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 02:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("image_brightness", "image_contrast", "image_sharpness")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.drop_column(name)
