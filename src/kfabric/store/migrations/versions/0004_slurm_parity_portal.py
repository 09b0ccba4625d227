"""Slurm parity and the web portal: script snapshots, arrays, dependencies, holds, output paths, notifications,
browser sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("script", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("array_job_id", _BIG, nullable=True))
        batch_op.add_column(sa.Column("array_task_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dependency", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("kill_on_invalid_dep", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("held_by", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("begin_at_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("priority_adjust", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("stdout_path", sa.String(length=1000), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("stderr_path", sa.String(length=1000), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("expected_start_why", sa.Text(), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_jobs_array_job_id"), ["array_job_id"], unique=False)
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=128), nullable=False, server_default=""))
    op.create_table(
        "notifications",
        sa.Column("id", _BIG, autoincrement=True, nullable=False),
        sa.Column("job_id", _BIG, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=1000), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_s", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at_s", sa.Float(), nullable=False),
        sa.Column("delivered_at_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_notifications_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_notifications_status_next", ["status", "next_attempt_s"], unique=False)
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", _BIG, nullable=False),
        sa.Column("token_id", _BIG, nullable=True),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at_s", sa.Float(), nullable=False),
        sa.Column("expires_at_s", sa.Float(), nullable=False),
        sa.Column("last_seen_s", sa.Float(), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("tz", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users")),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], name=op.f("fk_web_sessions_token_id_tokens")),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_web_sessions")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_id"))
    op.drop_table("web_sessions")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_status_next")
        batch_op.drop_index(batch_op.f("ix_notifications_job_id"))
    op.drop_table("notifications")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_array_job_id"))
        for name in (
            "expected_start_why",
            "stderr_path",
            "stdout_path",
            "priority_adjust",
            "begin_at_s",
            "held_by",
            "kill_on_invalid_dep",
            "dependency",
            "array_task_id",
            "array_job_id",
            "script",
        ):
            batch_op.drop_column(name)
