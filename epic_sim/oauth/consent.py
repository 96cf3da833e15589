"""`GET/POST .../oauth2/authorize`: the consent page a test can fill in without a browser.

GET renders one `<form method="post">` whose hidden inputs carry every request parameter, with two submit
buttons `decision=allow` / `decision=deny` (and a `patient` text input when patient context is asked for).
POST re-validates everything (hidden fields are never trusted) and answers 302 to the redirect URI with
`code` and `state`, or `error=access_denied`. A bad client_id or redirect URI gives a 400 HTML page and
never redirects (RFC 6749 4.1.2.1).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .clients import ClientRegistration, ClientRegistry
from .codes import PKCE_METHODS, CodeStore, valid_challenge
from .forms import FormError, read_form
from .refusals import RefusalLog
from .scopes import PASS_THROUGH_USER_SCOPES, narrow, registered_in_contexts, split_scope_param

_USER_CONTEXTS = frozenset({"user", "patient"})
_POST_ONLY_FIELDS = frozenset({"decision", "patient"})


class _PageError(Exception):
    """Cannot trust the redirect URI: answer an HTML error page, never redirect."""


class _RedirectError(Exception):
    """A request error reported back to the (already validated) redirect URI."""

    def __init__(self, error: str, reason: str, redirect_uri: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.redirect_uri = redirect_uri


@dataclass(frozen=True)
class _Validated:
    client: ClientRegistration
    redirect_uri: str  # where to send the browser
    redirect_uri_sent: str | None  # as sent (None if omitted), what the token request must repeat
    scopes: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None
    wants_patient: bool


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


class ConsentEndpoint:
    def __init__(
        self,
        *,
        registry: ClientRegistry,
        codes: CodeStore,
        refusals: RefusalLog,
        form_action: str,
        audiences: Collection[str] = (),
    ) -> None:
        self._registry = registry
        self._codes = codes
        self._refusals = refusals
        self._action = form_action
        self._audiences = frozenset(a.rstrip("/") for a in audiences)

    async def handle(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                params = await read_form(request)
            except FormError as exc:
                return self._error_page(request, None, str(exc))
        else:
            params = {}
            for name, value in request.query_params.multi_items():
                if name in params:
                    return self._error_page(request, None, f"parameter {name!r} sent more than once")
                params[name] = value
        client_id = params.get("client_id")
        if client_id:
            request.state.client_id = client_id
        try:
            checked = self._validate(params)
        except _PageError as exc:
            return self._error_page(request, client_id, str(exc))
        except _RedirectError as exc:
            return self._redirect_error(request, params, exc)
        if request.method == "POST":
            return self._decide(request, params, checked)
        return self._consent_page(params, checked)

    # -- validation -------------------------------------------------------------------------------------

    def _validate(self, params: Mapping[str, str]) -> _Validated:
        client_id = params.get("client_id")
        if not client_id:
            raise _PageError("client_id missing")
        client = self._registry.get(client_id)
        if client is None:
            raise _PageError(f"unknown client {client_id!r}")
        sent = params.get("redirect_uri") or None
        if sent is None:
            if len(client.redirect_uris) != 1:
                raise _PageError("redirect_uri missing and the client has not exactly one registered")
            redirect_uri = client.redirect_uris[0]
        elif sent not in client.redirect_uris:
            raise _PageError("redirect_uri is not registered for this client")
        else:
            redirect_uri = sent
        # From here on the redirect URI is trusted: errors go back to the client.

        def fail(error: str, reason: str) -> _RedirectError:
            return _RedirectError(error, reason, redirect_uri)

        response_type = params.get("response_type")
        if response_type != "code":
            raise fail("unsupported_response_type", f"response_type {response_type!r} is not code")
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or None
        if challenge is None and method is not None:
            raise fail("invalid_request", "code_challenge_method without code_challenge")
        if challenge is not None:
            method = method or "plain"  # RFC 7636 4.3
            if method not in PKCE_METHODS:
                raise fail("invalid_request", f"code_challenge_method {method!r} not supported")
            if not valid_challenge(challenge, method):
                raise fail("invalid_request", "malformed code_challenge")
        if self._audiences:
            aud = params.get("aud")
            if not aud:
                raise fail("invalid_request", "aud missing (SMART: the FHIR base URL)")
            if aud.rstrip("/") not in self._audiences:
                raise fail("invalid_request", f"aud {aud!r} is not this server's FHIR base")
        requested = split_scope_param(params.get("scope"))
        if requested:
            scopes = narrow(
                requested, client.scopes, contexts=_USER_CONTEXTS, pass_through=PASS_THROUGH_USER_SCOPES
            )
        else:
            scopes = registered_in_contexts(client.scopes, _USER_CONTEXTS)
        if not scopes:
            raise fail("invalid_scope", "no requested scope is registered for this client")
        wants_patient = "launch/patient" in scopes or any(s.startswith("patient/") for s in scopes)
        return _Validated(client, redirect_uri, sent, tuple(scopes), challenge, method, wants_patient)

    # -- responses --------------------------------------------------------------------------------------

    def _error_page(self, request: Request, client_id: str | None, reason: str) -> HTMLResponse:
        self._refusals.add("authorize", client_id, "invalid_request", reason)
        request.state.oauth_error = "invalid_request"
        request.state.oauth_reason = reason
        return _page("Authorization error", f"<p>{html.escape(reason)}</p>", status=400)

    def _redirect_error(self, request: Request, params: Mapping[str, str], exc: _RedirectError) -> Response:
        client_id = params.get("client_id")
        self._refusals.add("authorize", client_id, exc.error, exc.reason)
        request.state.oauth_error = exc.error
        request.state.oauth_reason = exc.reason
        return self._redirect(exc.redirect_uri, {"error": exc.error}, params.get("state"))

    @staticmethod
    def _redirect(uri: str, params: dict[str, str], state: str | None) -> RedirectResponse:
        if state is not None:
            params = {**params, "state": state}
        return RedirectResponse(
            _with_query(uri, params), status_code=302, headers={"Cache-Control": "no-store"}
        )

    def _consent_page(self, params: Mapping[str, str], checked: _Validated) -> HTMLResponse:
        hidden = "\n".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k not in _POST_ONLY_FIELDS
        )
        patient = (
            '<p><label>Patient FHIR id <input type="text" name="patient" value=""></label></p>\n'
            if checked.wants_patient
            else ""
        )
        scopes = "".join(f"<li>{html.escape(s)}</li>" for s in checked.scopes)
        body = (
            f"<p>The application <b>{html.escape(checked.client.client_id)}</b> asks for:</p>\n"
            f"<ul>{scopes}</ul>\n"
            f'<form method="post" action="{html.escape(self._action)}">\n{hidden}\n{patient}'
            '<button type="submit" name="decision" value="allow">Allow</button>\n'
            '<button type="submit" name="decision" value="deny">Deny</button>\n'
            "</form>"
        )
        return _page("Authorize access", body)

    def _decide(self, request: Request, params: Mapping[str, str], checked: _Validated) -> Response:
        state = params.get("state")
        decision = params.get("decision")
        if decision != "allow":
            error = "access_denied" if decision == "deny" else "invalid_request"
            self._refusals.add("authorize", checked.client.client_id, error, f"decision {decision!r}")
            request.state.oauth_error = error
            return self._redirect(checked.redirect_uri, {"error": error}, state)
        code = self._codes.issue(
            client_id=checked.client.client_id,
            redirect_uri=checked.redirect_uri_sent,
            scopes=checked.scopes,
            code_challenge=checked.code_challenge,
            code_challenge_method=checked.code_challenge_method,
            patient=params.get("patient") or None,
        )
        return self._redirect(checked.redirect_uri, {"code": code}, state)
