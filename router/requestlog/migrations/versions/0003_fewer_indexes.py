"""Indexes that no query uses, dropped: each one was paid for on every insert.

``attempts.request_id`` held random ids, so every insert landed on a random page of
its B-tree: on SQLite it cost more than the rest of a request's and an attempt's rows
together (15.6 -> 7.1 us per pair, measured). The ``attempts`` of a request are found by
``ts`` and ``request_id`` together (an attempt carries its request's ``ts``), which the
``ts`` index serves. ``requests.route`` and ``requests.key_name`` were never filtered on:
usage totals filter by ``ts`` and group, which those indexes do not help.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_attempts_request_id", table_name="attempts")
    op.drop_index("ix_requests_key_name", table_name="requests")
    op.drop_index("ix_requests_route", table_name="requests")


def downgrade() -> None:
    op.create_index("ix_requests_route", "requests", ["route"])
    op.create_index("ix_requests_key_name", "requests", ["key_name"])
    op.create_index("ix_attempts_request_id", "attempts", ["request_id"])
