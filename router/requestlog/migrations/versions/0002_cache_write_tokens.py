"""Prompt tokens written to the provider's cache, and indexes the attempts table lacked.

``cache_write_tokens`` lets usage explain cost on providers that bill cache writes
(Anthropic's ``cache_creation_input_tokens``). ``attempts`` is joined to ``requests``
by ``request_id`` and pruned by ``ts``; both were full scans in 0001.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A server default fills the rows written by older versions of the router.
    op.add_column(
        "requests",
        sa.Column("cache_write_tokens", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_attempts_request_id", "attempts", ["request_id"])
    op.create_index("ix_attempts_ts", "attempts", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_attempts_ts", table_name="attempts")
    op.drop_index("ix_attempts_request_id", table_name="attempts")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("cache_write_tokens")
