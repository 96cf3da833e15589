"""A live connection: one pooled httpx client, one request budget, one token manager, one FHIR client."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bridge.auth.discovery import SmartConfiguration, discover
from bridge.auth.keys import KeySet
from bridge.auth.manager import BearerAuth, TokenManager
from bridge.auth.sources import BackendServicesSource, ClientAuthenticator, RefreshTokenSource, TokenSource
from bridge.auth.tokens import TokenEndpoint
from bridge.config.models import AuthorizationCodeAuth, BackendServicesAuth, ConnectionConfig
from bridge.config.secrets import resolve_secret
from bridge.credentials import CredentialStore
from bridge.fhir.budget import Observer, Priority, RequestBudget
from bridge.fhir.client import FHIRClient
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy
from bridge.web import WebServer, add_jwks_routes

log = logging.getLogger(__name__)

USER_AGENT = "epic-kafka-bridge/0.1"


def http_client(
    cfg: ConnectionConfig, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    t = cfg.timeouts
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s),
        # Every connection the pool may open is kept alive: with more than ten requests in flight, a
        # smaller keep-alive pool closed and reopened (TCP and TLS) a connection per request beyond it.
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        transport=transport,
    )


def retry_policy(cfg: ConnectionConfig) -> RetryPolicy:
    r = cfg.retry
    return RetryPolicy(
        max_attempts=r.max_attempts,
        base_delay_s=r.base_delay_s,
        max_delay_s=r.max_delay_s,
        max_retry_after_s=r.max_retry_after_s,
    )


def request_budget(
    cfg: ConnectionConfig, *, tool: bool = False, metrics: Metrics | None = None
) -> RequestBudget:
    """The connection's budget in this process. The bridge runs at ``rate x (1 - tools_share)`` and a
    standalone tool (``check``, ``backfill``) at ``rate x tools_share``, so a tool run beside a live
    bridge keeps the two within the configured rate (and day cap). A share of 0 keeps nothing back: a
    tool then runs at the full rate."""
    rl = cfg.rate_limit
    share = 1.0 if rl.tools_share == 0 else (rl.tools_share if tool else 1.0 - rl.tools_share)
    rate = rl.requests_per_second * share
    per_day = None if rl.requests_per_day is None else max(1, int(rl.requests_per_day * share))
    budget = RequestBudget(
        rate,
        max(1, min(rl.burst, math.ceil(rl.burst * share))),
        per_day=per_day,
        min_rate=min(rl.min_requests_per_second, rate),
        recovery_s=rl.recovery_s,
    )
    if metrics is not None:
        budget.observer = budget_recorder(metrics, cfg.name, budget)
    return budget


def budget_recorder(metrics: Metrics, connection: str, budget: RequestBudget) -> Observer:
    """Record each request the budget lets through, and the budget's levels after it."""

    def record(priority: Priority, waited: float, over_day: bool) -> None:
        metrics.budget_requests.labels(connection, priority.label).inc()
        if waited:
            metrics.budget_wait.labels(connection, priority.label).inc(waited)
        if over_day:
            metrics.budget_over_day.labels(connection).inc()
        metrics.rate_limit.labels(connection).set(budget.rate)
        for level in Priority:
            metrics.budget_available.labels(connection, level.label).set(budget.available_rate(level))
        remaining = budget.day_remaining
        if remaining is not None:
            metrics.budget_day_remaining.labels(connection).set(remaining)

    return record


def key_set(cfg: ConnectionConfig) -> KeySet | None:
    auth = cfg.auth
    if isinstance(auth, BackendServicesAuth):
        return KeySet.from_refs(auth.keys, auth.alg, cfg.source_dir, auth.signing_kid)
    if auth.keys:
        return KeySet.from_refs(auth.keys, auth.alg, cfg.source_dir)
    return None


def client_authenticator(
    auth: AuthorizationCodeAuth, token_url: str, keys: KeySet | None, base_dir: Path | None
) -> ClientAuthenticator:
    secret = resolve_secret(auth.client_secret, base_dir) if auth.client_secret else None
    return ClientAuthenticator(
        auth.client_auth, auth.client_id, secret=secret, keys=keys, token_url=token_url
    )


def token_source(
    cfg: ConnectionConfig, endpoint: TokenEndpoint, keys: KeySet | None, store: CredentialStore | None
) -> TokenSource:
    auth = cfg.auth
    if isinstance(auth, BackendServicesAuth):
        assert keys is not None
        return BackendServicesSource(
            endpoint, keys, auth.client_id, scopes=auth.scopes, assertion_lifetime_s=auth.assertion_lifetime_s
        )
    if store is None:
        raise ValueError("authorization-code connections need a credential store")
    client = client_authenticator(auth, endpoint.token_url, keys, cfg.source_dir)
    return RefreshTokenSource(endpoint, client, store, cfg.name)


class Connection:
    """Everything the source and sink sides need to talk to one Epic environment."""

    def __init__(
        self,
        cfg: ConnectionConfig,
        http: httpx.AsyncClient,
        *,
        smart: SmartConfiguration | None,
        token_url: str,
        keys: KeySet | None,
        tokens: TokenManager,
        fhir: FHIRClient,
        endpoint: TokenEndpoint,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = cfg
        self.http = http
        self.smart = smart
        self.token_url = token_url
        self.keys = keys
        self.tokens = tokens
        self.fhir = fhir
        self.token_endpoint = endpoint
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"Connection(name={self.config.name!r}, base={self.config.fhir_base_url!r})"

    @classmethod
    async def open(
        cls,
        cfg: ConnectionConfig,
        *,
        store: CredentialStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        tool: bool = False,
    ) -> Connection:
        """Open the connection. ``tool``: a standalone command beside the bridge (its share of the budget)."""
        http = http_client(cfg, transport)
        try:
            keys = key_set(cfg)
            smart: SmartConfiguration | None = None
            token_url = cfg.auth.token_url
            if token_url is None:
                smart = await discover(http, cfg.fhir_base_url)
                token_url = smart.token_endpoint
            endpoint = TokenEndpoint(
                http, token_url, policy=retry_policy(cfg), bare_400_retries=cfg.retry.token_bare_400_retries
            )
            manager = TokenManager(
                token_source(cfg, endpoint, keys, store),
                margin_s=cfg.token_refresh_margin_s,
                name=cfg.name,
                metrics=metrics,
            )
            fhir = FHIRClient(
                base_url=cfg.fhir_base_url,
                http=http,
                auth=BearerAuth(manager, cfg.fhir_base_url),
                client_id=cfg.auth.client_id,
                budget=request_budget(cfg, tool=tool, metrics=metrics),
                priority=Priority.SCHEDULED,
                retry=retry_policy(cfg),
                metrics=metrics,
                connection=cfg.name,
            )
        except BaseException:
            await http.aclose()
            raise
        return cls(
            cfg,
            http,
            smart=smart,
            token_url=token_url,
            keys=keys,
            tokens=manager,
            fhir=fhir,
            endpoint=endpoint,
            metrics=metrics,
        )

    def fhir_client(
        self, *, priority: Priority = Priority.SCHEDULED, retry: RetryPolicy | None = None
    ) -> FHIRClient:
        """Another FHIR client sharing this connection's pool, token manager and request budget.

        For callers that need another priority in the budget (the sink's commands go as interactive,
        backfills as bulk; ``fhir`` itself, used by scans and roster reads, is scheduled) or other
        retries (the sink owns its retries per command).
        """
        return FHIRClient(
            base_url=self.config.fhir_base_url,
            http=self.http,
            auth=BearerAuth(self.tokens, self.config.fhir_base_url),
            client_id=self.config.auth.client_id,
            budget=self.fhir.budget,
            priority=priority,
            retry=retry or retry_policy(self.config),
            metrics=self.metrics,
            connection=self.config.name,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def public_jwks(configs: dict[str, ConnectionConfig]) -> dict[str, Callable[[], dict[str, Any]]]:
    """JWK Set providers for ``bridge.web.add_jwks_routes``: one per connection that signs with keys.

    Keys are loaded (and validated) once, here; a rotation takes effect when the bridge restarts.
    """
    out: dict[str, Callable[[], dict[str, Any]]] = {}
    for name, cfg in configs.items():
        keys = key_set(cfg)
        if keys is not None:
            out[name] = _constant(keys.jwks())
    return out


def _constant(doc: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: doc


def bridge_web_server(configs: dict[str, ConnectionConfig], host: str, port: int) -> WebServer:
    """The bridge's HTTP server (not started) with the JWK Set routes of every signing connection.

    ``/.well-known/jwks.json`` serves all connections' public keys, ``/.well-known/jwks/<name>.json`` one
    connection's. Later layers add their routes (``/metrics``, ``/healthz``...) before ``start()``.
    """
    server = WebServer(host, port)
    add_jwks_routes(server, public_jwks(configs))
    return server
