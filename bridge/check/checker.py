"""``epic-bridge check <connection>``: can this connection do everything its config enables?

Obtains a token, reads smart-configuration and the CapabilityStatement, then for each enabled
resource probes the read/search/create permissions its triggers and actions need, without
writing anything (the create probe sends a deliberately invalid body). Each failure comes with
the likely fix in plain words (``bridge.check.fixes``).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable

import httpx

from bridge.auth.authcode import build_authorization_request
from bridge.auth.discovery import SmartConfiguration, smart_configuration_url
from bridge.auth.errors import (
    AuthError,
    BareBadRequestError,
    DiscoveryError,
    InvalidClientError,
    InvalidGrantError,
    InvalidScopeError,
    KeyMaterialError,
    NotConnectedError,
    TokenEndpointError,
    TokenEndpointUnavailable,
    UnsafeEndpointError,
)
from bridge.auth.keys import KeySet
from bridge.auth.manager import BearerAuth, TokenManager
from bridge.auth.tokens import Token, TokenEndpoint
from bridge.check.fixes import (
    fix_bad_key,
    fix_clock,
    fix_missing_scope,
    fix_not_supported,
    fix_redirect,
    fix_unreachable,
    fix_wrong_token_url,
)
from bridge.check.report import CheckReport, CheckRow, Status
from bridge.config.models import AuthorizationCodeAuth, BackendServicesAuth, ConnectionConfig, GroupRoster
from bridge.config.secrets import SecretResolutionError
from bridge.connection import http_client, key_set, request_budget, token_source
from bridge.credentials import CredentialStore, CredentialStoreError
from bridge.fhir.budget import Priority
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.client import FHIRClient
from bridge.fhir.errors import (
    FHIRError,
    FHIRForbidden,
    FHIRHTTPError,
    FHIRNotFound,
    FHIRTransportError,
    FHIRUnauthorized,
)
from bridge.retry import RetryPolicy

log = logging.getLogger(__name__)

CLOCK_SKEW_LIMIT_S = 60.0
PROBE_ID = "epic-bridge-check-probe"


def _needed_by(cfg: ConnectionConfig, resource: str, capability: str) -> str:
    rc = cfg.resources[resource]  # type: ignore[index]
    who: list[str] = []
    if capability in ("read", "search"):
        who += [f"trigger {t}" for t in rc.triggers]
    if capability == "search" and "find" in rc.actions:
        who.append("action find")
    if capability == "create" and "create" in rc.actions:
        who.append("action create")
    return ", ".join(who)


def _search_probe_params(resource: str, cfg: ConnectionConfig, caps: Capabilities) -> list[tuple[str, str]]:
    wanted: list[tuple[str, str]]
    if resource == "Patient":
        wanted = [("_id", PROBE_ID)]
    else:
        wanted = [("patient", PROBE_ID)]
        cats = cfg.resources[resource].categories  # type: ignore[index]
        if resource == "Observation":
            wanted.append(("category", cats[0] if cats else "laboratory"))
        elif cats:
            wanted.append(("category", cats[0]))
    return [(k, v) for k, v in wanted if caps.supports_search_param(resource, k)]


class Checker:
    def __init__(
        self,
        cfg: ConnectionConfig,
        *,
        store: CredentialStore | None,
        transport: httpx.AsyncBaseTransport | None = None,
        jwks_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.transport = transport
        self.jwks_url = jwks_url
        self.clock = clock
        self.report = CheckReport(cfg.name)

    def step(self, subject: str, status: Status, detail: str = "", fix: str | None = None) -> None:
        self.report.steps.append(CheckRow(subject, "", status, detail, fix))

    def skip_resources(self, status: Status, detail: str, fix: str | None = None) -> None:
        for resource, rc in self.cfg.enabled_resources().items():
            for cap in ("read", "search", "create"):
                if cap not in rc.needs():
                    continue
                self.report.resources.append(
                    CheckRow(resource, cap, status, detail, fix, _needed_by(self.cfg, resource, cap))
                )

    async def run(self) -> CheckReport:
        async with http_client(self.cfg, self.transport) as http:
            await self._run(http)
        return self.report

    async def _run(self, http: httpx.AsyncClient) -> None:
        cfg = self.cfg
        # 1. the server and its SMART configuration
        smart: SmartConfiguration | None = None
        url = smart_configuration_url(cfg.fhir_base_url)
        try:
            started = self.clock()
            response = await http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            self.step("server", "unreachable", f"{type(exc).__name__}", fix_unreachable(cfg.fhir_base_url))
            self.skip_resources("unreachable", "server not reachable")
            return
        self._clock_skew(response, started)
        try:
            if response.status_code != 200:
                raise DiscoveryError(f"HTTP {response.status_code} from {url}")
            doc = response.json()
            if not isinstance(doc, dict):
                raise DiscoveryError(f"{url} did not answer a JSON object")
            smart = SmartConfiguration.from_json(doc, url)
            self.step("smart-configuration", "ok", f"token endpoint {smart.token_endpoint}")
        except UnsafeEndpointError as exc:
            self.step("smart-configuration", "failed", exc.problem, exc.fix)
            if cfg.auth.token_url is None:  # nothing else to get a token from
                self.skip_resources("skipped", "no token endpoint the bridge may use")
                return
        except (DiscoveryError, ValueError) as exc:
            if cfg.auth.token_url is not None:  # not needed: the endpoints are configured
                self.step("smart-configuration", "skipped", f"{exc}; using the configured endpoints")
            else:
                self.step(
                    "smart-configuration",
                    "failed",
                    str(exc),
                    "wrong FHIR base URL or wrong environment: the server has no SMART configuration "
                    "there; copy the R4 base URL from the Epic environment's endpoint list (or set "
                    "auth.token_url if this server really has none)",
                )

        # 2. token URL and keys
        token_url = cfg.auth.token_url or (smart.token_endpoint if smart else None)
        if token_url is None:
            self.step("token", "failed", "no token URL", "set auth.token_url (the server advertises none)")
            self.skip_resources("skipped", "no token")
            return
        wrong_token_url = bool(smart and cfg.auth.token_url and cfg.auth.token_url != smart.token_endpoint)
        if wrong_token_url and smart is not None:
            self.step(
                "token URL",
                "failed",
                f"configured {token_url}",
                fix_wrong_token_url(token_url, smart.token_endpoint),
            )
        try:
            keys = key_set(cfg)
        except (KeyMaterialError, SecretResolutionError) as exc:
            self.step(
                "keys",
                "failed",
                str(exc),
                "fix the private key reference, file permissions or passphrase; "
                "`epic-bridge keys generate` makes a new pair",
            )
            self.skip_resources("skipped", "no token")
            return
        if isinstance(cfg.auth, AuthorizationCodeAuth):
            await self._probe_authorize(http, cfg.auth, smart)

        # 3. a token
        endpoint = TokenEndpoint(
            http,
            token_url,
            policy=RetryPolicy(max_attempts=2, base_delay_s=0.2),
            bare_400_retries=cfg.retry.token_bare_400_retries,
        )
        try:
            source = token_source(cfg, endpoint, keys, self.store)
        except (SecretResolutionError, ValueError) as exc:
            self.step("token", "failed", str(exc), "fix the client secret reference (env var or file)")
            self.skip_resources("skipped", "no token")
            return
        manager = TokenManager(source, margin_s=cfg.token_refresh_margin_s, name=cfg.name)
        token = await self._token(manager, keys, token_url, wrong_token_url)
        if token is None:
            self.skip_resources("skipped", "no token")
            return

        # 4. the CapabilityStatement and each enabled resource
        fhir = FHIRClient(
            base_url=cfg.fhir_base_url,
            http=http,
            auth=BearerAuth(manager, cfg.fhir_base_url),
            client_id=cfg.auth.client_id,
            budget=request_budget(cfg, tool=True),  # the tools' share, beside a running bridge
            priority=Priority.INTERACTIVE,
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.2),
        )
        try:
            caps = await fhir.capabilities()
        except FHIRTransportError as exc:
            self.step("CapabilityStatement", "unreachable", str(exc), fix_unreachable(cfg.fhir_base_url))
            self.skip_resources("unreachable", "server not reachable")
            return
        except FHIRError as exc:
            self.step(
                "CapabilityStatement",
                "failed",
                str(exc),
                "the server did not answer a CapabilityStatement at metadata: check fhir_base_url",
            )
            self.skip_resources("skipped", "no CapabilityStatement")
            return
        self.report.profile = caps.profile(cfg.server_profile)
        software = caps.software_name or "unknown software"
        detail = f"{software}, FHIR {caps.fhir_version}, profile {self.report.profile}"
        if cfg.server_profile != "auto" and cfg.server_profile != caps.profile("auto"):
            self.step("CapabilityStatement", "ok", detail + f" (config forces {cfg.server_profile})")
        else:
            self.step("CapabilityStatement", "ok", detail)
        for resource, rc in cfg.enabled_resources().items():
            for cap in ("read", "search", "create"):
                if cap in rc.needs():
                    self.report.resources.append(await self._probe(fhir, caps, resource, cap))
        if isinstance(cfg.roster, GroupRoster):
            self.report.resources.append(await self._probe_group(fhir, caps, cfg.roster.group_id))

    async def _probe_group(self, fhir: FHIRClient, caps: Capabilities, group_id: str) -> CheckRow:
        """The roster Group must be readable: the pollers list its members."""

        def row(status: Status, detail: str = "", fix: str | None = None) -> CheckRow:
            return CheckRow("Group", "read", status, detail, fix, "roster")

        if not caps.supports_read("Group"):
            return row(
                "not supported by server",
                "no Group read in the CapabilityStatement",
                "this server cannot list a Group's members: use a static or seen-patients roster",
            )
        try:
            await fhir.read("Group", group_id)
        except FHIRForbidden:
            return row("missing scope", "403", fix_missing_scope(self.cfg, "Group", "read"))
        except FHIRTransportError as exc:
            return row("unreachable", str(exc), fix_unreachable(self.cfg.fhir_base_url))
        except FHIRNotFound:
            return row(
                "failed",
                f"Group {group_id} not found",
                "roster.group_id names no Group on this server: copy the FHIR id of the Group "
                "(e.g. from the Epic registry/report that defines it) for this environment",
            )
        except FHIRError as exc:
            return row("failed", str(exc), "check roster.group_id")
        return row("ok", f"Group {group_id} readable")

    def _clock_skew(self, response: httpx.Response, started: float) -> None:
        date = response.headers.get("Date")
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        offset = server - (started + self.clock()) / 2
        if abs(offset) > CLOCK_SKEW_LIMIT_S:
            self.step("clock", "failed", f"{offset:+.0f}s against the server", fix_clock(offset))

    async def _probe_authorize(
        self, http: httpx.AsyncClient, auth: AuthorizationCodeAuth, smart: SmartConfiguration | None
    ) -> None:
        url = auth.authorize_url or (smart.authorization_endpoint if smart else None)
        if url is None:
            self.step("authorize", "failed", "no authorize URL", "set auth.authorize_url")
            return
        req = build_authorization_request(
            authorize_url=url,
            client_id=auth.client_id,
            redirect_uri=auth.redirect_uri,
            scopes=auth.scopes,
            aud=self.cfg.fhir_base_url,
        )
        try:
            response = await http.get(req.url)
        except httpx.TransportError as exc:
            self.step("authorize", "unreachable", type(exc).__name__, fix_unreachable(url))
            return
        if response.status_code == 400:
            self.step(
                "redirect URI",
                "failed",
                f"authorize endpoint refused {auth.redirect_uri}",
                fix_redirect(auth.redirect_uri, auth.client_id, response.text),
            )
        elif response.status_code in (302, 303) and "error=" in response.headers.get("Location", ""):
            loc = httpx.URL(response.headers["Location"])
            self.step(
                "authorize",
                "failed",
                f"error={loc.params.get('error')}",
                "the authorize endpoint refused the request: check auth.scopes are registered on the app",
            )
        elif response.status_code >= 400:
            self.step(
                "authorize",
                "failed",
                f"HTTP {response.status_code}",
                "check auth.authorize_url and that it belongs to this environment",
            )
        else:
            self.step("redirect URI", "ok", f"{auth.redirect_uri} accepted by the authorize endpoint")

    async def _token(
        self, manager: TokenManager, keys: KeySet | None, token_url: str, wrong_token_url: bool
    ) -> Token | None:
        cfg = self.cfg
        try:
            token = await manager.get()
        except TokenEndpointUnavailable as exc:
            if exc.status is None:
                fix = fix_unreachable(token_url)
                if wrong_token_url:
                    fix = "wrong token URL (see above); " + fix
                self.step("token", "unreachable", str(exc), fix)
            else:
                self.step("token", "failed", str(exc), "the token endpoint is failing; try again later")
            return None
        except InvalidClientError as exc:
            offset = exc.server_time_offset_s
            if wrong_token_url:
                fix = "wrong token URL / JWT aud (see above)"
            elif offset is not None and abs(offset) > CLOCK_SKEW_LIMIT_S:
                fix = fix_clock(offset)
            elif isinstance(cfg.auth, BackendServicesAuth) or (keys is not None):
                fix = fix_bad_key(cfg, keys, self.jwks_url)
            else:
                fix = (
                    f"the client secret or client id is wrong for this environment: check the secret "
                    f"referenced by auth.client_secret and that {cfg.auth.client_id} is this environment's id"
                )
            self.step("token", "failed", "invalid_client", fix)
            return None
        except NotConnectedError as exc:
            self.step("token", "failed", "no stored refresh token", str(exc))
            return None
        except InvalidGrantError:
            self.step(
                "token",
                "failed",
                "invalid_grant",
                f"the stored refresh token is expired or revoked: run `epic-bridge connect {cfg.name}`",
            )
            return None
        except InvalidScopeError as exc:
            self.step(
                "token", "failed", str(exc), "request only scopes registered on the Epic app (auth.scopes)"
            )
            return None
        except BareBadRequestError:
            fix = (
                "wrong token URL (see above)"
                if wrong_token_url
                else (
                    "the token endpoint kept answering a bare 400: usually bad credentials "
                    "(unregistered key, wrong "
                    "client id for this environment), sometimes an Epic hiccup — run check again"
                )
            )
            self.step("token", "failed", "bare HTTP 400", fix)
            return None
        except TokenEndpointError as exc:
            fix = (
                "wrong token URL (see above)" if wrong_token_url else "see the error from the token endpoint"
            )
            if exc.status == 404:
                fix = "wrong token URL: the token endpoint does not exist there; remove auth.token_url"
            self.step("token", "failed", str(exc), fix)
            return None
        except (AuthError, CredentialStoreError, SecretResolutionError) as exc:
            self.step("token", "failed", str(exc), "fix the credentials setup named in the message")
            return None
        lifetime = token.expires_at - self.clock()
        self.report.granted_scope = token.scope
        self.step("token", "ok", f"valid {lifetime:.0f}s; scope: {token.scope or '(none reported)'}")
        return token

    async def _probe(self, fhir: FHIRClient, caps: Capabilities, resource: str, cap: str) -> CheckRow:
        cfg = self.cfg
        needed_by = _needed_by(cfg, resource, cap)

        def row(status: Status, detail: str = "", fix: str | None = None) -> CheckRow:
            return CheckRow(resource, cap, status, detail, fix, needed_by)

        if not caps.supports_interaction(resource, cap):
            return row(
                "not supported by server",
                "not in the CapabilityStatement",
                fix_not_supported(resource, cap, needed_by),
            )
        try:
            if cap == "read":
                await fhir.send("GET", f"{resource}/{PROBE_ID}")
            elif cap == "search":
                await fhir.send("GET", resource, params=_search_probe_params(resource, cfg, caps))
            else:
                # deliberately not a valid resource: the permission check happens first, nothing is stored
                await fhir.send(
                    "POST", resource, body={"resourceType": "OperationOutcome", "issue": []}, idempotent=False
                )
        except FHIRForbidden as exc:
            return row(
                "missing scope",
                f"403{f' (code {exc.code})' if exc.code else ''}",
                fix_missing_scope(cfg, resource, cap),
            )
        except FHIRUnauthorized:
            return row(
                "failed",
                "401 even after a token refresh",
                "the server rejects this app's tokens for FHIR calls: check the app is activated "
                "for this environment",
            )
        except FHIRTransportError as exc:
            return row("unreachable", str(exc), fix_unreachable(cfg.fhir_base_url))
        except FHIRHTTPError as exc:
            if exc.status == 404 and exc.outcome is None:
                return row("not supported by server", "HTML 404", fix_not_supported(resource, cap, needed_by))
            if exc.status == 405:
                return row("not supported by server", str(exc), fix_not_supported(resource, cap, needed_by))
            if exc.status >= 500:
                return row("failed", str(exc), "the server failed; try again later")
            # 400/404/422: the permission check passed and the probe was refused as intended
            return row("ok", f"authorized (probe answered {exc.status})")
        except FHIRError as exc:
            return row("failed", str(exc), "unexpected answer from the server")
        return row("ok", "authorized")


async def run_check(
    cfg: ConnectionConfig,
    *,
    store: CredentialStore | None,
    transport: httpx.AsyncBaseTransport | None = None,
    jwks_url: str | None = None,
) -> CheckReport:
    return await Checker(cfg, store=store, transport=transport, jwks_url=jwks_url).run()
