"""Provider kinds: how to reach a host. A provider sends one request; it knows no routing."""
