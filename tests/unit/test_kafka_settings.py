"""Kafka and registry credentials are taken by reference (env var or file), never inline; the clients get
them resolved, in the form librdkafka and confluent-kafka's SchemaRegistryClient take."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.cli import main
from bridge.config.secrets import SecretResolutionError
from bridge.kafka.context import KafkaSettings
from bridge.kafka.security import client_config, registry_config

SECRET = "hunter2-kafka-secret"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
    ],
)
def test_a_secret_in_the_plain_kafka_config_is_refused(key: str) -> None:
    with pytest.raises(ValidationError) as refused:
        KafkaSettings(kafka_config={key: SECRET, "security.protocol": "SASL_SSL"})
    text = str(refused.value.errors(include_input=False))
    assert key in text and "EPIC_BRIDGE_KAFKA_SECRETS" in text and SECRET not in text


def test_plain_settings_stay_in_the_kafka_config() -> None:
    plain = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bridge",
        "ssl.ca.location": "/etc/ssl/kafka-ca.pem",
        "ssl.certificate.pem": "-----BEGIN CERTIFICATE-----",
    }
    assert client_config(KafkaSettings(kafka_config=plain)) == {
        "bootstrap.servers": "127.0.0.1:9092",
        **plain,
    }


def test_kafka_secrets_are_resolved_from_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    key_password = tmp_path / "key-password"
    key_password.write_text("from-a-file\n")
    monkeypatch.setenv("EPIC_BRIDGE_KAFKA_CONFIG", '{"sasl.username": "bridge"}')
    monkeypatch.setenv(
        "EPIC_BRIDGE_KAFKA_SECRETS",
        f'{{"sasl.password": {{"env": "KAFKA_PASSWORD"}}, "ssl.key.password": {{"file": "{key_password}"}}}}',
    )
    settings = KafkaSettings()
    assert SECRET not in repr(settings)
    assert client_config(settings) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "sasl.username": "bridge",
        "sasl.password": SECRET,
        "ssl.key.password": "from-a-file",
    }


def test_a_kafka_secret_reference_to_nothing_is_named() -> None:
    settings = KafkaSettings(kafka_secrets={"sasl.password": {"env": "NO_SUCH_VARIABLE_SET"}})
    with pytest.raises(SecretResolutionError, match="NO_SUCH_VARIABLE_SET"):
        client_config(settings)


def test_inline_values_and_duplicates_are_refused() -> None:
    with pytest.raises(ValidationError, match="inline secrets are not allowed"):
        KafkaSettings(kafka_secrets={"sasl.password": SECRET})
    with pytest.raises(ValidationError, match="inline secrets are not allowed"):
        KafkaSettings(schema_registry_user="u", schema_registry_password=SECRET)
    with pytest.raises(ValidationError, match="in both kafka_config and kafka_secrets"):
        KafkaSettings(kafka_config={"sasl.username": "u"}, kafka_secrets={"sasl.username": {"env": "U"}})


def test_registry_basic_auth_and_tls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REGISTRY_SECRET", SECRET)
    settings = KafkaSettings(
        schema_registry_url="https://registry.example.org/apis/ccompat/v7",
        schema_registry_user="api-key",
        schema_registry_password={"env": "REGISTRY_SECRET"},
        schema_registry_ca_file=tmp_path / "ca.pem",
        schema_registry_cert_file=tmp_path / "client.pem",
        schema_registry_key_file=tmp_path / "client.key",
        schema_registry_key_password={"env": "REGISTRY_SECRET"},
    )
    assert registry_config(settings) == {
        "url": "https://registry.example.org/apis/ccompat/v7",
        "basic.auth.user.info": f"api-key:{SECRET}",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "ssl.key.password": SECRET,
    }
    assert registry_config(KafkaSettings()) == {"url": "http://127.0.0.1:8081/apis/ccompat/v7"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"schema_registry_user": "u"}, "needs schema_registry_user and schema_registry_password"),
        ({"schema_registry_key_file": "k.pem"}, "need schema_registry_cert_file"),
        ({"schema_registry_url": "https://u:p@registry.example.org"}, "must not carry credentials"),
        (
            {
                "schema_registry_url": "http://registry.example.org",
                "schema_registry_user": "u",
                "schema_registry_password": {"env": "X"},
            },
            "must use https",
        ),
    ],
)
def test_registry_settings_that_cannot_work_safely_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**settings)  # type: ignore[arg-type]


def test_basic_auth_over_plain_http_is_fine_on_loopback() -> None:
    settings = KafkaSettings(schema_registry_user="u", schema_registry_password={"env": "X"})
    assert settings.schema_registry_url.startswith("http://127.0.0.1")


def test_the_command_line_names_the_setting_and_never_echoes_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EPIC_BRIDGE_KAFKA_CONFIG", f'{{"sasl.password": "{SECRET}"}}')
    code = main(["--config-dir", str(REPO / "connect-configs"), "run", "--connection", "local-sim"])
    err = capsys.readouterr().err
    assert code == 2
    assert "EPIC_BRIDGE_KAFKA_CONFIG: " in err and "sasl.password" in err and SECRET not in err
