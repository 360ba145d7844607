"""idempotency keys are unique per station, not across the record

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:50:00

Existing rows keep their keys: a key unique across the record is unique within its station,
so the data needs no rewrite, only the constraint moves from (key) to (station_id, key).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's copy of 0001 has an unnamed unique constraint on `key`; this convention names it in
# batch mode so it can be dropped. PostgreSQL named it itself (inspections_key_key).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _key_constraint() -> str:
    found = [
        u["name"]
        for u in sa.inspect(op.get_bind()).get_unique_constraints("inspections")
        if u["column_names"] == ["key"]
    ]
    return (found[0] if found else None) or "uq_inspections_key"


def upgrade() -> None:
    """Upgrade schema."""
    old = _key_constraint()
    with op.batch_alter_table("inspections", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(old, type_="unique")
        batch_op.create_unique_constraint("uq_inspection_station_key", ["station_id", "key"])


def downgrade() -> None:
    """Downgrade schema (fails if two stations share a key by then, as it must)."""
    with op.batch_alter_table("inspections", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_inspection_station_key", type_="unique")
        batch_op.create_unique_constraint("uq_inspections_key", ["key"])
