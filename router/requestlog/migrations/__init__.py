"""The request log's Alembic history, run as ``python -m router.requestlog.migrations upgrade``
(``__main__``): a child the writer starts only when the database is not at head.

``env.py`` and ``versions/`` are read by Alembic through ``schema.alembic_config()``, which
points ``script_location`` here; no ``alembic.ini``. The tables themselves are defined in
``router/requestlog/schema.py``; the serving process imports only ``store.py`` and its
backends (no SQLAlchemy).
"""
