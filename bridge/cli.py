"""``epic-bridge`` command line.

epic-bridge [--config-dir DIR] [--state-dir DIR] [--log-level LEVEL] COMMAND ...

check <connection> [--json]        can this connection do what its config enables?
connect <connection> [--no-browser] sign in once (authorization code + PKCE); stores the refresh token
keys generate [--connection NAME]  new signing key pair (private key file 0600, public JWK printed)
keys jwks [--connection NAME]      print the public JWK Set of the configured keys
keys serve [--port N]              serve /.well-known/jwks.json for Epic to fetch
credentials new-key | rotate       credential-store encryption key management
run [--connection NAME] [--only source|sink]   run the bridge until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridge.config.loader import ConfigError, load_connection, load_connections
from bridge.config.models import AuthorizationCodeAuth, BackendServicesAuth, ConnectionConfig
from bridge.config.settings import BridgeSettings
from bridge.logs import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _console() -> Any:
    from rich.console import Console

    return Console()


def _err(message: str) -> int:
    print(f"epic-bridge: {message}", file=sys.stderr)
    return EXIT_USAGE


def _settings(args: argparse.Namespace) -> BridgeSettings:
    overrides: dict[str, Any] = {}
    if args.config_dir is not None:
        overrides["config_dir"] = Path(args.config_dir)
    if args.state_dir is not None:
        overrides["state_dir"] = Path(args.state_dir)
    return BridgeSettings(**overrides)


def _store(settings: BridgeSettings) -> Any:
    from bridge.credentials import CredentialStore

    key = settings.credentials_key.get_secret_value() if settings.credentials_key else None
    return CredentialStore.open(settings.state_dir, key=key, key_file=settings.credentials_key_file)


def _jwks_url(settings: BridgeSettings) -> str | None:
    from bridge.web import JWKS_PATH

    return settings.public_url.rstrip("/") + JWKS_PATH if settings.public_url else None


# -- check -------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.check import render, run_check
    from bridge.credentials import CredentialStoreError

    cfg = load_connection(settings.config_dir, args.connection)
    store = None
    if isinstance(cfg.auth, AuthorizationCodeAuth):
        try:
            store = _store(settings)
        except CredentialStoreError as exc:
            return _err(str(exc))
    report = asyncio.run(run_check(cfg, store=store, jwks_url=_jwks_url(settings)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render(report, _console())
    return EXIT_OK if report.ok else EXIT_FAILED


# -- connect -----------------------------------------------------------------------------------------


async def _connect(
    cfg: ConnectionConfig,
    auth: AuthorizationCodeAuth,
    settings: BridgeSettings,
    show: Callable[[str], None],
    timeout_s: float,
) -> str:
    from bridge.auth.authcode import build_authorization_request, run_consent_flow
    from bridge.auth.discovery import discover
    from bridge.auth.sources import token_to_stored
    from bridge.auth.tokens import TokenEndpoint
    from bridge.connection import client_authenticator, http_client, key_set

    store = _store(settings)
    async with http_client(cfg) as http:
        authorize_url, token_url = auth.authorize_url, auth.token_url
        if authorize_url is None or token_url is None:
            smart = await discover(http, cfg.fhir_base_url)
            authorize_url = authorize_url or smart.authorization_endpoint
            token_url = token_url or smart.token_endpoint
        if authorize_url is None:
            raise ConfigError([f"{cfg.name}: auth.authorize_url: the server advertises none (fix: set it)"])
        request = build_authorization_request(
            authorize_url=authorize_url,
            client_id=auth.client_id,
            redirect_uri=auth.redirect_uri,
            scopes=auth.scopes,
            aud=cfg.fhir_base_url,
        )
        endpoint = TokenEndpoint(http, token_url, bare_400_retries=cfg.retry.token_bare_400_retries)
        client = client_authenticator(auth, token_url, key_set(cfg), cfg.source_dir)
        token = await run_consent_flow(
            request=request, endpoint=endpoint, client=client, show_url=show, timeout_s=timeout_s
        )
    if token.refresh_token is None:
        print(
            "warning: the server issued no refresh token; the bridge will need `connect` again when "
            "the access token expires",
            file=sys.stderr,
        )
    store.save(cfg.name, token_to_stored(token))
    return token.scope or ""


def cmd_connect(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.auth.errors import AuthError
    from bridge.credentials import CredentialStoreError

    cfg = load_connection(settings.config_dir, args.connection)
    if not isinstance(cfg.auth, AuthorizationCodeAuth):
        return _err(
            f"connection {cfg.name} uses {cfg.auth.method}; connect is for authorization_code "
            "connections (backend services need no sign-in: run `epic-bridge check`)"
        )

    def show(url: str) -> None:
        print("Open this URL in a browser and sign in with an Epic account allowed to use the app:\n")
        print(f"  {url}\n", flush=True)
        if not args.no_browser:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                pass
        print(f"Waiting for the redirect on {cfg.auth.redirect_uri} ...", flush=True)  # type: ignore[union-attr]

    try:
        scope = asyncio.run(_connect(cfg, cfg.auth, settings, show, args.timeout))
    except (AuthError, CredentialStoreError) as exc:
        print(f"epic-bridge: connect failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"Connected {cfg.name}. Granted scope: {scope or '(none reported)'}. "
        f"Tokens stored encrypted under {settings.state_dir / 'credentials'}."
    )
    return EXIT_OK


# -- keys --------------------------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.auth.keys import generate_key_pair, load_private_key
    from bridge.credentials import atomic_write

    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            return _err(f"environment variable {args.passphrase_env} is not set")
        passphrase = value.encode()
    kid, pem = generate_key_pair(args.alg, args.bits, passphrase)
    prefix = args.connection or "bridge"
    path = Path(args.out) if args.out else Path(args.out_dir) / f"{prefix}-{kid[:12]}.pem"
    if path.exists():
        return _err(f"{path} exists; refusing to overwrite a private key (choose another --out)")
    atomic_write(path, pem, mode=0o600)
    public = load_private_key(pem, kid=kid, alg=args.alg, passphrase=passphrase).public_jwk()
    ref: dict[str, Any] = {
        "kid": kid,
        "private_key": {"file": os.path.relpath(path.resolve(), settings.config_dir.resolve())},
    }
    if args.passphrase_env:
        ref["passphrase"] = {"env": args.passphrase_env}
    print(f"private key written to {path} (mode 0600; keep it out of version control)")
    print(f"kid: {kid}\n")
    print("public JWK:")
    print(json.dumps(public, indent=2))
    print(
        "\nadd to auth.keys of the connection config (put it FIRST to sign with it; keep the old key "
        "listed second until Epic has fetched the new JWK Set, then remove the old one):"
    )
    print(json.dumps(ref, indent=2))
    url = _jwks_url(settings)
    print(
        "\nregister this JWK Set URL on the Epic app: "
        f"{url or '<public URL of this bridge>/.well-known/jwks.json'}"
        " (run `epic-bridge keys serve` until the bridge itself runs)"
    )
    return EXIT_OK


def _jwks_of(cfg: ConnectionConfig) -> dict[str, Any]:
    from bridge.connection import key_set

    keys = key_set(cfg)
    return keys.jwks() if keys else {"keys": []}


def _key_connections(settings: BridgeSettings, only: str | None) -> dict[str, ConnectionConfig]:
    if only:
        return {only: load_connection(settings.config_dir, only)}
    return {
        n: c
        for n, c in load_connections(settings.config_dir).items()
        if isinstance(c.auth, BackendServicesAuth) or c.auth.keys
    }


def cmd_keys_jwks(args: argparse.Namespace, settings: BridgeSettings) -> int:
    keys: list[dict[str, Any]] = []
    for cfg in _key_connections(settings, args.connection).values():
        keys.extend(k for k in _jwks_of(cfg)["keys"] if k["kid"] not in {x["kid"] for x in keys})
    print(json.dumps({"keys": keys}, indent=2))
    return EXIT_OK


def cmd_keys_serve(args: argparse.Namespace, settings: BridgeSettings) -> int:
    import threading

    from bridge.connection import bridge_web_server
    from bridge.web import JWKS_PATH

    host = args.host or settings.http_host
    port = args.port if args.port is not None else settings.http_port
    server = bridge_web_server(_key_connections(settings, None), host, port)  # loads and validates the keys
    with server:
        print(f"serving {server.url}{JWKS_PATH}; Ctrl-C stops", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return EXIT_OK


# -- credentials -------------------------------------------------------------------------------------


def cmd_credentials_new_key(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.credentials import new_key

    print(new_key())
    return EXIT_OK


def cmd_credentials_rotate(args: argparse.Namespace, settings: BridgeSettings) -> int:
    n = _store(settings).rotate()
    print(f"re-encrypted {n} credential file(s) with the newest key; the older key(s) can now be removed")
    return EXIT_OK


# -- run -------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.connection import bridge_web_server
    from bridge.kafka.context import KafkaContext, KafkaSettings
    from bridge.runtime import Side, run_bridge

    if args.connection:
        configs = [load_connection(settings.config_dir, name) for name in args.connection]
    else:
        configs = list(load_connections(settings.config_dir).values())
    if not configs:
        return _err(f"no connection configs in {settings.config_dir}")
    store = None
    if any(isinstance(c.auth, AuthorizationCodeAuth) for c in configs):
        store = _store(settings)
    kafka_settings = KafkaSettings()
    if "state_dir" not in kafka_settings.model_fields_set:
        kafka_settings = kafka_settings.model_copy(update={"state_dir": settings.state_dir})
    sides: frozenset[Side] = frozenset({args.only}) if args.only else frozenset({"source", "sink"})
    web = bridge_web_server({c.name: c for c in configs}, settings.http_host, settings.http_port)
    return run_bridge(configs, KafkaContext(kafka_settings), sides=sides, credential_store=store, web=web)


# -- parser ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epic-bridge", description="Epic FHIR R4 <-> Apache Kafka bridge")
    p.add_argument(
        "--config-dir",
        default=None,
        help="folder of connection configs (default: $EPIC_BRIDGE_CONFIG_DIR or connect-configs)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="credential store and caches (default: $EPIC_BRIDGE_STATE_DIR or .bridge-state)",
    )
    p.add_argument("--log-level", default=os.environ.get("EPIC_BRIDGE_LOG_LEVEL", "WARNING"))
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=os.environ.get("EPIC_BRIDGE_LOG_FORMAT"),
        help="JSON or text log lines (default: $EPIC_BRIDGE_LOG_FORMAT, else json for `run`, text otherwise)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="check a connection: token, scopes, server support")
    c.add_argument("connection")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("connect", help="sign in once for an authorization-code connection")
    c.add_argument("connection")
    c.add_argument("--no-browser", action="store_true", help="only print the URL")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the redirect")
    c.set_defaults(func=cmd_connect)

    keys = sub.add_parser("keys", help="signing keys for SMART backend services").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    k = keys.add_parser("generate", help="create a key pair")
    k.add_argument("--connection", help="name used for the key file")
    k.add_argument("--alg", default="RS384", choices=["RS256", "RS384", "RS512", "ES256", "ES384"])
    k.add_argument("--bits", type=int, default=2048)
    k.add_argument("--out-dir", default="keys", help="folder for <connection>-<kid>.pem (default: keys)")
    k.add_argument("--out", help="exact file for the private key (instead of --out-dir)")
    k.add_argument("--passphrase-env", help="encrypt the PEM with the passphrase in this variable")
    k.set_defaults(func=cmd_keys_generate)
    k = keys.add_parser("jwks", help="print the public JWK Set of the configured keys")
    k.add_argument("--connection")
    k.set_defaults(func=cmd_keys_jwks)
    k = keys.add_parser("serve", help="serve /.well-known/jwks.json")
    k.add_argument("--host")
    k.add_argument("--port", type=int)
    k.set_defaults(func=cmd_keys_serve)

    creds = sub.add_parser("credentials", help="credential-store key management").add_subparsers(
        dest="credentials_command", required=True, metavar="ACTION"
    )
    creds.add_parser("new-key", help="print a new encryption key").set_defaults(func=cmd_credentials_new_key)
    creds.add_parser("rotate", help="re-encrypt stored credentials with the newest key").set_defaults(
        func=cmd_credentials_rotate
    )

    c = sub.add_parser("run", help="run the bridge: poll the source triggers, serve the sink commands")
    c.add_argument(
        "--connection", action="append", help="run only this connection (repeatable; default: all)"
    )
    c.add_argument("--only", choices=["source", "sink"], help="run one side only (default: both)")
    c.set_defaults(func=cmd_run)

    from bridge.ops.commands import add_ops_commands

    add_ops_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from bridge.auth.errors import AuthError
    from bridge.config.secrets import SecretResolutionError
    from bridge.credentials import CredentialStoreError

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format or ("json" if args.command == "run" else "text"))
    try:
        settings = _settings(args)
        code: int = args.func(args, settings)
        return code
    except ConfigError as exc:
        print("epic-bridge: configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:  # process settings from the environment; never echo a value
        problems = [
            f"{'EPIC_BRIDGE_' + str(e['loc'][0]).upper() if e['loc'] else exc.title}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        print("epic-bridge: settings problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_USAGE
    except (AuthError, CredentialStoreError, SecretResolutionError) as exc:
        print(f"epic-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
