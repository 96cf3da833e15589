"""Helpers for the connection integration tests: the bridge side (keys, JWKS server, configs) against the real
simulator (fixtures ``epic_sim`` / ``epic_sim_factory`` from ``epic_sim.pytest_plugin``).

Imported by the test modules as ``from connection_support import ...`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.auth.keys import KeySet, generate_key_pair, load_private_key
from bridge.cli import _connect
from bridge.config import ConnectionConfig, load_connection_file
from bridge.config.models import AuthorizationCodeAuth
from bridge.config.settings import BridgeSettings
from bridge.credentials import CredentialStore, new_key
from bridge.web import JWKS_PATH, WebServer, add_jwks_routes

ALL_SCOPES = [f"system/{t}.crs" for t in ("Patient", "Observation", "DocumentReference")] + [
    f"system/{t}.rs" for t in ("Encounter", "Appointment", "Group")
]


@dataclass
class KeyFile:
    kid: str
    pem: bytes
    path: Path

    def keyset(self) -> KeySet:
        return KeySet([load_private_key(self.pem, kid=self.kid, alg="RS384")])


@dataclass
class BridgeSide:
    """The bridge's half of a test: a config folder, key files, and its HTTP server publishing the JWK Set."""

    folder: Path
    web: WebServer
    published: dict[str, list[KeyFile]] = field(default_factory=dict)
    jwks_hits: int = 0

    @property
    def jwks_url(self) -> str:
        return self.web.url + JWKS_PATH

    def new_key(self, name: str = "key") -> KeyFile:
        kid, pem = generate_key_pair("RS384")
        path = self.folder / f"{name}-{kid[:8]}.pem"
        path.write_bytes(pem)
        path.chmod(0o600)
        return KeyFile(kid, pem, path)

    def publish(self, connection: str, keys: list[KeyFile]) -> None:
        self.published[connection] = list(keys)

    def jwks(self) -> dict[str, Any]:
        self.jwks_hits += 1
        out: list[dict[str, Any]] = []
        for keys in self.published.values():
            for k in keys:
                out.extend(k.keyset().jwks()["keys"])
        return {"keys": out}

    def write_config(self, name: str, raw: dict[str, Any]) -> ConnectionConfig:
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps({"name": name, **raw}, indent=2))
        return load_connection_file(path)


@contextlib.contextmanager
def started_bridge_side(tmp_path: Path) -> Iterator[BridgeSide]:
    """Each test module wraps this in its own ``bridge_side`` fixture."""
    folder = tmp_path / "connect-configs"
    folder.mkdir()
    web = WebServer().start()
    side = BridgeSide(folder, web)
    add_jwks_routes(web, {"all": side.jwks})
    try:
        yield side
    finally:
        web.stop()


RESOURCES_ALL: dict[str, Any] = {
    "Patient": {"triggers": ["created", "updated"], "actions": ["create", "find"]},
    "Observation": {"triggers": ["created", "updated"], "actions": ["create"], "categories": ["vital-signs"]},
    "Encounter": {"triggers": ["created", "updated"]},
}


def backend_raw(
    sim: Any, client_id: str, keys: list[KeyFile], *, resources: dict[str, Any] | None = None, **over: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "fhir_base_url": sim.fhir_base,
        "auth": {
            "method": "backend_services",
            "client_id": client_id,
            "keys": [{"kid": k.kid, "private_key": {"file": k.path.name}} for k in keys],
        },
        "resources": resources or RESOURCES_ALL,
        "rate_limit": {"requests_per_second": 200, "burst": 50},
        "retry": {"max_attempts": 5, "base_delay_s": 0.05, "max_delay_s": 0.5},
    }
    raw.update(over)
    return raw


def register_backend(
    sim: Any, side: BridgeSide, client_id: str, scopes: list[str] | None = None, **extra: Any
) -> None:
    sim.register_client(
        client_id=client_id,
        auth_methods=["private_key_jwt"],
        jwks_url=side.jwks_url,
        scopes=scopes if scopes is not None else ALL_SCOPES,
        **extra,
    )


def backend_connection(
    sim: Any,
    side: BridgeSide,
    client_id: str = "bridge-backend",
    scopes: list[str] | None = None,
    **over: Any,
) -> ConnectionConfig:
    key = side.new_key(client_id)
    side.publish(client_id, [key])
    register_backend(sim, side, client_id, scopes)
    return side.write_config(client_id, backend_raw(sim, client_id, [key], **over))


# -- playing the user on the consent page --------------------------------------------------------------------


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type", "hidden") == "hidden" and "name" in a:
            self.fields[a["name"]] = a.get("value", "")


def play_user(
    authorize_url: str, decision: str = "allow", state_override: str | None = None
) -> httpx.Response:
    """Open the consent page, submit it, and follow the redirect to the loopback listener (like a browser)."""
    with httpx.Client(timeout=10) as browser:
        page = browser.get(authorize_url)
        page.raise_for_status()
        parser = _FormParser()
        parser.feed(page.text)
        assert parser.action, "consent page has no form"
        form = {**parser.fields, "decision": decision}
        answer = browser.post(httpx.URL(authorize_url).join(parser.action), data=form)
        assert answer.status_code in (302, 303), answer.text
        location = answer.headers["Location"]
        if state_override is not None:
            location = re.sub(r"state=[^&]*", f"state={state_override}", location)
        return browser.get(location)


def user_in_background(decision: str = "allow", state_override: str | None = None) -> tuple[Any, list[Any]]:
    """A ``show_url`` callback that plays the user in a thread; errors land in the returned list."""
    errors: list[Any] = []

    def show(url: str) -> None:
        def run() -> None:
            try:
                play_user(url, decision, state_override)
            except Exception as exc:  # reported by the test
                errors.append(exc)

        threading.Thread(target=run, daemon=True).start()

    return show, errors


def log_text(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    out, err = capfd.readouterr()
    return "\n".join([caplog.text, *(r.getMessage() for r in caplog.records), out, err])


def pem_fragments(pem: bytes) -> list[str]:
    """Distinctive pieces of private key material (each base64 line of the PEM body)."""
    lines = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
    return [ln for ln in lines if len(ln) >= 20]


# -- authorization-code connections ----------------------------------------------------------------------

SECRET = "sim-client-secret-7f3a9c1e"
USER_SCOPES = ["user/Patient.read", "user/Observation.read", "user/Encounter.read"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def authcode_connection(
    sim: Any,
    side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    *,
    client_id: str = "bridge-ac",
    register_redirect: str | None = None,
    client_auth: str = "client_secret_basic",
    **over: Any,
) -> ConnectionConfig:
    """Register an authorization-code app on the simulator and write its connection config.

    ``client_auth``: client_secret_basic / client_secret_post (a secret), private_key_jwt (a key published
    on the bridge's JWKS URL) or none (a public app: PKCE only).
    """
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    monkeypatch.setenv("SIM_CLIENT_SECRET", SECRET)
    registration: dict[str, Any] = {
        "client_id": client_id,
        "redirect_uris": [register_redirect or redirect],
        "scopes": USER_SCOPES,
    }
    auth: dict[str, Any] = {
        "method": "authorization_code",
        "client_id": client_id,
        "client_auth": client_auth,
        "redirect_uri": redirect,
        "scopes": USER_SCOPES,
    }
    if client_auth.startswith("client_secret"):
        registration.update(auth_methods=["client_secret_basic", "client_secret_post"], client_secret=SECRET)
        auth["client_secret"] = {"env": "SIM_CLIENT_SECRET"}
    elif client_auth == "private_key_jwt":
        key = side.new_key(client_id)
        side.publish(client_id, [key])
        registration.update(auth_methods=["private_key_jwt"], jwks_url=side.jwks_url)
        auth["keys"] = [{"kid": key.kid, "private_key": {"file": key.path.name}}]
    else:
        registration.update(auth_methods=["none"])
    sim.register_client(**registration, **over)
    return side.write_config(
        client_id,
        {
            "fhir_base_url": sim.fhir_base,
            "auth": auth,
            "resources": {
                "Patient": {"triggers": ["created", "updated"]},
                "Observation": {"triggers": ["created"]},
            },
            "retry": {"base_delay_s": 0.05, "max_delay_s": 0.5},
        },
    )


def bridge_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BridgeSettings:
    monkeypatch.setenv("EPIC_BRIDGE_CREDENTIALS_KEY", new_key())
    return BridgeSettings(config_dir=tmp_path / "connect-configs", state_dir=tmp_path / "state")


def store_of(settings: BridgeSettings) -> CredentialStore:
    return CredentialStore.open(settings.state_dir, key=None)


async def connect(cfg: ConnectionConfig, settings: BridgeSettings, **user: Any) -> str:
    assert isinstance(cfg.auth, AuthorizationCodeAuth)
    show, errors = user_in_background(**user)
    try:
        return await _connect(cfg, cfg.auth, settings, show, timeout_s=20)
    finally:
        assert not errors, errors
