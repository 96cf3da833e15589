"""Reading `application/x-www-form-urlencoded` bodies without python-multipart."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

MAX_FORM_BYTES = 64 * 1024


class FormError(ValueError):
    """The body is not a usable urlencoded form (the message says why)."""


async def read_form(request: Request) -> dict[str, str]:
    """The form fields; a field sent twice is an error (RFC 6749 3.2: parameters MUST NOT repeat)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_bounded(request)
    if not body and not content_type:
        return {}  # an empty POST: the missing parameters are reported, not the missing type
    if content_type != "application/x-www-form-urlencoded":
        raise FormError(
            f"content type {content_type or 'missing'!r} is not application/x-www-form-urlencoded"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("form body is not UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in fields:
            raise FormError(f"parameter {name!r} sent more than once")
        fields[name] = value
    return fields


async def _read_bounded(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise FormError(f"form body larger than {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
