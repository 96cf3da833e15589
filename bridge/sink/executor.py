"""The real executor: one command against the FHIR server, answered with exactly one Outcome.

    CREATE   build (or take) the resource, mark it with the command, create it (Appointment on Epic:
             $find + $book), take the id from the body or the Location header, read it back
    FIND     criteria checked against the CapabilityStatement, every page up to the cap
    ENSURE   FIND by the criteria; one match -> MATCHED, none -> CREATE, more -> FAILED with the ids

A create is never sent twice blindly: when the worker says an earlier attempt may have run
(`recovering`) or a create fails ambiguously (timeout, dropped connection, 5xx), the resource is
searched for by its marker first (see identity.py). Everything transient is retried within the
command's deadline (calls.py); everything permanent is answered at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bridge.config.models import ConnectionConfig
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.client import FHIRClient
from bridge.logs import pseudonym
from bridge.sink import appointments
from bridge.sink.builders import Invalid, build, check_for_server
from bridge.sink.calls import AmbiguousCreate, Backoff, CommandCalls, Sleep
from bridge.sink.criteria import UnsupportedCriteria, check_criteria
from bridge.sink.failures import Failure, GiveUp, failure_summary
from bridge.sink.identity import (
    NATURAL_KEYS,
    carries_marker,
    marker_value,
    natural_key_query,
    recovery_query,
    same_natural_key,
    with_marker,
)
from bridge.sink.model import Action, Command, Effect, ErrorInfo, Outcome, Status
from bridge.sink.search import Matches, search_all

log = logging.getLogger(__name__)

RECOVERY_GRACE_S = 20.0  # a recovery search may run this long past the deadline: it decides a create
NOT_CREATABLE = {
    "Encounter": "Epic does not allow creating an Encounter through its FHIR R4 API (there is no "
    "Encounter create); encounters come from Epic's own workflows (check-in, admission, scheduling)",
}


class Rejected(Exception):
    """The command is refused before any request."""


class FHIRExecutor:
    """Implements worker.CommandExecutor for one connection."""

    def __init__(
        self,
        fhir: FHIRClient,
        config: ConnectionConfig,
        *,
        capabilities: Callable[[], Awaitable[Capabilities]] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_partial: Callable[[str, str], None] | None = None,
        marker_kept: Callable[[str], bool | None] | None = None,
        on_marker: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._fhir = fhir
        self._config = config
        self._sink = config.sink
        self._capabilities = capabilities or fhir.capabilities
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._known_capabilities: Capabilities | None = None
        self._on_partial = on_partial  # (resource type, the server's warning code), for the metric
        # Whether the server keeps the marker on a created resource, per type: what this process saw, else
        # what the ledger recorded (it survives restarts).
        self._recorded_marker = marker_kept
        self._seen_marker: dict[str, bool] = {}
        self._on_marker = on_marker
        self._ensure_locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- entry point -------------------------------------------------------------------------------
    async def execute(self, command: Command, *, recovering: bool, not_after: float | None = None) -> Outcome:
        """`not_after` (a time.monotonic() value): no create request leaves after it (the promise of the
        command's intent, see bridge.sink.ledger)."""
        try:
            self._check_command(command)
        except Rejected as exc:
            return Outcome(Status.REJECTED, error=ErrorInfo(str(exc)))
        calls = CommandCalls(
            deadline=self._clock() + self.deadline_s(command),
            not_after=not_after,
            backoff=Backoff(self._sink.retry_base_delay_s, self._sink.retry_max_delay_s),
            rng=self._rng,
            sleep=self._sleep,
            clock=self._clock,
        )
        try:
            capabilities = self._known_capabilities
            if capabilities is None:
                capabilities = await calls.call(self._capabilities, what="CapabilityStatement")
                self._known_capabilities = capabilities
            outcome = await self._run(command, calls, capabilities, recovering)
        except Rejected as exc:
            outcome = Outcome(Status.REJECTED, error=ErrorInfo(str(exc)), attempts=calls.attempts)
        except GiveUp as exc:
            outcome = Outcome(Status.FAILED, error=exc.failure.error, attempts=calls.attempts)
        log.info(
            "command %s %s %s: %s %s after %d request(s)",
            command.command_id,
            command.action.value,
            command.resource_type,
            outcome.status.value,
            outcome.effect.value,
            calls.attempts,
        )
        return outcome

    def deadline_s(self, command: Command) -> float:
        if command.deadline_ms is None:
            return self._sink.command_deadline_s
        return min(command.deadline_ms / 1000, 3600.0)

    def _check_command(self, command: Command) -> None:
        if command.deadline_ms is not None and command.deadline_ms <= 0:
            raise Rejected("deadline_ms must be a positive number of milliseconds")
        resource = self._config.enabled_resources().get(command.resource_type)
        enabled = set(resource.actions) if resource is not None else set()
        needed = {Action.CREATE: {"create"}, Action.FIND: {"find"}, Action.ENSURE: {"create", "find"}}[
            command.action
        ]
        if not needed <= enabled:
            raise Rejected(
                f"{command.action.value} on {command.resource_type} needs the action(s) "
                f"{', '.join(sorted(needed))} enabled for this connection (enabled: "
                f"{', '.join(sorted(enabled)) or 'none'})"
            )

    async def _run(
        self, command: Command, calls: CommandCalls, capabilities: Capabilities, recovering: bool
    ) -> Outcome:
        rtype = command.resource_type
        epic = capabilities.profile(self._config.server_profile) == "epic"
        criteria: list[tuple[str, str]] = []
        if command.action is not Action.CREATE:
            try:
                criteria = list(check_criteria(capabilities, rtype, command.criteria).items())
            except UnsupportedCriteria as exc:
                raise Rejected(str(exc)) from None
        resource: dict[str, Any] | None = None
        if command.action.may_create:
            self._check_creatable(capabilities, rtype, epic)
            resource = self._resource(command, epic)
        if command.action is Action.FIND:
            return self._found(await self._search(calls, rtype, criteria), calls)
        assert resource is not None
        if command.action is Action.CREATE:
            return await self._create(command, calls, capabilities, resource, epic, recovering)
        key = (rtype, *sorted(f"{k}={v}" for k, v in criteria))
        lock = self._ensure_locks.get(key)
        if lock is None:
            lock = self._ensure_locks[key] = asyncio.Lock()
        async with lock:  # two ensures for the same thing in this process must not both create
            return await self._ensure(command, calls, capabilities, resource, criteria, epic, recovering)

    # -- building and checking -----------------------------------------------------------------------
    def _resource(self, command: Command, epic: bool) -> dict[str, Any]:
        try:
            if command.resource is not None:
                resource = {k: v for k, v in command.resource.items() if k not in ("id", "meta")}
            elif command.fields is not None:
                resource = build(command.resource_type, command.fields)
            else:
                raise Invalid(f"{command.action.value} needs resource_json or fields")
            check_for_server(resource, epic=epic)
        except Invalid as exc:
            raise Rejected(str(exc)) from None
        if self._sink.mark_creates and not (epic and command.resource_type == "Appointment"):
            resource = with_marker(resource, self._marker(command))
        return resource

    def _marker(self, command: Command) -> str:
        return marker_value(self._config.name, command.command_id)

    def _check_creatable(self, capabilities: Capabilities, rtype: str, epic: bool) -> None:
        if epic and rtype == "Appointment":
            return  # booked through STU3 $find + $book
        if capabilities.supports_create(rtype):
            return
        if epic and rtype in NOT_CREATABLE:
            raise Rejected(NOT_CREATABLE[rtype])
        raise Rejected(f"the server does not support creating {rtype} (not in its CapabilityStatement)")

    # -- find --------------------------------------------------------------------------------------------
    async def _search(
        self,
        calls: CommandCalls,
        rtype: str,
        query: list[tuple[str, str]],
        deadline: float | None = None,
        max_pages: int | None = None,
    ) -> Matches:
        matches = await search_all(
            self._fhir,
            calls,
            rtype,
            query,
            max_pages=max_pages or self._sink.find_max_pages,
            deadline=deadline,
        )
        for code in dict.fromkeys(w.code or "none" for w in matches.warnings):
            # The code and type only: the server's text can name what it withheld.
            log.warning(
                "connection %s: partial answer to a %s search (server warning %s)",
                self._config.name,
                rtype,
                code,
            )
            if self._on_partial is not None:
                self._on_partial(rtype, code)
        return matches

    def _found(self, matches: Matches, calls: CommandCalls) -> Outcome:
        """A find's answer; when the server warned, the same status with `partial` and its warnings: what it
        returned is true, but more may match than it showed this client."""
        found = bool(matches.resources)
        return Outcome(
            Status.SUCCEEDED if found else Status.NOT_FOUND,
            Effect.MATCHED if found else Effect.NONE,
            tuple(matches.ids),
            self._budget(matches.resources),
            attempts=calls.attempts,
            truncated=matches.truncated,
            partial=matches.partial,
            warnings=matches.warning_texts(),
        )

    def _budget(self, resources: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
        """The resources that fit in the result's byte budget (ids are always listed in full)."""
        kept: list[dict[str, Any]] = []
        left = self._sink.result_max_resource_bytes
        for resource in resources:
            size = len(json.dumps(resource, separators=(",", ":")))
            if size > left:
                break
            kept.append(resource)
            left -= size
        return tuple(kept)

    # -- ensure ------------------------------------------------------------------------------------------
    async def _ensure(
        self,
        command: Command,
        calls: CommandCalls,
        capabilities: Capabilities,
        resource: dict[str, Any],
        criteria: list[tuple[str, str]],
        epic: bool,
        recovering: bool,
    ) -> Outcome:
        matches = await self._search(calls, command.resource_type, criteria)
        mine = [r for r in matches.resources if carries_marker(r, self._marker(command))]
        if mine:  # an earlier attempt of this very command created it
            log.info(
                "command %s: the interrupted create had gone through (%s)",
                command.command_id,
                pseudonym(mine[0].get("id")),
            )
            return self._created(mine[0], calls)
        if matches.truncated and len(matches.resources) <= 1:
            return Outcome(
                Status.FAILED,
                resource_ids=tuple(matches.ids),
                error=ErrorInfo(
                    f"the search has more than {self._sink.find_max_pages} pages, so it cannot be told "
                    "whether other resources match; ensure creates nothing — narrow the criteria"
                ),
                attempts=calls.attempts,
                truncated=True,
            )
        if matches.partial and len(matches.resources) <= 1:
            return self._partial_ensure(command, matches, calls)
        if len(matches.resources) == 1:
            return self._found(matches, calls)
        if len(matches.resources) > 1:
            ids = ", ".join(matches.ids[:50])
            return Outcome(
                Status.FAILED,
                resource_ids=tuple(matches.ids),
                error=ErrorInfo(
                    f"{len(matches.resources)} {command.resource_type} resources match the criteria "
                    f"({ids}); ensure creates nothing and picks none — narrow the criteria"
                ),
                attempts=calls.attempts,
                truncated=matches.truncated,
            )
        return await self._create(command, calls, capabilities, resource, epic, recovering)

    def _partial_ensure(self, command: Command, matches: Matches, calls: CommandCalls) -> Outcome:
        """The server warned that its answer may be incomplete: "no match" (or "one match") is not known,
        so nothing is created and nothing is picked."""
        first = matches.warnings[0]
        return Outcome(
            Status.FAILED,
            resource_ids=tuple(matches.ids),
            error=ErrorInfo(
                f"the server's answer to the search was partial ({'; '.join(matches.warning_texts())}), so "
                f"it cannot be told whether a matching {command.resource_type} exists; ensure creates "
                "nothing — make sure the client is authorized for this content",
                epic_code=first.code,
            ),
            attempts=calls.attempts,
            partial=True,
            warnings=matches.warning_texts(),
        )

    # -- create ------------------------------------------------------------------------------------------
    def _created(self, resource: dict[str, Any], calls: CommandCalls) -> Outcome:
        rid = str(resource.get("id"))
        return Outcome(
            Status.SUCCEEDED, Effect.CREATED, (rid,), self._budget([resource]), attempts=calls.attempts
        )

    async def _create(
        self,
        command: Command,
        calls: CommandCalls,
        capabilities: Capabilities,
        resource: dict[str, Any],
        epic: bool,
        recovering: bool,
    ) -> Outcome:
        rtype = command.resource_type
        if epic and rtype == "Appointment":
            return await self._book(calls, resource, recovering)
        marker = self._marker(command)
        if recovering:
            log.info("command %s: an earlier attempt was interrupted; searching first", command.command_id)
            found = await self._recover(calls, capabilities, resource, marker)
            if found is not None:
                log.info(
                    "command %s: the interrupted create had gone through (%s)",
                    command.command_id,
                    pseudonym(found.get("id")),
                )
                return self._created(found, calls)
        while True:
            try:
                result = await calls.call(
                    lambda: self._fhir.create(rtype, resource, not_after=calls.not_after),
                    creating=True,
                    what="create",
                )
            except AmbiguousCreate as unsure:
                log.warning(
                    "command %s: create interrupted; searching before trying again", command.command_id
                )
                await self._sleep(self._sink.ambiguous_settle_s)  # let a request still in flight land
                found = await self._recover(calls, capabilities, resource, marker, unsure.failure)
                if found is not None:
                    return self._created(found, calls)
                await calls.pause(unsure.failure, what="create")
                continue
            break
        if result.resource is not None and result.resource.get("id"):
            return self._observed(self._created(result.resource, calls), result.resource, marker)
        if result.id is None:  # created, but the answer names no id: the marker finds it
            found = await self._recover(calls, capabilities, resource, marker)
            if found is None:
                raise GiveUp(
                    _unknown("the server accepted the create but named no id, and no search found it")
                )
            return self._created(found, calls)
        created_id = result.id
        try:
            read_back = await calls.call(
                lambda: self._fhir.read(rtype, created_id),
                deadline=max(calls.deadline, self._clock() + RECOVERY_GRACE_S),
                what="read-back",
            )
        except GiveUp as exc:  # created all the same: answer with the id
            log.warning(
                "command %s: created %s but could not read it back (%s)",
                command.command_id,
                pseudonym(created_id),
                failure_summary(exc.failure),
            )
            return Outcome(Status.SUCCEEDED, Effect.CREATED, (created_id,), attempts=calls.attempts)
        return self._observed(self._created(read_back, calls), read_back, marker)

    # -- does the server keep the marker? ---------------------------------------------------------------
    def _marker_kept(self, rtype: str) -> bool | None:
        if rtype in self._seen_marker:
            return self._seen_marker[rtype]
        return self._recorded_marker(rtype) if self._recorded_marker is not None else None

    def _observed(self, outcome: Outcome, created: dict[str, Any], marker: str) -> Outcome:
        """Check, on every create read back, whether the server kept the marker identifier."""
        if not self._sink.mark_creates:
            return outcome
        rtype = str(created.get("resourceType"))
        kept = carries_marker(created, marker)
        if self._marker_kept(rtype) != kept:
            log.log(
                logging.INFO if kept else logging.WARNING,
                "connection %s: the server %s the bridge's marker identifier on a created %s%s",
                self._config.name,
                "keeps" if kept else "dropped",
                rtype,
                "" if kept else "; an interrupted create is looked for by what the resource is instead",
            )
        self._seen_marker[rtype] = kept
        if self._on_marker is not None:
            self._on_marker(rtype, kept)
        return replace(outcome, marker_kept=kept)

    async def _recover(
        self,
        calls: CommandCalls,
        capabilities: Capabilities,
        resource: dict[str, Any],
        marker: str,
        cause: Failure | None = None,
    ) -> dict[str, Any] | None:
        """The resource an earlier attempt created, None when there is none; GiveUp when it cannot be told."""
        if not self._sink.mark_creates:
            raise GiveUp(
                _unknown("marking creates is switched off, so an interrupted create cannot be checked", cause)
            )
        rtype = str(resource["resourceType"])
        kept = self._marker_kept(rtype)
        if kept is False:  # this server drops the marker: look by what the resource is instead
            return await self._recover_by_natural_key(calls, capabilities, resource, cause, known=True)
        query = recovery_query(capabilities, resource, marker)
        if query is None:
            raise GiveUp(_unknown(f"the server offers no search that could find the {rtype}", cause))
        matches = await self._recovery_search(calls, rtype, query, cause)
        mine = [r for r in matches.resources if carries_marker(r, marker)]
        if len(mine) > 1:
            ids = ", ".join(str(r.get("id")) for r in mine)
            raise GiveUp(
                Failure(
                    ErrorInfo(f"more than one resource carries this command's marker: {ids}"), False, False
                )
            )
        if mine or kept is True:
            return mine[0] if mine else None
        # Not known yet whether this server keeps the marker (no create read back on this connection):
        # a resource with the same natural key may be the earlier attempt's, with the marker dropped.
        return await self._recover_by_natural_key(calls, capabilities, resource, cause, known=False)

    async def _recovery_search(
        self, calls: CommandCalls, rtype: str, query: list[tuple[str, str]], cause: Failure | None
    ) -> Matches:
        deadline = max(calls.deadline, self._clock() + RECOVERY_GRACE_S)
        try:
            matches = await self._search(calls, rtype, query, deadline, max_pages=100)
        except GiveUp as exc:
            raise GiveUp(_unknown(f"the search for it failed: {exc.failure.error.message}", cause)) from None
        if matches.partial:
            raise GiveUp(
                _unknown(
                    f"the server's answer to the search was partial ({matches.warning_texts()[0]})", cause
                )
            )
        return matches

    async def _recover_by_natural_key(
        self,
        calls: CommandCalls,
        capabilities: Capabilities,
        resource: dict[str, Any],
        cause: Failure | None,
        *,
        known: bool,
    ) -> dict[str, Any] | None:
        """`known`: the server is known to drop the marker, so one resource with the natural key is the
        earlier attempt's. Otherwise any candidate is a question for a person, never a guess."""
        rtype = str(resource["resourceType"])
        query = natural_key_query(capabilities, resource)
        if query is None:
            if known:
                raise GiveUp(
                    _unknown(
                        f"this server does not keep the bridge's marker on a created {rtype} and offers no "
                        "search by what the resource is",
                        cause,
                    )
                )
            return None
        matches = await self._recovery_search(calls, rtype, query, cause)
        candidates = [r for r in matches.resources if same_natural_key(resource, r)]
        if not candidates or (known and len(candidates) == 1):
            return candidates[0] if candidates else None
        ids = tuple(str(r.get("id")) for r in candidates)
        why = (
            "this server does not keep the bridge's marker, and"
            if known
            else "no resource carries the marker, but"
        )
        raise GiveUp(
            Failure(
                ErrorInfo(
                    f"not created: an earlier attempt of this command may have created it; {why} "
                    f"{len(ids)} {rtype} resource(s) have the same {NATURAL_KEYS.get(rtype, 'natural key')} "
                    f"({', '.join(ids[:50])}); check them before sending a new command",
                ),
                retriable=False,
                ambiguous=False,
            )
        )

    async def _book(self, calls: CommandCalls, resource: dict[str, Any], recovering: bool) -> Outcome:
        try:
            request = appointments.BookingRequest(resource)
        except Invalid as exc:
            raise Rejected(str(exc)) from None
        recovery_deadline = max(calls.deadline, self._clock() + RECOVERY_GRACE_S)
        if recovering:
            earlier = await appointments.booked_in_window(
                self._fhir, calls, request, deadline=recovery_deadline
            )
            if len(earlier) == 1:
                return self._created(earlier[0], calls)
            if len(earlier) > 1:
                ids = tuple(str(a.get("id")) for a in earlier)
                raise GiveUp(
                    _unknown(
                        f"the patient has {len(ids)} booked appointments in the window ({', '.join(ids)})"
                    )
                )
        booked = await appointments.book(
            self._fhir, calls, request, recovery_deadline, self._sink.ambiguous_settle_s
        )
        return self._created(booked, calls)


def _unknown(reason: str, cause: Failure | None = None) -> Failure:
    """An earlier attempt may have created the resource and that cannot be ruled out: do not create."""
    detail = f" (the create failed with: {cause.error.message})" if cause is not None else ""
    message = (
        "not created: an earlier attempt of this command may have created it and "
        f"{reason}{detail}; check the record before sending a new command"
    )
    error = ErrorInfo(
        message,
        http_status=cause.error.http_status if cause else None,
        epic_code=cause.error.epic_code if cause else None,
        operation_outcome=cause.error.operation_outcome if cause else None,
    )
    return Failure(error, retriable=False, ambiguous=False)
