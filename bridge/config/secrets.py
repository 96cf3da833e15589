"""Secret references: a secret is never written in a config, only where to find it.

A reference is either ``{"env": "VAR_NAME"}`` or ``{"file": "path/to/file"}``. Relative file paths
are resolved against the directory of the config file that names them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from bridge.errors import BridgeError

INLINE_VALUE_HINT = (
    'inline secrets are not allowed; reference the secret instead: {"env": "VAR_NAME"} '
    'or {"file": "path/to/secret"}'
)


class SecretResolutionError(BridgeError):
    """A secret reference points at nothing usable (missing variable, unreadable file)."""


class EnvSecretRef(BaseModel):
    """The secret is the value of an environment variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable name")

    def describe(self) -> str:
        return f"environment variable {self.env}"

    def resolve(self, base_dir: Path | None = None) -> SecretStr:
        value = os.environ.get(self.env)
        if value is None or value == "":
            raise SecretResolutionError(f"environment variable {self.env} is not set (or empty)")
        return SecretStr(value)


class FileSecretRef(BaseModel):
    """The secret is the content of a file (trailing newline stripped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str = Field(min_length=1, description="path; relative paths start at the config file's folder")

    def path(self, base_dir: Path | None = None) -> Path:
        p = Path(self.file).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return p

    def describe(self) -> str:
        return f"file {self.file}"

    def read_bytes(self, base_dir: Path | None = None) -> bytes:
        p = self.path(base_dir)
        try:
            return p.read_bytes()
        except OSError as exc:
            raise SecretResolutionError(f"cannot read secret file {p}: {exc.strerror}") from None

    def resolve(self, base_dir: Path | None = None) -> SecretStr:
        return SecretStr(self.read_bytes(base_dir).decode("utf-8").rstrip("\r\n"))


def _reject_inline(value: Any) -> Any:
    if isinstance(value, str | bytes | int | float):
        raise ValueError(INLINE_VALUE_HINT)
    return value


SecretRef = Annotated[EnvSecretRef | FileSecretRef, BeforeValidator(_reject_inline)]
"""A reference to a secret; a plain string in its place is rejected with the fix."""


def resolve_secret(ref: EnvSecretRef | FileSecretRef, base_dir: Path | None = None) -> SecretStr:
    return ref.resolve(base_dir)


def read_secret_bytes(ref: EnvSecretRef | FileSecretRef, base_dir: Path | None = None) -> bytes:
    """Raw bytes of a secret (for key material, which may be PEM in a file or in a variable)."""
    if isinstance(ref, FileSecretRef):
        return ref.read_bytes(base_dir)
    return ref.resolve(base_dir).get_secret_value().encode("utf-8")


# Keys that, with a plain string value anywhere in a config, mean a secret was pasted inline.
SECRET_KEY_NAMES = frozenset(
    {
        "secret",
        "client_secret",
        "password",
        "passphrase",
        "private_key",
        "access_token",
        "refresh_token",
        "token",
        "api_key",
        "credentials_key",
    }
)
_PEM_MARKERS = ("-----BEGIN", "PRIVATE KEY-----")


def find_inline_secrets(
    data: Any, path: tuple[str | int, ...] = ()
) -> list[tuple[tuple[str | int, ...], str]]:
    """Walk raw config JSON and list (location, reason) for every value that looks like a pasted secret."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            loc = (*path, key)
            if isinstance(key, str) and key.lower() in SECRET_KEY_NAMES and isinstance(value, str):
                found.append((loc, INLINE_VALUE_HINT))
            else:
                found.extend(find_inline_secrets(value, loc))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found.extend(find_inline_secrets(value, (*path, i)))
    elif isinstance(data, str) and any(m in data for m in _PEM_MARKERS):
        found.append((path, "key material pasted inline; " + INLINE_VALUE_HINT))
    return found
