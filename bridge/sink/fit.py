"""Making a result fit in one Kafka record.

A result larger than the broker accepts (the producer's `message.max.bytes`, the topic's
`max.message.bytes`) would fail its transaction again on every attempt: the command would be retried
forever and the partition would stop. So a result that does not fit is made smaller, in this order, until
it does, and says what was left out:
1. the copied resources are dropped (the ids stay; `truncated`);
2. the id list is cut (`truncated`);
3. the error's OperationOutcome is dropped, its message and the warnings shortened;
4. what is left is a FAILED result that says the answer was too large.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Encode = Callable[[dict[str, Any]], bytes]
# Room for the record's key, headers and batch framing around the value.
RECORD_OVERHEAD = 4096


def fit_result(result: dict[str, Any], encode: Encode, limit: int) -> tuple[dict[str, Any], bytes]:
    """`result` (or a smaller version of it) and its encoding, at most `limit - RECORD_OVERHEAD` bytes."""
    room = max(1024, limit - RECORD_OVERHEAD)
    value = encode(result)
    if len(value) <= room:
        return result, value
    size = len(value)
    if result.get("resources_json"):
        result = _note(
            {**result, "resources_json": [], "truncated": True},
            f"resources_json left out: the result ({size} bytes) is larger than the topic accepts ({limit} "
            "bytes); read the resources by id",
        )
        value = encode(result)
    ids = list(result.get("resource_ids") or [])
    if len(value) > room and ids:
        total = len(ids)
        result = _note(
            {**result, "truncated": True}, f"resource_ids cut: the result would not fit ({limit} bytes)"
        )
        while len(value) > room and ids:
            ids = ids[: len(ids) // 2]
            result = {**result, "resource_ids": ids}
            value = encode(result)
        result = _note(result, f"{len(ids)} of {total} ids listed")
        value = encode(result)
    if len(value) > room:
        error = result.get("error")
        if error is not None:
            error = {**error, "operation_outcome_json": None, "message": error["message"][:2000]}
        warnings = [w[:500] for w in (result.get("warnings") or [])[:20]]
        result = {**result, "error": error, "warnings": warnings}
        value = encode(result)
    if len(value) > room:
        result = {
            **result,
            "status": "FAILED",
            "resource_ids": result["resource_ids"] if result.get("effect") == "CREATED" else [],
            "resources_json": [],
            "warnings": [],
            "truncated": True,
            "error": {
                "message": f"the result was too large for the topic ({size} bytes, the limit is {limit})",
                "http_status": None,
                "epic_code": None,
                "operation_outcome_json": None,
                "retriable": False,
            },
        }
        value = encode(result)
    return result, value


def _note(result: dict[str, Any], warning: str) -> dict[str, Any]:
    return {**result, "warnings": [*(result.get("warnings") or []), warning]}
