"""The request log's schema (``schema.py``) and its Alembic history, shipped in the package.

``env.py`` and ``versions/`` are read by Alembic through ``schema.alembic_config()``,
which points ``script_location`` here; no ``alembic.ini`` is needed.
"""
