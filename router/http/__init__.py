"""The way in: the HTTP/1.1 server (``server``) and the API's handlers (``api``)."""
