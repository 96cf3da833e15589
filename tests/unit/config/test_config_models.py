from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.config import (
    ConfigError,
    load_connection,
    load_connection_file,
    load_connections,
    parse_connection,
)
from bridge.config.secrets import EnvSecretRef, FileSecretRef, SecretResolutionError

REPO = Path(__file__).resolve().parents[3]


def raw(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "name": "x",
        "fhir_base_url": "https://epic.example.org/api/FHIR/R4",
        "auth": {"method": "backend_services", "client_id": "c", "keys": [{"private_key": {"env": "KEY"}}]},
        "resources": {"Patient": {}},
    }
    d.update(over)
    return d


def problems(data: object, source: str = "conn.json") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_connection(data, source=source)
    return exc.value.problems


def test_defaults_and_normalisation() -> None:
    cfg = parse_connection(raw(), source="x.json")
    assert cfg.fhir_base_url.endswith("/R4/")
    assert cfg.server_profile == "auto"
    assert cfg.auth.method == "backend_services" and cfg.auth.alg == "RS384"
    assert cfg.resources["Patient"].triggers == ["created", "updated"]
    assert cfg.roster.source == "seen-patients"
    assert cfg.initial_sync == "from-now" and cfg.topic_prefix == "epic"
    assert cfg.rate_limit.requests_per_second > 0 and cfg.timeouts.read_s > 0
    assert cfg.resources["Patient"].needs() == {"read", "search"}


@pytest.mark.parametrize("where", ["auth.client_secret", "auth.keys[0].private_key", "password"])
def test_inline_secret_rejected_with_location_and_fix(where: str) -> None:
    data = raw()
    if where == "auth.client_secret":
        data["auth"] = {
            "method": "authorization_code",
            "client_id": "c",
            "client_secret": "hunter2",
            "redirect_uri": "http://127.0.0.1:8765/cb",
            "scopes": ["user/Patient.read"],
        }
    elif where == "password":
        data["password"] = "hunter2"
    else:
        data["auth"] = {"method": "backend_services", "client_id": "c", "keys": [{"private_key": "abc"}]}
    [line] = problems(data)
    assert line.startswith(f"conn.json: {where}: inline secrets are not allowed")
    assert '{"env": "VAR_NAME"}' in line
    assert "hunter2" not in line


def test_pem_anywhere_is_rejected() -> None:
    data = raw(description="-----BEGIN PRIVATE KEY-----\nMIIE...")
    [line] = problems(data)
    assert "description" in line and "key material" in line


def test_errors_name_file_field_and_fix() -> None:
    data = raw(
        server_profile="cerner", poll_interval_s=0, resources={"Patient": {"triggers": ["deleted"]}}, bogus=1
    )
    lines = problems(data)
    text = "\n".join(lines)
    assert all(line.startswith("conn.json: ") for line in lines)
    assert "server_profile" in text and "'epic', 'generic' or 'auto'" in text
    assert "poll_interval_s" in text and "fix: use a larger number" in text
    assert "resources.Patient.triggers[0]" in text
    assert "bogus" in text and "unknown field" in text


def test_unknown_auth_method_and_missing_fields() -> None:
    text = "\n".join(problems(raw(auth={"method": "magic"})))
    assert "auth" in text and "backend_services" in text
    text = "\n".join(problems(raw(auth={"method": "backend_services"})))
    assert "auth.client_id" in text and "add this field" in text


def test_http_only_on_loopback() -> None:
    assert "https" in "\n".join(problems(raw(fhir_base_url="http://epic.example.org/R4/")))
    parse_connection(raw(fhir_base_url="http://127.0.0.1:8070/R4/"), source="x")


def test_authorization_code_rules() -> None:
    auth = {
        "method": "authorization_code",
        "client_id": "c",
        "redirect_uri": "https://app.example.org/cb",
        "scopes": ["user/Patient.read"],
        "client_secret": {"env": "S"},
    }
    assert "loopback" in "\n".join(problems(raw(auth=auth)))
    auth["redirect_uri"] = "http://127.0.0.1:8765/cb"
    del auth["client_secret"]
    assert "needs client_secret" in "\n".join(problems(raw(auth=auth)))
    auth["client_auth"] = "none"
    cfg = parse_connection(raw(auth=auth), source="x")
    assert cfg.auth.method == "authorization_code"


def test_roster_variants() -> None:
    assert "mrn_system" in "\n".join(problems(raw(roster={"source": "static", "mrns": ["1"]})))
    cfg = parse_connection(raw(roster={"source": "group", "group_id": "g1"}), source="x")
    assert cfg.roster.source == "group"


def test_at_least_one_resource_enabled() -> None:
    assert "enable at least one" in "\n".join(problems(raw(resources={"Patient": {"enabled": False}})))


def test_duplicate_kids_and_signing_kid() -> None:
    keys = [{"kid": "a", "private_key": {"env": "A"}}, {"kid": "a", "private_key": {"env": "B"}}]
    assert "distinct kid" in "\n".join(
        problems(raw(auth={"method": "backend_services", "client_id": "c", "keys": keys}))
    )
    keys[1]["kid"] = "b"
    text = "\n".join(
        problems(raw(auth={"method": "backend_services", "client_id": "c", "keys": keys, "signing_kid": "z"}))
    )
    assert "signing_kid" in text


def test_loader_folder_skips_examples_and_reports_every_file(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "ignored.json").write_text("{not json")
    (tmp_path / "good.json").write_text(json.dumps(raw(name="good")))
    (tmp_path / "bad.json").write_text(json.dumps(raw(name="bad", initial_sync="yesterday")))
    (tmp_path / "broken.json").write_text('{\n  "name": ,\n}')
    with pytest.raises(ConfigError) as exc:
        load_connections(tmp_path)
    text = "\n".join(exc.value.problems)
    assert f"{tmp_path / 'bad.json'}: initial_sync" in text
    assert f"{tmp_path / 'broken.json'}: line 2" in text
    assert "fix: correct the JSON syntax" in text
    assert "ignored" not in text
    (tmp_path / "bad.json").unlink()
    (tmp_path / "broken.json").unlink()
    assert list(load_connections(tmp_path)) == ["good"]


def test_name_must_match_file(tmp_path: Path) -> None:
    (tmp_path / "alpha.json").write_text(json.dumps(raw(name="beta")))
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_connection_file(tmp_path / "alpha.json")
    data = raw()
    del data["name"]
    (tmp_path / "gamma.json").write_text(json.dumps(data))
    assert load_connection(tmp_path, "gamma").name == "gamma"
    with pytest.raises(ConfigError, match="available: alpha, gamma"):
        load_connection(tmp_path, "delta")


def test_shipped_configs_and_examples_are_valid() -> None:
    folder = REPO / "connect-configs"
    assert "local-sim" in load_connections(folder)
    examples = sorted((folder / "examples").glob("*.json"))
    assert len(examples) >= 3
    names = {load_connection_file(p).name for p in examples}
    assert {"epic-sandbox", "epic-production"} <= names


def test_secret_refs_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "s3cret")
    assert EnvSecretRef(env="MY_SECRET").resolve().get_secret_value() == "s3cret"
    with pytest.raises(SecretResolutionError, match="NOPE is not set"):
        EnvSecretRef(env="NOPE").resolve()
    (tmp_path / "s.txt").write_text("from-file\n")
    ref = FileSecretRef(file="s.txt")
    assert ref.resolve(tmp_path).get_secret_value() == "from-file"
    assert "from-file" not in repr(ref.resolve(tmp_path))
    with pytest.raises(SecretResolutionError, match="cannot read"):
        FileSecretRef(file="missing.txt").resolve(tmp_path)
