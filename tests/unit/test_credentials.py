from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from bridge.credentials import (
    CredentialStore,
    CredentialStoreError,
    StoredCredentials,
    atomic_write,
    load_keys,
    new_key,
)

ACCESS = "access-token-value-0123456789"
REFRESH = "refresh-token-value-9876543210"


def creds() -> StoredCredentials:
    return StoredCredentials(
        access_token=SecretStr(ACCESS),
        expires_at=123.0,
        refresh_token=SecretStr(REFRESH),
        scope="user/Patient.read",
    )


def test_round_trip_and_nothing_in_clear(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials", load_keys(key=new_key()))
    store.save("conn", creds())
    path = tmp_path / "credentials" / "conn.token"
    blob = path.read_bytes()
    assert ACCESS.encode() not in blob and REFRESH.encode() not in blob and b"Patient" not in blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = store.load("conn")
    assert loaded is not None
    assert loaded.refresh_token is not None and loaded.refresh_token.get_secret_value() == REFRESH
    assert loaded.access_token is not None and loaded.access_token.get_secret_value() == ACCESS
    assert ACCESS not in repr(loaded) and REFRESH not in repr(loaded)
    assert store.connections() == ["conn"]
    assert store.load("other") is None


def test_rotation_keeps_old_files_readable_then_rewrites(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    CredentialStore(tmp_path, load_keys(key=old)).save("conn", creds())
    both = CredentialStore(tmp_path, load_keys(key=f"{new},{old}"))
    assert both.load("conn") is not None
    assert both.rotate() == 1
    only_new = CredentialStore(tmp_path, load_keys(key=new))
    assert only_new.load("conn") is not None
    with pytest.raises(CredentialStoreError, match="none of the configured credentials keys"):
        CredentialStore(tmp_path, load_keys(key=old)).load("conn")


def test_key_sources(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# newest first\n{new_key()}\n{new_key()}\n")
    assert load_keys(env={}, key_file=key_file)
    assert load_keys(env={"EPIC_BRIDGE_CREDENTIALS_KEY_FILE": str(key_file)})
    assert load_keys(env={"EPIC_BRIDGE_CREDENTIALS_KEY": new_key()})
    with pytest.raises(CredentialStoreError, match="no credentials key"):
        load_keys(env={})
    with pytest.raises(CredentialStoreError, match="malformed") as exc:
        load_keys(env={"EPIC_BRIDGE_CREDENTIALS_KEY": "not-a-key"})
    assert "not-a-key" not in str(exc.value)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.bin"]


def test_bad_connection_names_refused(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, load_keys(key=new_key()))
    with pytest.raises(CredentialStoreError):
        store.save("../escape", creds())
