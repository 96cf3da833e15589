"""Find criteria, checked against the server's CapabilityStatement before any request.

Epic silently ignores a search parameter it does not support (HTTP 200, the filter just does not
apply), so a find by an unsupported criterion would return wrong matches, and an ensure could match
the wrong patient. Such a criterion is refused here, with the list of what the server does support.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.fhir.capabilities import Capabilities

# Parameters that steer paging or the answer's shape, not the match: the bridge controls these.
RESERVED = frozenset(
    {"_format", "_elements", "_summary", "_include", "_revinclude", "_contained", "sessionID"}
)
MAX_VALUE_LENGTH = 1000


class UnsupportedCriteria(ValueError):
    """A criterion the server would not apply (or apply differently than asked)."""


def check_criteria(
    capabilities: Capabilities, resource_type: str, criteria: Mapping[str, str]
) -> dict[str, str]:
    """The criteria as they will be sent, or UnsupportedCriteria naming every problem."""
    if not capabilities.supports_search(resource_type):
        raise UnsupportedCriteria(f"the server does not support searching {resource_type}")
    problems: list[str] = []
    for name, value in criteria.items():
        if not name or not name.replace("_", "").replace("-", "").isalnum() or not name.isascii():
            problems.append(
                f"{name!r} is not a search parameter name (modifiers and chains are not supported)"
            )
        elif name in RESERVED:
            problems.append(f"{name} is controlled by the bridge and cannot be a criterion")
        elif not capabilities.supports_search_param(resource_type, name):
            problems.append(f"{name} is not a search parameter this server supports for {resource_type}")
        elif not value.strip():
            problems.append(f"{name} has an empty value")
        elif len(value) > MAX_VALUE_LENGTH:
            problems.append(f"{name} has a value longer than {MAX_VALUE_LENGTH} characters")
        elif name == "_count" and not (value.isdigit() and 1 <= int(value) <= 999):
            problems.append("_count must be a number from 1 to 999")
    if problems:
        supported = sorted(capabilities.resources[resource_type].search_params - RESERVED)
        raise UnsupportedCriteria(
            "; ".join(problems) + f" (supported for {resource_type}: {', '.join(supported) or 'none'})"
        )
    return dict(criteria)
