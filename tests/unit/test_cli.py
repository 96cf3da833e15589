from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.credentials import CredentialStore, StoredCredentials, load_keys, new_key


def test_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert (
        main(
            ["--config-dir", str(tmp_path), "keys", "generate", "--connection", "prod", "--out-dir", str(out)]
        )
        == 0
    )
    [pem] = list(out.glob("prod-*.pem"))
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    text = capsys.readouterr().out
    assert "PRIVATE KEY" not in text and '"kty": "RSA"' in text and '"alg": "RS384"' in text
    assert "jwks.json" in text


def test_keys_generate_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEY_PASS", "correct horse")
    assert main(["keys", "generate", "--out-dir", str(tmp_path), "--passphrase-env", "KEY_PASS"]) == 0
    assert b"ENCRYPTED" in next(tmp_path.glob("*.pem")).read_bytes()
    assert '"passphrase"' in capsys.readouterr().out


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "auth": {"client_secret": "x"}}))
    assert main(["--config-dir", str(tmp_path), "check", "bad"]) == 2
    err = capsys.readouterr().err
    assert "bad.json: auth.client_secret: inline secrets are not allowed" in err
    assert main(["--config-dir", str(tmp_path), "check", "missing"]) == 2
    assert "no such connection" in capsys.readouterr().err


def test_connect_refuses_backend_services(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert main(["--config-dir", str(repo / "connect-configs"), "connect", "local-sim"]) == 2
    assert "connect is for authorization_code" in capsys.readouterr().err


def test_credentials_new_key_and_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["credentials", "new-key"]) == 0
    old = capsys.readouterr().out.strip()
    CredentialStore(tmp_path / "credentials", load_keys(key=old)).save("c", StoredCredentials(scope="s"))
    new = new_key()
    monkeypatch.setenv("EPIC_BRIDGE_CREDENTIALS_KEY", f"{new},{old}")
    assert main(["--state-dir", str(tmp_path), "credentials", "rotate"]) == 0
    assert "re-encrypted 1" in capsys.readouterr().out
    assert CredentialStore(tmp_path / "credentials", load_keys(key=new)).load("c") is not None


def test_keys_jwks_prints_public_keys_of_configured_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_pem: tuple[str, bytes]
) -> None:
    kid, pem = key_pem
    (tmp_path / "k.pem").write_bytes(pem)
    for name in ("one", "two"):
        (tmp_path / f"{name}.json").write_text(
            json.dumps(
                {
                    "fhir_base_url": "https://epic.example.org/R4/",
                    "auth": {
                        "method": "backend_services",
                        "client_id": name,
                        "keys": [{"private_key": {"file": "k.pem"}}],
                    },
                    "resources": {"Patient": {}},
                }
            )
        )
    assert main(["--config-dir", str(tmp_path), "keys", "jwks"]) == 0
    jwks = json.loads(capsys.readouterr().out)
    assert [k["kid"] for k in jwks["keys"]] == [kid]  # shared key published once
    assert "d" not in jwks["keys"][0]
