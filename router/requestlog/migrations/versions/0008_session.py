"""The conversation a request belonged to: ``requests.session``.

The session prompt-cache affinity computed for the request (``router.routing.sessions``:
``h:`` from ``x-session-id``, ``k:`` from ``prompt_cache_key``, ``a:`` from a coding
agent's session header, ``f:`` a fingerprint of the conversation's start), so the policy
lab can replay conversations and affinity from the log (where the policy has none, the
proxy names it the same way for the log: ``router.http.proxy._session``). NULL without
one (a short prompt whose client named none, an embedding). Nullable, without
a default: adding it rewrites nothing on either backend, and an older router's inserts,
which do not name it, leave it NULL.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("session", sa.String(), nullable=True))


def downgrade() -> None:
    # In place on both backends (SQLite 3.35+): a batch copy of the table would break the
    # ``attempts`` view that reads it.
    op.execute("ALTER TABLE requests DROP COLUMN session")
