"""Credentials for Kafka and the schema registry: by reference, like every other secret of the bridge.

librdkafka settings that are secrets (``sasl.password``, ``ssl.key.password``, ...) are refused in the plain
``EPIC_BRIDGE_KAFKA_CONFIG`` and taken from ``EPIC_BRIDGE_KAFKA_SECRETS`` as ``{"env": ...}`` or
``{"file": ...}`` references, resolved when the clients are built. The registry gets basic auth (a user and a
password reference) and TLS settings (CA bundle, client certificate and key) of its own, in the form
confluent-kafka's ``SchemaRegistryClient`` takes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.config.secrets import EnvSecretRef, FileSecretRef, resolve_secret

if TYPE_CHECKING:
    from bridge.kafka.context import KafkaSettings

# librdkafka settings whose value is a secret (or holds one): sasl.password, ssl.key.password,
# ssl.keystore.password, sasl.oauthbearer.client.secret, ssl.key.pem, sasl.oauthbearer.config, ...
_SECRET_KEY = re.compile(r"password|secret|passphrase|key\.pem$|private\.key|^sasl\.oauthbearer\.config$")

REFERENCE_EXAMPLE = (
    'EPIC_BRIDGE_KAFKA_SECRETS=\'{"sasl.password": {"env": "KAFKA_PASSWORD"}}\' '
    '(or {"file": "/run/secrets/kafka-password"})'
)


def is_secret_setting(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def refuse_inline_secrets(config: Mapping[str, str]) -> Mapping[str, str]:
    """For the validator of EPIC_BRIDGE_KAFKA_CONFIG: names the secret settings, never their values."""
    inline = sorted(k for k in config if is_secret_setting(k))
    if inline:
        raise ValueError(
            f"{', '.join(inline)} must not be given inline in EPIC_BRIDGE_KAFKA_CONFIG; reference the secret "
            f"instead: {REFERENCE_EXAMPLE}"
        )
    return config


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings for every producer, consumer and admin client: the plain ones and the resolved
    secrets. SecretResolutionError names a reference that points at nothing."""
    secrets = {key: _resolve(ref) for key, ref in settings.kafka_secrets.items()}
    return {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_config, **secrets}


def registry_config(settings: KafkaSettings) -> dict[str, Any]:
    """SchemaRegistryClient settings: URL, basic auth, TLS."""
    conf: dict[str, Any] = {"url": settings.schema_registry_url}
    if settings.schema_registry_user is not None and settings.schema_registry_password is not None:
        password = _resolve(settings.schema_registry_password)
        conf["basic.auth.user.info"] = f"{settings.schema_registry_user}:{password}"
    optional = {
        "ssl.ca.location": settings.schema_registry_ca_file,
        "ssl.certificate.location": settings.schema_registry_cert_file,
        "ssl.key.location": settings.schema_registry_key_file,
    }
    conf.update({key: str(path) for key, path in optional.items() if path is not None})
    if settings.schema_registry_key_password is not None:
        conf["ssl.key.password"] = _resolve(settings.schema_registry_key_password)
    return conf


def _resolve(ref: EnvSecretRef | FileSecretRef) -> str:
    return resolve_secret(ref).get_secret_value()
