"""Token counts as 64-bit integers on PostgreSQL.

A ``usage`` count comes from the upstream, and PostgreSQL's ``integer`` stops at
2^31 - 1: one answer that reported more failed its whole batch. ``bigint`` holds what
SQLite's INTEGER always held (2^63 - 1); larger values are clamped by the writer
(``store.clamp``). SQLite needs no change: its INTEGER is already 64-bit, and
altering a type there would copy the table for nothing.

On PostgreSQL the change rewrites ``requests`` under an exclusive lock: writers of other
replicas wait (their batches fail on the command timeout and are retried, nothing is
lost). A downgrade clamps counts past 2^31 - 1 rather than fail.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
)
_INT32_MAX = 2**31 - 1


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    # One statement: the table is rewritten once, not once per column.
    changes = ", ".join(f"ALTER COLUMN {c} TYPE bigint" for c in COUNTS)
    op.execute(f"ALTER TABLE requests {changes}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    changes = ", ".join(
        f"ALTER COLUMN {c} TYPE integer USING least({c}, {_INT32_MAX})::integer" for c in COUNTS
    )
    op.execute(f"ALTER TABLE requests {changes}")
