"""Authorization-code flow with PKCE and state, received on a loopback redirect URI.

``epic-bridge connect`` prints the consent URL (and opens a browser when it can), waits for the
redirect on the loopback listener, checks ``state``, exchanges the code with the PKCE verifier and
stores the tokens (encrypted). The user's password is entered only on Epic's own page.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from bridge.auth.errors import ConsentError
from bridge.auth.sources import ClientAuthenticator
from bridge.auth.tokens import Token, TokenEndpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class AuthorizationRequest:
    url: str
    redirect_uri: str
    state: str
    code_verifier: str

    def __repr__(self) -> str:
        return f"AuthorizationRequest(redirect_uri={self.redirect_uri!r})"


def build_authorization_request(
    *, authorize_url: str, client_id: str, redirect_uri: str, scopes: list[str], aud: str
) -> AuthorizationRequest:
    state = generate_token(32)
    verifier = generate_token(64)  # 43..128 unreserved characters (RFC 7636)
    url = prepare_grant_uri(
        authorize_url,
        client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=" ".join(scopes),
        state=state,
        aud=aud,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
    )
    return AuthorizationRequest(url=str(url), redirect_uri=redirect_uri, state=state, code_verifier=verifier)


_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>epic-bridge</title></head>"
    "<body><p>{}</p></body></html>"
)


@dataclass
class _Inbox:
    path: str
    event: threading.Event = field(default_factory=threading.Event)
    params: dict[str, str] | None = None


def _handler_for(inbox: _Inbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != inbox.path or inbox.event.is_set():
                self.send_error(404)
                return
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            if "code" in params:
                text = "Signed in. epic-bridge has received the authorization; you can close this window."
            else:
                text = "The sign-in did not complete. Return to the terminal for details."
            body = _PAGE.format(text).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            inbox.params = params
            inbox.event.set()

        def log_message(self, format: str, *args: object) -> None:
            log.debug("loopback listener: %s", self.command)  # never log the query: it holds the code

    return Handler


class LoopbackReceiver:
    """Listens on the redirect URI's host and port for exactly one redirect."""

    def __init__(self, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        if parts.hostname is None or parts.port is None:
            raise ConsentError(f"redirect URI {redirect_uri} needs an explicit loopback host and port")
        self._host = parts.hostname
        self._port = parts.port
        self._inbox = _Inbox(path=parts.path or "/")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoopbackReceiver:
        try:
            self._server = ThreadingHTTPServer((self._host, self._port), _handler_for(self._inbox))
        except OSError as exc:
            raise ConsentError(
                f"cannot listen on {self._host}:{self._port} for the redirect: {exc.strerror} "
                "(is another `connect` running?)"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth-redirect", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def wait(self, timeout_s: float) -> dict[str, str]:
        got = await asyncio.to_thread(self._inbox.event.wait, timeout_s)
        if not got or self._inbox.params is None:
            raise ConsentError(f"no redirect arrived within {timeout_s:.0f}s; run connect again")
        return self._inbox.params


def check_redirect(params: dict[str, str], request: AuthorizationRequest) -> str:
    """The authorization code, after checking state and error."""
    if not hmac.compare_digest(params.get("state", ""), request.state):
        raise ConsentError(
            "the redirect's state does not match this sign-in (stale or forged redirect); run connect again"
        )
    if "error" in params:
        what = params["error"]
        hint = " (the user declined)" if what == "access_denied" else ""
        desc = params.get("error_description")
        raise ConsentError(f"authorization failed: {what}{hint}" + (f": {desc}" if desc else ""))
    code = params.get("code")
    if not code:
        raise ConsentError("the redirect carried no authorization code")
    return code


async def exchange_code(
    endpoint: TokenEndpoint, client: ClientAuthenticator, *, code: str, request: AuthorizationRequest
) -> Token:
    def form() -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.code_verifier,
            **client.form(),
        }

    # An authorization code is single use: a bare 400 retry would be answered invalid_grant anyway.
    return await endpoint.request(form, auth=client.http_auth(), grant="authorization_code")


async def run_consent_flow(
    *,
    request: AuthorizationRequest,
    endpoint: TokenEndpoint,
    client: ClientAuthenticator,
    show_url: Callable[[str], None],
    timeout_s: float = 300.0,
) -> Token:
    """Listen, show the URL, wait for the redirect, check it, exchange the code."""
    with LoopbackReceiver(request.redirect_uri) as receiver:
        show_url(request.url)
        params = await receiver.wait(timeout_s)
    code = check_redirect(params, request)
    return await exchange_code(endpoint, client, code=code, request=request)
