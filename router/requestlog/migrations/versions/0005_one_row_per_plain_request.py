"""One row for a request that its one attempt served; ``attempts`` becomes a view.

Most requests take one attempt, which serves them, and that attempt's row repeated
its request's time, id, route, endpoint and status. Writing it cost the SQLite writer
seven bound values, four of them text that SQLite copies, and a second B-tree insert:
without it, the writer takes 17,000 instructions per request instead of 24,100
(callgrind). Such a request now carries its attempt's own two figures
(``attempt_duration_ms``, ``attempt_ttft_ms``) in its row, and the other attempts
(retries, failovers, hedges, failures) keep rows of their own in ``attempt_rows``,
which is the old table renamed.

Readers see no change: ``attempts`` is a view with one row per attempt, as before,
the derived ones with a NULL ``id``. An older router still writing during a rolling
upgrade inserts through that view (an ``INSTEAD OF`` trigger), so its rows are kept.
Its prune fails on the view, rolls back whole and is retried later, which leaves the
pruning to the newer routers: its statement, on SQLite, reads a NULL id first, and a
trigger that let it delete would have taken every attempt row with it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = "ts, request_id, route, endpoint, status, reason, duration_ms, ttft_ms, hedged"
_NEW = ", ".join(f"NEW.{c}" for c in _COLUMNS.split(", ")).replace(
    "NEW.hedged", "coalesce(NEW.hedged, FALSE)"
)
# The id of a derived attempt is NULL: it has no row of its own.
_VIEW = (
    f"CREATE VIEW attempts AS SELECT id, {_COLUMNS} FROM attempt_rows UNION ALL "
    "SELECT {null_id}, ts, request_id, route, endpoint, status, {null_text}, "
    "attempt_duration_ms, attempt_ttft_ms, FALSE FROM requests "
    "WHERE attempt_duration_ms IS NOT NULL"
)
_SQLITE = [
    _VIEW.format(null_id="NULL", null_text="NULL"),
    "CREATE TRIGGER attempts_insert INSTEAD OF INSERT ON attempts BEGIN "
    f"INSERT INTO attempt_rows ({_COLUMNS}) VALUES ({_NEW}); END",
]
_POSTGRES = [
    _VIEW.format(null_id="NULL::bigint", null_text="NULL::varchar"),
    "CREATE FUNCTION attempts_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"INSERT INTO attempt_rows ({_COLUMNS}) VALUES ({_NEW}); RETURN NEW; END $$",
    "CREATE TRIGGER attempts_insert INSTEAD OF INSERT ON attempts "
    "FOR EACH ROW EXECUTE FUNCTION attempts_insert()",
]


def upgrade() -> None:
    op.add_column("requests", sa.Column("attempt_duration_ms", sa.Float(), nullable=True))
    op.add_column("requests", sa.Column("attempt_ttft_ms", sa.Float(), nullable=True))
    op.rename_table("attempts", "attempt_rows")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE if sqlite else _POSTGRES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW attempts")  # its trigger goes with it
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION attempts_insert()")
    op.rename_table("attempt_rows", "attempts")
    op.execute(
        f"INSERT INTO attempts ({_COLUMNS}) SELECT ts, request_id, route, endpoint, status,"
        " NULL, attempt_duration_ms, attempt_ttft_ms, FALSE FROM requests"
        " WHERE attempt_duration_ms IS NOT NULL"
    )
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("attempt_ttft_ms")
        batch.drop_column("attempt_duration_ms")
