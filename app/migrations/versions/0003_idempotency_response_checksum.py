"""idempotency_keys.response_checksum: stored responses are verified before a replay

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows completed before this revision carry none and are replayed unverified
    # until they expire (idempotency_ttl_s).
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("response_checksum", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("response_checksum")
