"""The policy lab: ``router simulate`` replays recorded traffic through a routes file in
virtual time, through the service's own routing code, and reports what clients would see.

``trace`` reads the traffic (a JSONL file or the request log), ``fit`` and ``fleet`` model
how each endpoint answers, ``upstream`` plays those answers as providers, ``loop`` is the
virtual-time event loop, ``engine`` runs one config on one trace, ``figures`` and
``report`` turn a run into numbers, a table, JSON and an HTML page; ``command`` is the CLI.
docs/lab.md is the user's guide.
"""
