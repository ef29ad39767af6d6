"""Revisions of the request log schema, oldest first (``0001``, ``0002``, ...)."""
