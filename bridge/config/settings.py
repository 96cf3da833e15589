"""Process-wide settings from the environment (``EPIC_BRIDGE_*``); per-connection settings live in configs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPIC_BRIDGE_", extra="ignore")

    config_dir: Path = Field(default=Path("connect-configs"), description="folder of connection configs")
    state_dir: Path = Field(default=Path(".bridge-state"), description="credential store and local caches")
    credentials_key: SecretStr | None = Field(
        default=None, description="Fernet key(s), comma-separated, newest first"
    )
    credentials_key_file: Path | None = Field(default=None, description="file with one Fernet key per line")
    http_host: str = Field(
        default="127.0.0.1", description="address of the HTTP port (JWKS, metrics, health)"
    )
    http_port: int = Field(default=8088, ge=0, le=65535, description="the HTTP port; 0 picks a free one")
    public_url: str | None = Field(
        default=None,
        description="how Epic reaches this bridge's HTTP port (for the JWKS URL), e.g. https://bridge.example.org",
    )
