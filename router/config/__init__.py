"""routes.yaml, parsed once into frozen, validated objects.

- ``schema``: what the file may say (pydantic models, bounds beside the fields).
- ``yamlfile``: reading it (safe loader, YAML 1.2 booleans, duplicate keys are errors).
- ``loader``: the defaults cascade and the checks across parts, into ``specs``.
- ``specs``: the resolved, frozen objects the runtime is built from.
"""

from router.config.loader import load, loads, parse_client_keys
from router.config.schema import (
    BLOCKS,
    AffinitySection,
    Breaker,
    HedgeSection,
    Price,
    Retry,
    ServerSection,
    Stats,
    StorageSection,
    Timeouts,
)
from router.config.specs import (
    Config,
    ConfigError,
    EndpointSpec,
    KeySpec,
    PolicySpec,
    ProviderSpec,
    RouteSpec,
    Secret,
    summary,
)

__all__ = [
    "BLOCKS",
    "AffinitySection",
    "Breaker",
    "Config",
    "ConfigError",
    "EndpointSpec",
    "HedgeSection",
    "KeySpec",
    "PolicySpec",
    "Price",
    "ProviderSpec",
    "Retry",
    "RouteSpec",
    "Secret",
    "ServerSection",
    "Stats",
    "StorageSection",
    "Timeouts",
    "load",
    "loads",
    "parse_client_keys",
    "summary",
]
