"""The registry reached over TLS with basic auth and a client certificate, all from the bridge's settings
(secrets by reference), in front of the real registry: a loopback gateway that verifies the client
certificate against its own CA and the Authorization header, and passes the request on to the registry."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.kafka.registry import register_avro

pytestmark = pytest.mark.integration

USER, PASSWORD = "bridge-api-key", "registry-secret-4f1c"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer[0] if issuer else subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class Pki:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        self.files[name] = path
        return path


def make_pki(folder: Path) -> Pki:
    pki = Pki(folder)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None)
    pki.write("ca.pem", ca.public_bytes(pem))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        pki.write(f"{who}.pem", _cert(who, key, ("test CA", ca_key)).public_bytes(pem))
        encryption = (
            serialization.BestAvailableEncryption(b"key-passphrase")
            if who == "client"
            else serialization.NoEncryption()
        )
        pki.write(f"{who}.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, encryption))
    return pki


class Gateway:
    """TLS with a required client certificate, then basic auth, then the real registry."""

    def __init__(self, pki: Pki, upstream: str) -> None:
        seen = self.seen = []  # type: list[dict[str, Any]]
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        upstream_client = httpx.Client(base_url=upstream.rstrip("/"), timeout=30)
        base_path = httpx.URL(upstream).path.rstrip("/")

        class H(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                auth = self.headers.get("Authorization")
                seen.append({"client_cert": bool(peer), "authorized": auth == expected})
                if auth != expected:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error_code": 401, "message": "Unauthorized"}')
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = upstream_client.request(
                    self.command,
                    self.path.removeprefix(base_path),
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, *a: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.files["ca.pem"]))
        context.load_cert_chain(pki.files["server.pem"], pki.files["server.key"])
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._upstream = upstream_client
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}{base_path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()


@pytest.fixture
def gateway(registry_url: str, tmp_path: Path) -> Iterator[tuple[Gateway, Pki]]:
    pki = make_pki(tmp_path)
    gw = Gateway(pki, registry_url)
    try:
        yield gw, pki
    finally:
        gw.stop()


def settings_for(gw: Gateway, pki: Pki, **over: Any) -> KafkaSettings:
    base: dict[str, Any] = {
        "schema_registry_url": gw.url,
        "schema_registry_user": USER,
        "schema_registry_password": {"env": "REGISTRY_PASSWORD"},
        "schema_registry_ca_file": pki.files["ca.pem"],
        "schema_registry_cert_file": pki.files["client.pem"],
        "schema_registry_key_file": pki.files["client.key"],
        "schema_registry_key_password": {"file": str(pki.write("key-passphrase", b"key-passphrase\n"))},
    }
    return KafkaSettings(**{**base, **over})


def test_the_registry_is_used_over_tls_with_basic_auth_and_a_client_certificate(
    gateway: tuple[Gateway, Pki], monkeypatch: pytest.MonkeyPatch, unique_name: Any
) -> None:
    gw, pki = gateway
    monkeypatch.setenv("REGISTRY_PASSWORD", PASSWORD)
    kafka = KafkaContext(settings_for(gw, pki))
    subject = f"{unique_name('secured')}-value"
    schema = '{"type": "record", "name": "Secured", "fields": [{"name": "a", "type": "string"}]}'
    schema_id = register_avro(kafka.registry, subject, schema)
    assert kafka.registry.get_schema(schema_id).schema_str.strip()
    assert gw.seen and all(s["client_cert"] and s["authorized"] for s in gw.seen)


def test_a_wrong_registry_password_is_refused_by_the_registry_side(
    gateway: tuple[Gateway, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, pki = gateway
    monkeypatch.setenv("REGISTRY_PASSWORD", "not-the-password")
    kafka = KafkaContext(settings_for(gw, pki))
    with pytest.raises(SchemaRegistryError) as refused:
        kafka.registry.get_subjects()
    assert refused.value.http_status_code == 401
    assert gw.seen and not any(s["authorized"] for s in gw.seen)


def test_without_the_ca_the_registry_certificate_is_not_trusted(
    gateway: tuple[Gateway, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, pki = gateway
    monkeypatch.setenv("REGISTRY_PASSWORD", PASSWORD)
    kafka = KafkaContext(settings_for(gw, pki, schema_registry_ca_file=None))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # the client's own httpx error
        kafka.registry.get_subjects()
    assert gw.seen == []  # the password never left: the handshake failed first
