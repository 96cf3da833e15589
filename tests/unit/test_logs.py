from __future__ import annotations

import logging

import pytest

from bridge.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdef0123456789xyz",
        "form: grant_type=refresh_token&refresh_token=abcdef0123456789xyz&x=1",
        '{"access_token": "abcdef0123456789xyz"}',
        "client_secret=abcdef0123456789xyz",
        "assertion eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJjIn0abc.c2lnbmF0dXJlc2lnbmF0dXJl",
        "-----BEGIN PRIVATE KEY-----\nabcdef0123456789xyz\n-----END PRIVATE KEY-----",
    ],
)
def test_redacts(text: str) -> None:
    assert "abcdef0123456789xyz" not in redact(text)
    assert "c2lnbmF0dXJlc2lnbmF0dXJl" not in redact(text)


def test_filter_rewrites_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    f = RedactingFilter()
    logger.addFilter(f)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            logger.info("sending %s", "Bearer abcdef0123456789xyz")
        assert "abcdef0123456789xyz" not in caplog.text and "Bearer ***" in caplog.text
    finally:
        logger.removeFilter(f)
