"""The routing service: config, live stats, the request pipeline and the HTTP API."""
