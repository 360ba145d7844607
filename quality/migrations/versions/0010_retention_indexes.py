"""retention: indexes that let `record prune` find old parts and still-used images quickly

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 04:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Partial: only flagged parts and sampled passes have an image (a few in a hundred), so the index
# holds those rows, not the 130 M image-less rows a plant writes a day.
HAS_IMAGE = sa.text("image_sha256 IS NOT NULL")
HAS_HEATMAP = sa.text("heatmap_sha256 IS NOT NULL")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_inspections_captured_at", "inspections", ["captured_at"])
    op.create_index(
        "ix_inspections_image_sha256",
        "inspections",
        ["image_sha256"],
        postgresql_where=HAS_IMAGE,
        sqlite_where=HAS_IMAGE,
    )
    op.create_index(
        "ix_inspections_heatmap_sha256",
        "inspections",
        ["heatmap_sha256"],
        postgresql_where=HAS_HEATMAP,
        sqlite_where=HAS_HEATMAP,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_inspections_heatmap_sha256", "inspections")
    op.drop_index("ix_inspections_image_sha256", "inspections")
    op.drop_index("ix_inspections_captured_at", "inspections")
