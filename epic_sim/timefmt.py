"""Date/instant normalisation so stored search columns compare as plain strings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def normalize_instant(value: str) -> str | None:
    """A dateTime with a time part becomes UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ`; a partial date stays as is."""
    if "T" not in value:
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(INSTANT_FORMAT)


def date_range(value: str) -> tuple[str, str] | None:
    """The half-open [low, high) range of string keys a FHIR date search value covers."""
    if "T" in value:
        low = normalize_instant(value)
        if low is None:
            return None
        parsed = datetime.strptime(low, INSTANT_FORMAT).replace(tzinfo=UTC)
        step = timedelta(seconds=1) if "." not in value.split("T", 1)[1] else timedelta(microseconds=1)
        return low, (parsed + step).strftime(INSTANT_FORMAT)
    parts = value.split("-")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        return None
    if len(nums) == 1:
        return f"{nums[0]:04d}", f"{nums[0] + 1:04d}"
    if len(nums) == 2:
        year, month = nums
        nxt = (year + 1, 1) if month == 12 else (year, month + 1)
        return f"{year:04d}-{month:02d}", f"{nxt[0]:04d}-{nxt[1]:02d}"
    if len(nums) == 3:
        try:
            day = datetime(nums[0], nums[1], nums[2])
        except ValueError:
            return None
        return day.strftime("%Y-%m-%d"), (day + timedelta(days=1)).strftime("%Y-%m-%d")
    return None
