"""`epic-bridge check` against the real simulator: a good connection passes; each seeded misconfiguration is
reported with the right fix and a non-zero exit status."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from connection_support import (
    ALL_SCOPES,
    BridgeSide,
    authcode_connection,
    backend_connection,
    backend_raw,
    connect,
    register_backend,
)

from bridge.cli import main
from bridge.config.settings import BridgeSettings


def run_check(
    side: BridgeSide, name: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    code = main(["--config-dir", str(side.folder), *extra, "check", name, "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, report


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [*report["steps"], *report["resources"]]


def failing(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rows(report) if r["status"] not in ("ok", "skipped")]


@pytest.mark.parametrize("profile", ["epic", "generic"])
def test_good_connection_passes(
    epic_sim_factory: Any,
    bridge_side: BridgeSide,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    profile: str,
) -> None:
    sim = epic_sim_factory(profile=profile, patients=2, seed=1)
    resources = {
        "Patient": {"triggers": ["created", "updated"], "actions": ["create", "find"]},
        "Observation": {"triggers": ["created"], "actions": ["create"], "categories": ["vital-signs"]},
        "Encounter": {"triggers": ["created", "updated"]},
    }
    cfg = backend_connection(sim, bridge_side, "good", resources=resources)
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert failing(report) == [] and code == 0
    assert report["profile"] == profile
    caps = {(r["subject"], r["capability"]) for r in report["resources"] if r["status"] == "ok"}
    assert caps == {
        ("Patient", "read"),
        ("Patient", "search"),
        ("Patient", "create"),
        ("Observation", "read"),
        ("Observation", "search"),
        ("Observation", "create"),
        ("Encounter", "read"),
        ("Encounter", "search"),
    }
    assert not [
        r
        for r in sim.requests()
        if r["method"] == "POST" and "/api/FHIR/R4/" in r["path"] and r["status"] < 300
    ]  # the create probe wrote nothing
    # and the table for humans
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--config-dir", str(bridge_side.folder), "check", cfg.name]) == 0
    out = capsys.readouterr().out
    assert "resources" in out and "All enabled resources" in out


def test_missing_scope(epic_sim: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str]) -> None:
    scopes = [s for s in ALL_SCOPES if not s.startswith("system/Patient")] + ["system/Patient.rs"]
    cfg = backend_connection(epic_sim, bridge_side, "noscope", scopes=scopes)
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [bad] = failing(report)
    assert (bad["subject"], bad["capability"], bad["status"]) == ("Patient", "create", "missing scope")
    assert "register the Patient.Create (R4) API on the Epic app" in bad["fix"]


def test_not_supported_by_server(
    epic_sim: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = {"Encounter": {"triggers": ["created"], "actions": ["create"]}}
    cfg = backend_connection(epic_sim, bridge_side, "nocreate", resources=resources)
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [bad] = failing(report)
    assert (bad["subject"], bad["capability"], bad["status"]) == (
        "Encounter",
        "create",
        "not supported by server",
    )
    assert "disable action create for Encounter" in bad["fix"]


def test_bad_key(epic_sim: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str]) -> None:
    published = bridge_side.new_key("published")
    bridge_side.publish("badkey", [published])
    register_backend(epic_sim, bridge_side, "badkey")
    unregistered = bridge_side.new_key("unregistered")
    cfg = bridge_side.write_config("badkey", backend_raw(epic_sim, "badkey", [unregistered]))
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [bad] = failing(report)
    assert bad["subject"] == "token" and bad["detail"] == "invalid_client"
    assert "register the JWK Set URL" in bad["fix"] and unregistered.kid in bad["fix"]
    assert "wrong environment" in bad["fix"] or "another environment" in bad["fix"]
    assert all(r["status"] == "skipped" for r in report["resources"])


@pytest.mark.parametrize("wrong", ["host alias", "trailing slash"])
def test_wrong_token_url_and_aud(
    epic_sim: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str], wrong: str
) -> None:
    key = bridge_side.new_key("aud")
    bridge_side.publish("aud", [key])
    register_backend(epic_sim, bridge_side, "aud")
    token_url = (
        epic_sim.token_url.replace("127.0.0.1", "localhost")
        if wrong == "host alias"
        else epic_sim.token_url + "/"
    )
    raw = backend_raw(epic_sim, "aud", [key])
    raw["auth"]["token_url"] = token_url
    cfg = bridge_side.write_config("aud", raw)
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [row] = [r for r in report["steps"] if r["subject"] == "token URL"]
    assert row["status"] == "failed"
    assert "wrong token URL" in row["fix"] and epic_sim.token_url in row["fix"] and "aud" in row["fix"]
    token_row = next(r for r in report["steps"] if r["subject"] == "token")
    assert token_row["status"] != "ok" and "wrong token URL" in token_row["fix"]


def test_unreachable_host(bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nothing listens there
    key = bridge_side.new_key("gone")
    raw = backend_raw(
        type("S", (), {"fhir_base": f"http://127.0.0.1:{port}/interconnect-fhir-oauth/api/FHIR/R4/"})(),
        "gone",
        [key],
    )
    cfg = bridge_side.write_config("gone", raw)
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [server] = report["steps"]
    assert server["status"] == "unreachable" and "cannot reach 127.0.0.1" in server["fix"]
    assert report["resources"] and all(r["status"] == "unreachable" for r in report["resources"])


async def test_bad_redirect_uri(
    epic_sim: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    cfg = authcode_connection(epic_sim, bridge_side, monkeypatch, client_id="redir")
    await connect(cfg, settings)  # signed in with the registered redirect URI: tokens work
    raw = json.loads((bridge_side.folder / "redir.json").read_text())
    raw["auth"]["redirect_uri"] = "http://127.0.0.1:9/not-registered"
    (bridge_side.folder / "redir.json").write_text(json.dumps(raw))
    code = await asyncio.to_thread(
        main,
        [
            "--config-dir",
            str(bridge_side.folder),
            "--state-dir",
            str(settings.state_dir),
            "check",
            "redir",
            "--json",
        ],
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    [bad] = failing(report)
    assert bad["subject"] == "redirect URI" and "redirect URI mismatch" in bad["fix"]
    assert "http://127.0.0.1:9/not-registered" in bad["fix"]
    assert next(r for r in report["steps"] if r["subject"] == "token")["status"] == "ok"


async def test_authcode_not_connected_yet(
    epic_sim: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    authcode_connection(epic_sim, bridge_side, monkeypatch, client_id="fresh")
    code = await asyncio.to_thread(
        main,
        [
            "--config-dir",
            str(bridge_side.folder),
            "--state-dir",
            str(settings.state_dir),
            "check",
            "fresh",
            "--json",
        ],
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    token = next(r for r in report["steps"] if r["subject"] == "token")
    assert token["status"] == "failed" and "epic-bridge connect fresh" in token["fix"]
    assert next(r for r in report["steps"] if r["subject"] == "redirect URI")["status"] == "ok"


@pytest.mark.parametrize("case", ["ok", "unknown group", "no Group scope"])
def test_group_roster_is_checked(
    epic_sim: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    group_id = epic_sim.stats()["roster_group"] if case != "unknown group" else "eNoSuchGroup0"
    scopes = [s for s in ALL_SCOPES if not s.startswith("system/Group")] if case == "no Group scope" else None
    cfg = backend_connection(
        epic_sim,
        bridge_side,
        "roster",
        scopes=scopes,
        resources={"Encounter": {"triggers": ["created"]}},
        roster={"source": "group", "group_id": group_id},
    )
    code, report = run_check(bridge_side, cfg.name, capsys)
    [row] = [r for r in report["resources"] if r["subject"] == "Group"]
    assert row["needed_by"] == "roster"
    if case == "ok":
        assert code == 0 and row["status"] == "ok"
    elif case == "unknown group":
        assert code == 1 and row["status"] == "failed" and "roster.group_id" in row["fix"]
    else:
        assert code == 1 and row["status"] == "missing scope" and "Group.Read" in row["fix"]


@pytest.mark.parametrize("offset_s", [600, -600])
def test_clock_skew_named(
    epic_sim_factory: Any, bridge_side: BridgeSide, capsys: pytest.CaptureFixture[str], offset_s: int
) -> None:
    """A server clock 10 minutes off: our (correct) JWT is refused, and check says why."""
    sim = epic_sim_factory(patients=1, clock_offset_s=offset_s)
    cfg = backend_connection(sim, bridge_side, "skew")
    code, report = run_check(bridge_side, cfg.name, capsys)
    assert code == 1
    [clock] = [r for r in report["steps"] if r["subject"] == "clock"]
    assert clock["status"] == "failed" and "clock skew" in clock["fix"] and "NTP" in clock["fix"]
    assert ("behind" if offset_s > 0 else "ahead of") in clock["fix"]
    token = next(r for r in report["steps"] if r["subject"] == "token")
    assert token["detail"] == "invalid_client" and "clock skew" in token["fix"]
