"""Observability: structured logs (``logs``) and Prometheus metrics (``metrics``)."""
