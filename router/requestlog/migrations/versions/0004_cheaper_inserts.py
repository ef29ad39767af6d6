"""Cheaper inserts: no index on ``attempts.ts``, and SQLite keeps ``ts`` as Unix seconds.

Every index is paid for on each insert, and ``ix_attempts_ts`` served one query only,
pruning: attempts are now pruned by id, up to the oldest attempt still kept (a scan in
id order that stops there; ``store.py``). It cost the SQLite writer about 4,600
instructions per request and attempt row pair (callgrind; 44k for the pair then).

On SQLite, ``ts`` was SQLAlchemy's text for a datetime ('YYYY-MM-DD HH:MM:SS.ffffff'),
which the event loop formatted for every request (about 6,000 instructions) and SQLite
bound, compared and indexed as 26 bytes. It is now a REAL of Unix seconds, what the
router has at hand (``schema.UnixTime`` turns it into datetimes for queries). Rows
already written are converted in place, in one pass over each table (a long log takes
a while, once); PostgreSQL's ``timestamptz`` stays as it is.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# SQLAlchemy's text as Unix seconds: whole seconds from strftime (which also applies a
# '+HH:MM' offset, as sqlite3's own datetime adapter writes one), the microseconds from
# the text. Text that is no time at all (no router writes any) becomes 0, which the
# next prune removes, rather than failing the upgrade for good.
_TO_SECONDS = "coalesce(CAST(strftime('%s', ts) AS REAL) + CAST(substr(ts, 20, 7) AS REAL), 0.0)"
# And back, for a downgrade: microseconds, rounded, at most 999999.
_TO_TEXT = (
    "strftime('%Y-%m-%d %H:%M:%S', ts, 'unixepoch') || printf('.%06d', "
    "min(CAST((ts - CAST(ts AS INTEGER)) * 1000000 + 0.5 AS INTEGER), 999999))"
)


def upgrade() -> None:
    op.drop_index("ix_attempts_ts", table_name="attempts")
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in ("requests", "attempts"):
        op.execute(f"UPDATE {table} SET ts = {_TO_SECONDS} WHERE typeof(ts) = 'text'")
        # SQLite changes a column's type by copying the table (indexes are recreated).
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "ts",
                type_=sa.Float(),
                existing_type=sa.DateTime(timezone=True),
                existing_nullable=False,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("requests", "attempts"):
            with op.batch_alter_table(table) as batch:
                batch.alter_column(
                    "ts",
                    type_=sa.DateTime(timezone=True),
                    existing_type=sa.Float(),
                    existing_nullable=False,
                )
            op.execute(f"UPDATE {table} SET ts = {_TO_TEXT} WHERE typeof(ts) <> 'text'")
    op.create_index("ix_attempts_ts", "attempts", ["ts"])
