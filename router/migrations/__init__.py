"""The request log's database: its schema, its Alembic history, and the driver-level
access the serving process writes through.

``store.py`` is all a serving process imports (no SQLAlchemy). ``schema.py`` defines the
tables and the upgrade; it runs in ``python -m router.migrations upgrade`` (``__main__``),
a child the writer starts only when the database is not at head, and under
``/admin/usage``. ``env.py`` and ``versions/`` are read by Alembic through
``schema.alembic_config()``, which points ``script_location`` here; no ``alembic.ini``.
"""
