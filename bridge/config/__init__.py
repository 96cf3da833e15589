"""Connection configs (pydantic) and process settings."""

from bridge.config.loader import (
    ConfigError,
    load_connection,
    load_connection_file,
    load_connections,
    parse_connection,
)
from bridge.config.models import (
    AuthorizationCodeAuth,
    BackendServicesAuth,
    ConnectionConfig,
    ResourceConfig,
    SigningKeyRef,
)
from bridge.config.secrets import EnvSecretRef, FileSecretRef, SecretResolutionError
from bridge.config.settings import BridgeSettings

__all__ = [
    "AuthorizationCodeAuth",
    "BackendServicesAuth",
    "BridgeSettings",
    "ConfigError",
    "ConnectionConfig",
    "EnvSecretRef",
    "FileSecretRef",
    "ResourceConfig",
    "SecretResolutionError",
    "SigningKeyRef",
    "load_connection",
    "load_connection_file",
    "load_connections",
    "parse_connection",
]
