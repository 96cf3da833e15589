"""Client id + secret with the authorization-code flow against the real simulator: consent (a test plays the
user), PKCE, state, the loopback redirect listener, the encrypted store, refresh on expiry and on 401."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from connection_support import (
    BridgeSide,
    authcode_connection,
    connect,
    store_of,
)

from bridge.auth.errors import ConsentError
from bridge.config.settings import BridgeSettings
from bridge.connection import Connection


@pytest.mark.parametrize("profile", ["epic", "generic"])
async def test_authorization_code_end_to_end(
    epic_sim_factory: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    profile: str,
) -> None:
    sim = epic_sim_factory(profile=profile, patients=3, seed=9)
    cfg = authcode_connection(sim, bridge_side, monkeypatch)
    scope = await connect(cfg, settings)
    assert "user/Patient.read" in scope
    stored = store_of(settings).load(cfg.name)
    assert stored is not None and stored.refresh_token is not None
    for f in (settings.state_dir / "credentials").iterdir():  # nothing in clear on disk
        blob = f.read_bytes()
        assert stored.refresh_token.get_secret_value().encode() not in blob
        assert stored.access_token is not None and stored.access_token.get_secret_value().encode() not in blob
    log = sim.requests()
    [exchange] = [r for r in log if r["path"].endswith("/oauth2/token")]
    assert exchange["status"] == 200
    [authorize] = [r for r in log if r["path"].endswith("/oauth2/authorize") and r["method"] == "GET"]
    assert authorize["query"]["code_challenge_method"] == ["S256"] and authorize["query"]["state"]

    patient_id = sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg, store=store_of(settings)) as conn:
        # the stored access token is used first: no token request
        assert (await conn.fhir.read("Patient", patient_id))["id"] == patient_id
        assert len([r for r in sim.requests() if r["path"].endswith("/oauth2/token")]) == 1
        # the server drops every token: 401 -> refresh once with the refresh token -> retry once
        before = sim.requests()[-1]["seq"]
        sim.expire_tokens()
        assert (await conn.fhir.read("Patient", patient_id))["id"] == patient_id
        after = sim.requests(before)
        assert [r["status"] for r in after if "/Patient/" in r["path"]] == [401, 200]
        assert [r["status"] for r in after if r["path"].endswith("/oauth2/token")] == [200]
    again = store_of(settings).load(cfg.name)
    assert again is not None and again.access_token is not None
    assert again.access_token.get_secret_value() != stored.access_token.get_secret_value()
    assert again.refresh_token is not None  # kept across the refresh


async def test_refresh_before_expiry_under_lock(
    epic_sim: Any, bridge_side: BridgeSide, monkeypatch: pytest.MonkeyPatch, settings: BridgeSettings
) -> None:
    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch, token_lifetime_s=3)
    await connect(cfg, settings)
    cfg = cfg.model_copy(update={"token_refresh_margin_s": 1.5}).with_source_dir(cfg.source_dir)
    patient_id = epic_sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg, store=store_of(settings)) as conn:
        await conn.fhir.read("Patient", patient_id)
        await asyncio.sleep(1.7)
        before = epic_sim.requests()[-1]["seq"]
        await asyncio.gather(*(conn.fhir.read("Patient", patient_id) for _ in range(5)))
    after = epic_sim.requests(before)
    assert [r["status"] for r in after if r["path"].endswith("/oauth2/token")] == [200]  # one refresh for all
    assert all(r["status"] == 200 for r in after if "/Patient/" in r["path"])


async def test_state_mismatch_is_refused(
    epic_sim: Any, bridge_side: BridgeSide, monkeypatch: pytest.MonkeyPatch, settings: BridgeSettings
) -> None:
    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch)
    with pytest.raises(ConsentError, match="state does not match"):
        await connect(cfg, settings, state_override="forged-state")
    assert not [r for r in epic_sim.requests() if r["path"].endswith("/oauth2/token")]  # code never exchanged
    assert store_of(settings).load(cfg.name) is None


async def test_user_declines(
    epic_sim: Any, bridge_side: BridgeSide, monkeypatch: pytest.MonkeyPatch, settings: BridgeSettings
) -> None:
    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch)
    with pytest.raises(ConsentError, match="access_denied"):
        await connect(cfg, settings, decision="deny")


async def test_not_connected_says_what_to_run(
    epic_sim: Any, bridge_side: BridgeSide, monkeypatch: pytest.MonkeyPatch, settings: BridgeSettings
) -> None:
    from bridge.auth.errors import NotConnectedError

    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch)
    async with await Connection.open(cfg, store=store_of(settings)) as conn:
        with pytest.raises(NotConnectedError, match=f"epic-bridge connect {cfg.name}"):
            await conn.tokens.get()


def test_cli_connect_opens_the_browser_and_stores_tokens(
    epic_sim: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`epic-bridge connect` end to end; the "browser" it opens is a test user who consents."""
    import webbrowser

    from connection_support import play_user

    from bridge.cli import main

    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch, client_id="cli")
    opened: list[str] = []
    failures: list[BaseException] = []

    def browser(url: str) -> bool:
        opened.append(url)

        def run() -> None:
            try:
                play_user(url)
            except BaseException as exc:
                failures.append(exc)

        threading.Thread(target=run, daemon=True).start()
        return True

    monkeypatch.setattr(webbrowser, "open", browser)
    code = main(
        [
            "--config-dir",
            str(bridge_side.folder),
            "--state-dir",
            str(settings.state_dir),
            "connect",
            cfg.name,
            "--timeout",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and not failures
    assert opened and opened[0] in out  # printed as well as opened
    assert "Connected cli" in out and "user/Patient.read" in out
    stored = store_of(settings).load("cli")
    assert stored is not None and stored.refresh_token is not None
    assert stored.refresh_token.get_secret_value() not in out


@pytest.mark.parametrize("client_auth", ["client_secret_post", "private_key_jwt", "none"])
async def test_other_client_authentication_methods(
    epic_sim: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    client_auth: str,
) -> None:
    """Secret in the form, a signed JWT instead of a secret, a public app (PKCE only): sign-in, refresh."""
    cfg = authcode_connection(
        epic_sim,
        bridge_side,
        monkeypatch,
        client_id=f"ac-{client_auth}".replace("_", "-"),
        client_auth=client_auth,
    )
    await connect(cfg, settings)
    patient_id = epic_sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg, store=store_of(settings)) as conn:
        epic_sim.expire_tokens()
        assert (await conn.fhir.read("Patient", patient_id))["id"] == patient_id
    tokens = [r for r in epic_sim.requests() if r["path"].endswith("/oauth2/token")]
    assert [r["status"] for r in tokens] == [200, 200]  # the code exchange, then one refresh after the 401
