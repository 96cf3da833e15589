from __future__ import annotations

import time
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.auth.assertion import ASSERTION_TYPE, assertion_form, build_client_assertion
from bridge.auth.errors import KeyMaterialError
from bridge.auth.keys import KeySet, SigningKey, generate_key_pair, load_private_key, load_signing_key
from bridge.config.models import SigningKeyRef

TOKEN_URL = "https://epic.example.org/interconnect-fhir-oauth/oauth2/token"


def verify(token: str, key: SigningKey) -> dict[str, object]:
    public = pyjwt.PyJWK(key.public_jwk()).key
    return pyjwt.decode(token, public, algorithms=[key.alg], audience=TOKEN_URL)


def test_assertion_claims_follow_epic(signing_key: SigningKey) -> None:
    now = time.time()
    token = build_client_assertion(signing_key, client_id="client-1", token_url=TOKEN_URL)
    header = pyjwt.get_unverified_header(token)
    assert header == {"alg": "RS384", "typ": "JWT", "kid": signing_key.kid}
    claims = verify(token, signing_key)
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == TOKEN_URL
    assert 0 < int(claims["exp"]) - now <= 300  # type: ignore[call-overload]
    assert int(claims["iat"]) <= now + 1  # type: ignore[call-overload]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) <= 151


def test_fresh_jti_every_time(signing_key: SigningKey) -> None:
    jtis = {
        verify(build_client_assertion(signing_key, client_id="c", token_url=TOKEN_URL), signing_key)["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


def test_lifetime_capped_at_five_minutes(signing_key: SigningKey) -> None:
    with pytest.raises(ValueError):
        build_client_assertion(signing_key, client_id="c", token_url=TOKEN_URL, lifetime_s=301)


def test_form_fields(signing_key: SigningKey) -> None:
    form = assertion_form(signing_key, client_id="c", token_url=TOKEN_URL)
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert verify(form["client_assertion"], signing_key)["sub"] == "c"


@pytest.mark.parametrize("alg", ["RS256", "RS512", "ES256", "ES384"])
def test_other_algorithms(alg: str) -> None:
    kid, pem = generate_key_pair(alg)
    key = load_private_key(pem, kid=kid, alg=alg)
    assert (
        pyjwt.get_unverified_header(build_client_assertion(key, client_id="c", token_url=TOKEN_URL))["alg"]
        == alg
    )
    verify(build_client_assertion(key, client_id="c", token_url=TOKEN_URL), key)


def test_jwks_is_public_only_and_repr_is_safe(signing_key: SigningKey, key_pem: tuple[str, bytes]) -> None:
    jwks = KeySet([signing_key]).jwks()
    [jwk] = jwks["keys"]
    assert jwk["kid"] == signing_key.kid and jwk["alg"] == "RS384" and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert repr(signing_key) == f"SigningKey(kid={signing_key.kid!r}, alg='RS384')"
    private_d = key_pem[1].decode()
    assert private_d[40:80] not in repr(KeySet([signing_key]))


def test_kid_is_the_thumbprint(key_pem: tuple[str, bytes], tmp_path: Path) -> None:
    kid, pem = key_pem
    (tmp_path / "k.pem").write_bytes(pem)
    key = load_signing_key(SigningKeyRef(private_key={"file": "k.pem"}), "RS384", tmp_path)  # type: ignore[arg-type]
    assert key.kid == kid


def test_rotation_two_keys_published_first_signs(signing_key: SigningKey) -> None:
    kid2, pem2 = generate_key_pair("RS384")
    new = load_private_key(pem2, kid=kid2, alg="RS384")
    ks = KeySet([new, signing_key])
    assert ks.signing_key is new
    assert [k["kid"] for k in ks.jwks()["keys"]] == [kid2, signing_key.kid]
    assert KeySet([new, signing_key], signing_kid=signing_key.kid).signing_key is signing_key


def test_encrypted_key_needs_the_passphrase() -> None:
    kid, pem = generate_key_pair("RS384", passphrase=b"pass phrase")
    assert b"ENCRYPTED" in pem
    load_private_key(pem, kid=kid, alg="RS384", passphrase=b"pass phrase")
    with pytest.raises(KeyMaterialError, match="encrypted"):
        load_private_key(pem, kid=kid, alg="RS384")
    with pytest.raises(KeyMaterialError, match="wrong passphrase"):
        load_private_key(pem, kid=kid, alg="RS384", passphrase=b"nope")


def test_key_errors_say_what(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="not a readable PEM"):
        load_private_key(b"garbage", kid="k", alg="RS384")
    kid, pem = generate_key_pair("ES256")
    with pytest.raises(KeyMaterialError, match="needs an RSA private key"):
        load_private_key(pem, kid=kid, alg="RS384")
    with pytest.raises(KeyMaterialError, match="cannot read secret file"):
        load_signing_key(
            SigningKeyRef(kid="k", private_key={"file": "nope.pem"}),
            "RS384",  # type: ignore[arg-type]
            tmp_path,
        )
    assert load_pem_private_key(generate_key_pair()[1], None).key_size == 2048  # type: ignore[union-attr]


def test_world_readable_key_file_warns(
    key_pem: tuple[str, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "k.pem").write_bytes(key_pem[1])
    (tmp_path / "k.pem").chmod(0o644)
    ref = SigningKeyRef(kid="k", private_key={"file": "k.pem"})  # type: ignore[arg-type]
    load_signing_key(ref, "RS384", tmp_path)
    assert "chmod 600" in caplog.text
    caplog.clear()
    (tmp_path / "k.pem").chmod(0o600)
    load_signing_key(ref, "RS384", tmp_path)
    assert "chmod" not in caplog.text
