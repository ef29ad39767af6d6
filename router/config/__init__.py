"""routes.yaml, parsed once into frozen, validated objects.

- ``schema``: what the file may say (pydantic models, bounds beside the fields).
- ``yamlfile``: reading it (safe loader, YAML 1.2 booleans, duplicate keys are errors).
- ``loader``: the defaults cascade and the checks across parts, into ``specs``.
- ``specs``: the resolved, frozen objects the runtime is built from.
"""

from router.config.blocks import BLOCKS, Breaker, Price, Retry, Stats, Timeouts
from router.config.loader import load, loads, parse_client_keys
from router.config.schema import AffinitySection, HedgeSection, ServerSection, StorageSection
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
