"""The request log: records (``records``), the batched writer (``writer``), the database layer
(``store``), the tables and their migrations (``schema``, ``migrations``), and usage totals."""
