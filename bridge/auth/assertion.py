"""The private_key_jwt client assertion (RFC 7523), signed with authlib.

Claims follow Epic: iss = sub = client_id; aud = the exact token URL; a fresh jti every time;
exp at most 5 minutes ahead; iat/nbf never in the future; kid (and typ JWT) in the header.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from authlib.oauth2.rfc7523 import private_key_jwt_sign

from bridge.auth.keys import SigningKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME_S = 300


def build_client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    token_url: str,
    lifetime_s: int = 240,
    clock: Callable[[], float] = time.time,
) -> str:
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError("assertion lifetime must be within 5 minutes")
    now = int(clock())
    token = private_key_jwt_sign(
        key.key,
        client_id,
        token_url,
        alg=key.alg,
        header={"kid": key.kid, "typ": "JWT"},
        claims={"jti": uuid.uuid4().hex, "nbf": now},
        issued_at=now,
        expires_at=now + lifetime_s,
    )
    return token.decode() if isinstance(token, bytes) else str(token)


def assertion_form(
    key: SigningKey,
    *,
    client_id: str,
    token_url: str,
    lifetime_s: int = 240,
    clock: Callable[[], float] = time.time,
) -> dict[str, str]:
    return {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": build_client_assertion(
            key, client_id=client_id, token_url=token_url, lifetime_s=lifetime_s, clock=clock
        ),
    }
