"""Why an answer that came back 200 was broken: ``requests.output_error``.

NULL for a sound answer (and for requests that got none); else ``empty`` (no content
and no tool call), ``not_json`` (not the JSON ``response_format`` asked for),
``stream_broken`` (a stream cut before its end marker) or ``bad_response``. Nullable,
without a default: adding it rewrites nothing on either backend, and an older router's
inserts, which do not name it, leave it NULL.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("output_error", sa.String(), nullable=True))


def downgrade() -> None:
    # In place on both backends (SQLite 3.35+): a batch copy of the table would break the
    # ``attempts`` view that reads it.
    op.execute("ALTER TABLE requests DROP COLUMN output_error")
