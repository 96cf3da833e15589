"""The connection config: one JSON file per Epic environment (sandbox, production, another hospital)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from bridge.config.hints import HintsConfig
from bridge.config.secrets import SecretRef
from bridge.config.sink import SinkConfig
from bridge.config.source import SourceConfig

RESOURCE_TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
ResourceType = Literal["Patient", "Appointment", "Encounter", "Observation", "DocumentReference"]
Trigger = Literal["created", "updated"]
Action = Literal["create", "find"]
SigningAlg = Literal["RS256", "RS384", "RS512", "ES256", "ES384"]
ClientAuth = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: str, what: str, *, require_tls: bool = True) -> str:
    """The rule for every endpoint the bridge sends credentials or patient data to, configured or
    discovered: an absolute https URL (plain http only on loopback), without credentials in it."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL, got {value!r}")
    if require_tls and parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{what} must use https (plain http is only allowed on loopback), got {value!r}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials in the URL")
    return value


class SigningKeyRef(_Strict):
    """One private key used to sign client assertions. List two during a rotation."""

    kid: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="key id published in the JWK Set; default: the public key's RFC 7638 thumbprint",
    )
    private_key: SecretRef = Field(description='PEM private key: {"file": "..."} or {"env": "..."}')
    passphrase: SecretRef | None = Field(default=None, description="passphrase of an encrypted PEM")


class BackendServicesAuth(_Strict):
    """SMART backend services: client_credentials with a private_key_jwt assertion."""

    method: Literal["backend_services"]
    client_id: str = Field(min_length=1, description="the app's client id from its Epic registration")
    token_url: str | None = Field(
        default=None, description="exact token URL (the JWT aud); default: from smart-configuration"
    )
    alg: SigningAlg = Field(default="RS384", description="JWT signing algorithm; EC needs a JWKS URL on Epic")
    keys: list[SigningKeyRef] = Field(
        min_length=1,
        max_length=4,
        description="signing keys; the first signs unless signing_kid says otherwise",
    )
    signing_kid: str | None = Field(default=None, description="key to sign with; default: the first key")
    scopes: list[str] = Field(default_factory=list, description="scopes to request (optional on Epic)")
    assertion_lifetime_s: int = Field(
        default=240, ge=30, le=300, description="JWT exp - iat; Epic allows 5 min"
    )

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v, "token_url")

    @model_validator(mode="after")
    def _kids(self) -> BackendServicesAuth:
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(set(kids)) != len(kids):
            raise ValueError("each key needs a distinct kid")
        if self.signing_kid is not None and self.signing_kid not in kids:
            raise ValueError(
                f"signing_kid {self.signing_kid!r} is not one of the keys' kid "
                f"({', '.join(kids) or 'none set'})"
            )
        return self


class AuthorizationCodeAuth(_Strict):
    """A user consents once (``epic-bridge connect``); the bridge keeps and uses the refresh token."""

    method: Literal["authorization_code"]
    client_id: str = Field(min_length=1, description="the app's client id from its Epic registration")
    client_auth: ClientAuth = Field(
        default="client_secret_basic", description="how the bridge authenticates at the token endpoint"
    )
    client_secret: SecretRef | None = Field(default=None, description="reference to the client secret")
    keys: list[SigningKeyRef] = Field(default_factory=list, description="for client_auth private_key_jwt")
    alg: SigningAlg = Field(default="RS384", description="JWT signing algorithm; EC needs a JWKS URL on Epic")
    redirect_uri: str = Field(
        description="loopback URI registered on the app, e.g. http://127.0.0.1:8765/callback"
    )
    scopes: list[str] = Field(min_length=1, description="scopes to ask consent for, e.g. user/Patient.read")
    authorize_url: str | None = Field(default=None, description="default: from smart-configuration")
    token_url: str | None = Field(default=None, description="default: from smart-configuration")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or not is_loopback_host(parts.hostname) or parts.port is None:
            raise ValueError(
                "redirect_uri must be a loopback http URI with an explicit port "
                f"(e.g. http://127.0.0.1:8765/callback), got {v!r}"
            )
        return v

    @field_validator("authorize_url", "token_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v, "endpoint URL")

    @model_validator(mode="after")
    def _client_auth(self) -> AuthorizationCodeAuth:
        if self.client_auth in ("client_secret_basic", "client_secret_post") and self.client_secret is None:
            raise ValueError(f'client_auth {self.client_auth} needs client_secret: {{"env": "VAR_NAME"}}')
        if self.client_auth == "private_key_jwt" and not self.keys:
            raise ValueError("client_auth private_key_jwt needs at least one entry in keys")
        return self


AuthConfig = Annotated[BackendServicesAuth | AuthorizationCodeAuth, Field(discriminator="method")]


class ResourceConfig(_Strict):
    """Triggers and actions of one FHIR resource type."""

    enabled: bool = Field(default=True, description="false: neither polled nor served")
    triggers: list[Trigger] = Field(
        default_factory=lambda: list[Trigger](["created", "updated"]), description="events to publish"
    )
    actions: list[Action] = Field(default_factory=list, description="commands to serve (ensure needs both)")
    categories: list[str] = Field(
        default_factory=list, description="Observation/DocumentReference categories to scan (Epic needs one)"
    )
    poll_interval_s: float | None = Field(default=None, ge=1, description="overrides the connection's")

    def needs(self) -> set[Literal["read", "search", "create"]]:
        """Which FHIR interactions the enabled triggers and actions need."""
        out: set[Literal["read", "search", "create"]] = set()
        if not self.enabled:
            return out
        if self.triggers:
            out |= {"search", "read"}
        if "find" in self.actions:
            out.add("search")
        if "create" in self.actions:
            out.add("create")
        return out


class StaticRoster(_Strict):
    """A fixed list of patients (ids and/or MRNs)."""

    source: Literal["static"]
    patient_ids: list[str] = Field(default_factory=list, description="FHIR ids of the patients to scan")
    mrns: list[str] = Field(default_factory=list, description="MRNs, resolved to ids by identifier search")
    mrn_system: str | None = Field(default=None, description="identifier system of the MRNs")
    mrn_retry_s: float = Field(
        default=300.0,
        ge=0,
        description="seconds until an MRN that matched no patient (or several) is looked up again",
    )

    @model_validator(mode="after")
    def _nonempty(self) -> StaticRoster:
        if not self.patient_ids and not self.mrns:
            raise ValueError("a static roster needs patient_ids or mrns")
        if self.mrns and not self.mrn_system:
            raise ValueError("mrns need mrn_system (e.g. urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14)")
        return self


class GroupRoster(_Strict):
    """The members of a FHIR Group, read at the start of every cycle."""

    source: Literal["group"]
    group_id: str = Field(min_length=1, description="FHIR id of a Group whose members are the roster")


class SeenPatientsRoster(_Strict):
    """The patients the Patient trigger has already published (needs Patient enabled)."""

    source: Literal["seen-patients"]


RosterConfig = Annotated[StaticRoster | GroupRoster | SeenPatientsRoster, Field(discriminator="source")]


class RateLimitConfig(_Strict):
    """The connection's request budget: requests to Epic per second (and per day), shared by everything
    that talks to Epic for the connection; the sink's commands go first, then scans, then bulk work."""

    requests_per_second: float = Field(
        default=10.0, gt=0, le=1000, description="steady rate shared by everything on this connection"
    )
    burst: int = Field(default=10, ge=1, le=1000, description="requests allowed at once above the rate")
    min_requests_per_second: float = Field(default=0.5, gt=0, description="floor when slowed down by 429s")
    recovery_s: float = Field(default=60.0, gt=0, description="time to climb back to the full rate")
    requests_per_day: int | None = Field(
        default=None,
        ge=1,
        description="cap per calendar day (UTC); scans are spread over the day, and once it is spent only "
        "the sink's commands and `epic-bridge check` still go (None: no daily cap)",
    )
    tools_share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="share of the rate (and day cap) kept for standalone tools (`check`, `backfill`) run "
        "beside the bridge: the bridge uses the rest, a tool this share, so together they stay within it",
    )


class TimeoutConfig(_Strict):
    """HTTP timeouts of the connection's client."""

    connect_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect")
    read_s: float = Field(default=30.0, gt=0, description="waiting for response bytes")
    write_s: float = Field(default=30.0, gt=0, description="sending the request")
    pool_s: float = Field(default=10.0, gt=0, description="waiting for a free pooled connection")


class RetryConfig(_Strict):
    """Retries of retriable requests (408/429/500/502/503/504, transport errors)."""

    max_attempts: int = Field(
        default=5, ge=1, le=20, description="tries of a retriable request, the first included"
    )
    base_delay_s: float = Field(default=0.5, gt=0, description="full-jitter backoff base")
    max_delay_s: float = Field(default=30.0, gt=0, description="backoff cap")
    max_retry_after_s: float = Field(default=300.0, gt=0, description="give up if asked to wait longer")
    token_bare_400_retries: int = Field(
        default=3, ge=0, le=10, description="retries of the token endpoint's spurious bare HTTP 400"
    )


class ConnectionConfig(_Strict):
    """One Epic environment (sandbox, production, another hospital)."""

    name: str = Field(pattern=NAME_PATTERN, description="lowercase; used in topic names")
    description: str | None = Field(default=None, description="free text for operators")
    fhir_base_url: str = Field(description="FHIR R4 base, e.g. https://host/instance/api/FHIR/R4/")
    server_profile: Literal["epic", "generic", "auto"] = Field(
        default="auto", description="epic or generic FHIR behaviour; auto reads the CapabilityStatement"
    )
    auth: AuthConfig = Field(description="how the bridge gets access tokens (method decides the shape)")
    resources: dict[ResourceType, ResourceConfig] = Field(description="per FHIR type: triggers and actions")
    poll_interval_s: float = Field(default=60.0, ge=1, description="pause between two polls of a resource")
    roster: RosterConfig = Field(
        default_factory=lambda: SeenPatientsRoster(source="seen-patients"),
        description="which patients per-patient scans cover (Epic anchors every clinical search to one)",
    )
    initial_sync: Literal["from-now", "snapshot"] = Field(
        default="from-now",
        description="first run: from-now records what exists silently; snapshot publishes it as CREATED",
    )
    topic_prefix: str = Field(
        default="epic", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$", description="first part of topic names"
    )
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description="requests to Epic")
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig, description="HTTP timeouts")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="retries of retriable requests")
    token_refresh_margin_s: float = Field(default=60.0, ge=0, description="refresh this long before expiry")
    sink: SinkConfig = Field(default_factory=SinkConfig, description="commands: concurrency, deadlines, caps")
    source: SourceConfig = Field(default_factory=SourceConfig, description="source-side tuning")
    hints: HintsConfig = Field(
        default_factory=HintsConfig, description="change hints: the hints topic and the HL7v2 listener"
    )

    _source_dir: Path | None = PrivateAttr(default=None)

    @field_validator("fhir_base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        check_url(v, "fhir_base_url")
        if urlsplit(v).query or urlsplit(v).fragment:
            raise ValueError("fhir_base_url must not have a query or fragment")
        return v if v.endswith("/") else v + "/"

    @model_validator(mode="after")
    def _resources(self) -> ConnectionConfig:
        if not any(r.enabled for r in self.resources.values()):
            raise ValueError("enable at least one resource under resources")
        return self

    @property
    def source_dir(self) -> Path | None:
        """Folder of the file this config came from; relative secret file paths start there."""
        return self._source_dir

    def with_source_dir(self, folder: Path | None) -> ConnectionConfig:
        self._source_dir = folder
        return self

    def enabled_resources(self) -> dict[str, ResourceConfig]:
        return {k: v for k, v in self.resources.items() if v.enabled}

    @property
    def origin(self) -> str:
        p = urlsplit(self.fhir_base_url)
        return f"{p.scheme}://{p.netloc}"
