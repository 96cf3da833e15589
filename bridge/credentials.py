"""Encrypted credential store: tokens and refresh tokens at rest, never in clear.

One file per connection, ``<state_dir>/credentials/<connection>.token``, holding a Fernet token
(AES-128-CBC + HMAC-SHA256) of the JSON credentials. Files are written atomically (temp file,
fsync, rename) with mode 0600.

Key: ``EPIC_BRIDGE_CREDENTIALS_KEY`` (comma-separated Fernet keys, newest first) or
``EPIC_BRIDGE_CREDENTIALS_KEY_FILE`` (one key per line, newest first). Rotation: put a new key
first (``epic-bridge credentials new-key``), keep the old one after it, run
``epic-bridge credentials rotate`` to re-encrypt everything with the new key, then drop the old key.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

KEY_ENV = "EPIC_BRIDGE_CREDENTIALS_KEY"
KEY_FILE_ENV = "EPIC_BRIDGE_CREDENTIALS_KEY_FILE"


class CredentialStoreError(BridgeError):
    """The store cannot be opened, read or written (message never contains secret material)."""


@dataclass(frozen=True, repr=False)
class StoredCredentials:
    """What the bridge keeps for one connection. The repr never shows a token."""

    access_token: SecretStr | None = None
    expires_at: float | None = None
    refresh_token: SecretStr | None = None
    scope: str | None = None
    patient: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    stored_at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return (
            f"StoredCredentials(access_token={'***' if self.access_token else None}, "
            f"expires_at={self.expires_at}, refresh_token={'***' if self.refresh_token else None}, "
            f"scope={self.scope!r})"
        )

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "access_token": self.access_token.get_secret_value() if self.access_token else None,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token.get_secret_value() if self.refresh_token else None,
            "scope": self.scope,
            "patient": self.patient,
            "extra": self.extra,
            "stored_at": self.stored_at,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoredCredentials:
        doc = json.loads(raw)
        return cls(
            access_token=SecretStr(doc["access_token"]) if doc.get("access_token") else None,
            expires_at=doc.get("expires_at"),
            refresh_token=SecretStr(doc["refresh_token"]) if doc.get("refresh_token") else None,
            scope=doc.get("scope"),
            patient=doc.get("patient"),
            extra=dict(doc.get("extra") or {}),
            stored_at=float(doc.get("stored_at") or 0.0),
        )


def new_key() -> str:
    """A fresh Fernet key (urlsafe base64, 32 bytes)."""
    return Fernet.generate_key().decode()


def _parse_keys(raw: str, source: str) -> MultiFernet:
    keys = [
        k.strip() for k in raw.replace(",", "\n").splitlines() if k.strip() and not k.strip().startswith("#")
    ]
    if not keys:
        raise CredentialStoreError(f"{source} holds no key")
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError:
        raise CredentialStoreError(
            f"{source} holds a malformed key (each must be 32 url-safe base64-encoded bytes; "
            "make one with `epic-bridge credentials new-key`)"
        ) from None


def load_keys(
    env: dict[str, str] | None = None, key_file: Path | None = None, key: str | None = None
) -> MultiFernet:
    """Keys from an explicit value, a key file, or the environment (in that order)."""
    environ = os.environ if env is None else env
    if key:
        return _parse_keys(key, "the credentials key")
    if key_file is None and environ.get(KEY_FILE_ENV):
        key_file = Path(environ[KEY_FILE_ENV])
    if key_file is not None:
        try:
            return _parse_keys(key_file.read_text(encoding="utf-8"), f"key file {key_file}")
        except OSError as exc:
            raise CredentialStoreError(f"cannot read key file {key_file}: {exc.strerror}") from None
    if environ.get(KEY_ENV):
        return _parse_keys(environ[KEY_ENV], f"${KEY_ENV}")
    raise CredentialStoreError(
        f"no credentials key: set {KEY_ENV} (or {KEY_FILE_ENV}) to a key made with "
        "`epic-bridge credentials new-key`"
    )


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CredentialStore:
    """Encrypted per-connection credentials under ``folder``."""

    SUFFIX = ".token"

    def __init__(self, folder: Path, keys: MultiFernet) -> None:
        self._folder = folder
        self._keys = keys

    def __repr__(self) -> str:
        return f"CredentialStore(folder={str(self._folder)!r})"

    @classmethod
    def open(
        cls, state_dir: Path, *, key: str | None = None, key_file: Path | None = None
    ) -> CredentialStore:
        return cls(state_dir / "credentials", load_keys(key=key, key_file=key_file))

    def _path(self, connection: str) -> Path:
        if not connection or "/" in connection or connection.startswith("."):
            raise CredentialStoreError(f"bad connection name {connection!r}")
        return self._folder / f"{connection}{self.SUFFIX}"

    def save(self, connection: str, creds: StoredCredentials) -> None:
        atomic_write(self._path(connection), self._keys.encrypt(creds.to_json()))
        log.info("stored credentials for connection %s (encrypted)", connection)

    def load(self, connection: str) -> StoredCredentials | None:
        path = self._path(connection)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialStoreError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return StoredCredentials.from_json(self._keys.decrypt(blob))
        except InvalidToken:
            raise CredentialStoreError(
                f"cannot decrypt {path}: none of the configured credentials keys opens it "
                "(was the key rotated without keeping the old one?)"
            ) from None

    def delete(self, connection: str) -> None:
        try:
            self._path(connection).unlink()
        except FileNotFoundError:
            pass

    def connections(self) -> list[str]:
        if not self._folder.is_dir():
            return []
        return sorted(p.name.removesuffix(self.SUFFIX) for p in self._folder.glob(f"*{self.SUFFIX}"))

    def rotate(self) -> int:
        """Re-encrypt every stored file with the newest key; returns how many were rewritten."""
        n = 0
        for name in self.connections():
            path = self._path(name)
            try:
                atomic_write(path, self._keys.rotate(path.read_bytes()))
            except InvalidToken:
                raise CredentialStoreError(f"cannot decrypt {path} with any configured key") from None
            n += 1
        return n
