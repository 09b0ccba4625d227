"""tenant safety: POSIX accounts, token lifecycle, keyed audit, credit reservations

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 08:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("posix_user", sa.String(length=64), nullable=False, server_default=""))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("expires_at_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_used_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("revoked_at_s", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserved_su_hours", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("key_id")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("reserved_su_hours")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_at_s")
        batch_op.drop_column("last_used_s")
        batch_op.drop_column("expires_at_s")
        batch_op.drop_column("name")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("posix_user")
