from __future__ import annotations

import asyncio
import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.auth.authcode import LoopbackReceiver, build_authorization_request, check_redirect
from bridge.auth.errors import ConsentError


def make_request(port: int = 8765) -> object:
    return build_authorization_request(
        authorize_url="https://epic.example.org/oauth2/authorize",
        client_id="cid",
        redirect_uri=f"http://127.0.0.1:{port}/callback",
        scopes=["user/Patient.read", "offline_access"],
        aud="https://epic.example.org/api/FHIR/R4/",
    )


def test_url_carries_pkce_state_and_aud() -> None:
    req = make_request()
    q = {k: v[0] for k, v in parse_qs(urlsplit(req.url).query).items()}  # type: ignore[attr-defined]
    assert q["response_type"] == "code" and q["client_id"] == "cid"
    assert q["redirect_uri"] == "http://127.0.0.1:8765/callback"
    assert q["scope"] == "user/Patient.read offline_access"
    assert q["aud"] == "https://epic.example.org/api/FHIR/R4/"
    assert q["state"] == req.state and len(req.state) >= 32  # type: ignore[attr-defined]
    verifier = req.code_verifier  # type: ignore[attr-defined]
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert q["code_challenge"] == expected and q["code_challenge_method"] == "S256"
    assert verifier not in req.url  # type: ignore[attr-defined]
    assert make_request().state != req.state  # type: ignore[attr-defined]


def test_check_redirect() -> None:
    req = make_request()
    assert check_redirect({"code": "abc", "state": req.state}, req) == "abc"  # type: ignore[arg-type, attr-defined]
    with pytest.raises(ConsentError, match="state does not match"):
        check_redirect({"code": "abc", "state": "forged"}, req)  # type: ignore[arg-type]
    with pytest.raises(ConsentError, match="declined"):
        check_redirect({"error": "access_denied", "state": req.state}, req)  # type: ignore[arg-type, attr-defined]
    with pytest.raises(ConsentError, match="no authorization code"):
        check_redirect({"state": req.state}, req)  # type: ignore[arg-type, attr-defined]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_loopback_receiver_gets_one_redirect() -> None:
    port = _free_port()
    with LoopbackReceiver(f"http://127.0.0.1:{port}/callback") as receiver:
        async with httpx.AsyncClient() as http:
            waiter = asyncio.create_task(receiver.wait(10))
            assert (await http.get(f"http://127.0.0.1:{port}/other")).status_code == 404
            page = await http.get(f"http://127.0.0.1:{port}/callback?code=c1&state=s1")
            assert page.status_code == 200 and "close this window" in page.text
            assert await waiter == {"code": "c1", "state": "s1"}
            assert (await http.get(f"http://127.0.0.1:{port}/callback?code=c2&state=s1")).status_code == 404


async def test_loopback_receiver_times_out() -> None:
    with LoopbackReceiver(f"http://127.0.0.1:{_free_port()}/cb") as receiver:
        with pytest.raises(ConsentError, match="no redirect"):
            await receiver.wait(0.1)
