"""Alembic's entry point for the request log.

The router runs migrations itself (``python -m router.requestlog.migrations upgrade``, a child
process started by the writer) and hands Alembic an open connection in
``config.attributes["connection"]`` (already inside a transaction that holds the
migration lock), so this file only has to run the revisions on it. Offline mode
(``--sql``) is kept for operators who want the DDL as a script.
"""

from __future__ import annotations

from alembic import context

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the request log migrates itself: run `python -m router.requestlog.migrations upgrade` "
            "(the URL on stdin), or pass a connection in config.attributes['connection']"
        )
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
