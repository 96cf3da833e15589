"""Signing keys for private_key_jwt: generation, loading (two may be active during a rotation), JWK Set."""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

from bridge.auth.errors import KeyMaterialError
from bridge.config.models import SigningKeyRef
from bridge.config.secrets import FileSecretRef, SecretResolutionError, read_secret_bytes

JoseKey = RSAKey | ECKey
log = logging.getLogger(__name__)
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A private key with its kid and algorithm. Its repr shows only public facts."""

    kid: str
    alg: str
    key: JoseKey

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = dict(self.key.as_dict(private=False))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


def _check_alg_matches(key: Any, alg: str, where: str) -> None:
    if alg.startswith("RS") and not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"{where}: alg {alg} needs an RSA private key")
    if alg.startswith("ES") and not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"{where}: alg {alg} needs an EC private key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise KeyMaterialError(f"{where}: RSA keys must be at least 2048 bits")


def load_private_key(
    pem: bytes, *, kid: str, alg: str, passphrase: bytes | None = None, where: str = "private key"
) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise KeyMaterialError(f"{where}: the key is encrypted; add a passphrase reference") from None
    except ValueError:
        raise KeyMaterialError(f"{where}: not a readable PEM private key (or wrong passphrase)") from None
    _check_alg_matches(key, alg, where)
    jose: JoseKey
    if isinstance(key, rsa.RSAPrivateKey):
        jose = RSAKey.import_key(key)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jose = ECKey.import_key(key)
    else:
        raise KeyMaterialError(f"{where}: only RSA and EC keys are supported")
    return SigningKey(kid=kid, alg=alg, key=jose)


def load_signing_key(ref: SigningKeyRef, alg: str, base_dir: Path | None) -> SigningKey:
    where = f"key {ref.kid or ''} ({ref.private_key.describe()})".replace("key  (", "key (")
    try:
        pem = read_secret_bytes(ref.private_key, base_dir)
        passphrase = read_secret_bytes(ref.passphrase, base_dir) if ref.passphrase else None
    except SecretResolutionError as exc:
        raise KeyMaterialError(f"{where}: {exc}") from None
    if isinstance(ref.private_key, FileSecretRef):
        mode = ref.private_key.path(base_dir).stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "%s: private key file is readable by others (mode %o); run chmod 600 on it",
                where,
                stat.S_IMODE(mode),
            )
    key = load_private_key(pem, kid=ref.kid or "", alg=alg, passphrase=passphrase, where=where)
    if ref.kid is None:
        key = SigningKey(kid=str(key.key.thumbprint()), alg=alg, key=key.key)
    return key


class KeySet:
    """The active keys of one client: the first signs, all are published (rotation overlap)."""

    def __init__(self, keys: list[SigningKey], signing_kid: str | None = None) -> None:
        if not keys:
            raise KeyMaterialError("no signing key configured")
        self._keys = list(keys)
        self._signing = next((k for k in keys if k.kid == signing_kid), keys[0]) if signing_kid else keys[0]

    def __repr__(self) -> str:
        return f"KeySet(kids={[k.kid for k in self._keys]!r}, signing={self._signing.kid!r})"

    @property
    def signing_key(self) -> SigningKey:
        return self._signing

    @property
    def keys(self) -> list[SigningKey]:
        return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self._keys]}

    @classmethod
    def from_refs(
        cls, refs: list[SigningKeyRef], alg: str, base_dir: Path | None, signing_kid: str | None = None
    ) -> KeySet:
        return cls([load_signing_key(r, alg, base_dir) for r in refs], signing_kid)


def generate_private_key(alg: str = "RS384", bits: int = 2048) -> Any:
    if alg.startswith("RS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg]())
    raise KeyMaterialError(f"unsupported alg {alg}")


def private_key_pem(key: Any, passphrase: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    return pem


def thumbprint_kid(key: Any) -> str:
    """RFC 7638 thumbprint of the public key: a stable kid."""
    jose: JoseKey = RSAKey.import_key(key) if isinstance(key, rsa.RSAPrivateKey) else ECKey.import_key(key)
    return str(jose.thumbprint())


def generate_key_pair(
    alg: str = "RS384", bits: int = 2048, passphrase: bytes | None = None
) -> tuple[str, bytes]:
    """(kid, PEM) of a fresh private key; the kid is the public key's thumbprint."""
    key = generate_private_key(alg, bits)
    return thumbprint_kid(key), private_key_pem(key, passphrase)
