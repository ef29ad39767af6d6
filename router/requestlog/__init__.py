"""The request log: records (``records``), the row each becomes (``rows``), the batched
writer (``writer``, ``batches``, ``retention``), the database layer (``store``; ``sqlite``,
``postgres``), the tables and their migrations (``schema``, ``migrations``), and usage
totals (``usage``)."""
