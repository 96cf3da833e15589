"""Admin API outside the FHIR surface (JSON, no auth, meant for loopback): the hospital's side."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from epic_sim.oauth import InvalidRegistration
from epic_sim.render import resource_text
from epic_sim.roster import join_roster, leave_roster
from epic_sim.state import sim_of
from epic_sim.store import RESOURCE_TYPES


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


async def register_client(request: Request) -> Response:
    sim = sim_of(request)
    try:
        body = await _json(request)
        sim.oauth.register_client(body)
    except (ValueError, InvalidRegistration) as exc:
        return _problem(400, str(exc))
    return JSONResponse({"client_id": body.get("client_id")}, status_code=201)


async def requests_log(request: Request) -> Response:
    log = sim_of(request).log
    if request.method == "DELETE":
        log.clear()
        return Response(status_code=204)
    since = int(request.query_params.get("since", "0"))
    return JSONResponse({"requests": log.since(since)})


async def settings(request: Request) -> Response:
    """Search quirks that can change at run time: short_page_rate, warning_rate."""
    config = sim_of(request).config
    if request.method == "PUT":
        body = await _json(request)
        unknown = set(body) - {"short_page_rate", "warning_rate"}
        if unknown:
            return _problem(400, f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            values = {k: float(v) for k, v in body.items()}
        except (TypeError, ValueError) as exc:
            return _problem(400, str(exc))
        if any(not 0 <= v <= 1 for v in values.values()):
            return _problem(400, "rates must be between 0 and 1")
        for key, value in values.items():
            setattr(config, key, value)
    return JSONResponse(
        {"short_page_rate": config.effective_short_page_rate, "warning_rate": config.warning_rate}
    )


async def faults(request: Request) -> Response:
    sim = sim_of(request)
    if request.method == "PUT":
        try:
            sim.faults.configure(await _json(request))
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
    elif request.method == "DELETE":
        sim.faults.configure({"rules": []})
    return JSONResponse({"rules": sim.faults.snapshot()})


async def partial_answers(request: Request) -> Response:
    """Partial answers (59204 warnings, optionally hiding the matches) per client and resource type."""
    sim = sim_of(request)
    if request.method == "PUT":
        try:
            sim.partial.configure(await _json(request))
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
    elif request.method == "DELETE":
        sim.partial.configure({"rules": []})
    return JSONResponse({"rules": sim.partial.snapshot()})


async def identifiers(request: Request) -> Response:
    """Resource types whose creates keep only Epic's own identifier systems: {"drop_unknown": [types]}."""
    config = sim_of(request).config
    if request.method == "PUT":
        body = await _json(request)
        types = body.get("drop_unknown") if isinstance(body, dict) else None
        if not isinstance(types, list) or any(t not in RESOURCE_TYPES for t in types):
            return _problem(
                400, f"drop_unknown must be a list of resource types ({', '.join(RESOURCE_TYPES)})"
            )
        config.drop_unknown_identifiers = list(types)
    return JSONResponse({"drop_unknown": config.drop_unknown_identifiers})


async def expire_tokens(request: Request) -> Response:
    sim_of(request).oauth.expire_all_tokens()
    return Response(status_code=204)


async def bare400(request: Request) -> Response:
    body = await _json(request)
    sim_of(request).oauth.inject_bare_400(int(body.get("count", 1)))
    return Response(status_code=204)


def _check_type(rtype: str) -> JSONResponse | None:
    return None if rtype in RESOURCE_TYPES else _problem(404, f"unknown resource type {rtype}")


def _render(request: Request, text: str, status: int = 200) -> Response:
    return Response(text, status_code=status, media_type="application/fhir+json")


async def resources(request: Request) -> Response:
    """GET: list ids (?limit=&offset=); POST: create as the hospital would."""
    sim = sim_of(request)
    rtype = request.path_params["rtype"]
    bad = _check_type(rtype)
    if bad:
        return bad
    if request.method == "GET":
        limit = min(int(request.query_params.get("limit", "100")), 100_000)
        offset = int(request.query_params.get("offset", "0"))
        return JSONResponse(
            {"total": sim.store.count(rtype), "ids": sim.store.ids(rtype, limit=limit, offset=offset)}
        )
    try:
        resource = await _json(request)
    except ValueError:
        return _problem(400, "body is not JSON")
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        return _problem(400, f"body must be a {rtype} resource")
    if resource.get("id"):
        if sim.store.exists(rtype, resource["id"]):
            return _problem(409, f"{rtype}/{resource['id']} already exists")
    else:
        resource["id"] = sim.new_id(rtype)
    row = sim.store.insert(resource)
    if rtype == "Patient":
        join_roster(sim.store, row.id)
    return _render(request, resource_text(row, sim.config.profile), 201)


async def resource(request: Request) -> Response:
    sim = sim_of(request)
    rtype, rid = request.path_params["rtype"], request.path_params["rid"]
    bad = _check_type(rtype)
    if bad:
        return bad
    if request.method == "DELETE":
        if not sim.store.delete(rtype, rid):
            return _problem(404, "not found")
        if rtype == "Patient":
            leave_roster(sim.store, rid)
        return Response(status_code=204)
    if request.method == "GET":
        row = sim.store.get(rtype, rid)
        return _render(request, resource_text(row, sim.config.profile)) if row else _problem(404, "not found")
    try:
        body = await _json(request)
    except ValueError:
        return _problem(400, "body is not JSON")
    if not isinstance(body, dict) or body.get("resourceType") != rtype:
        return _problem(400, f"body must be a {rtype} resource")
    body["id"] = rid
    row = sim.store.update(body)
    if row is None:
        return _problem(404, "not found")
    return _render(request, resource_text(row, sim.config.profile))


async def activity(request: Request) -> Response:
    sim = sim_of(request)
    if sim.episodes is not None:
        return await _episode_activity(request)
    if request.method == "PUT":
        body = await _json(request)
        try:
            sim.activity.set_rate(float(body.get("rate_per_s", 0)))
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
    return JSONResponse({"model": "rate", **sim.activity.stats()})


async def _episode_activity(request: Request) -> Response:
    episodes = sim_of(request).episodes
    assert episodes is not None
    if request.method == "PUT":
        body = await _json(request)
        if not isinstance(body, dict) or set(body) != {"speed"}:
            return _problem(400, 'the episodes model takes {"speed": x} (0 pauses it)')
        try:
            episodes.set_speed(float(body["speed"]))
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
    return JSONResponse(episodes.stats())


async def activity_step(request: Request) -> Response:
    sim = sim_of(request)
    if sim.episodes is not None:
        return _problem(409, "steps drive the rate model; the episodes model follows its timetable")
    body = await _json(request)
    done = sim.activity.step(int(body.get("count", 1)))
    return JSONResponse({"changes": done})


async def ground_truth(request: Request) -> Response:
    episodes = sim_of(request).episodes
    if episodes is None:
        return _problem(404, "the ground truth is kept by the episodes activity model")
    try:
        since = int(request.query_params.get("since", "0"))
        limit = min(int(request.query_params.get("limit", "10000")), 100_000)
    except ValueError:
        return _problem(400, "since and limit must be integers")
    return JSONResponse({"changes": episodes.truth.since(since, limit), "last_seq": episodes.truth.last_seq})


async def stats(request: Request) -> Response:
    sim = sim_of(request)
    store = sim.store
    return JSONResponse(
        {
            "profile": sim.config.profile,
            "counts": store.counts(),
            "seed": store.get_meta("seed"),
            "roster_group": store.get_meta("roster_group"),
            "sandbox_group": store.get_meta("sandbox_group"),
            "fhir_base": sim.config.fhir_base,
            "token_url": sim.config.token_url,
            "last_request_seq": sim.log.last_seq,
        }
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/admin/clients", register_client, methods=["POST"]),
        Route("/admin/requests", requests_log, methods=["GET", "DELETE"]),
        Route("/admin/settings", settings, methods=["GET", "PUT"]),
        Route("/admin/faults", faults, methods=["GET", "PUT", "DELETE"]),
        Route("/admin/partial", partial_answers, methods=["GET", "PUT", "DELETE"]),
        Route("/admin/identifiers", identifiers, methods=["GET", "PUT"]),
        Route("/admin/tokens/expire", expire_tokens, methods=["POST"]),
        Route("/admin/oauth/bare400", bare400, methods=["POST"]),
        Route("/admin/resources/{rtype}", resources, methods=["GET", "POST"]),
        Route("/admin/resources/{rtype}/{rid}", resource, methods=["GET", "PUT", "DELETE"]),
        Route("/admin/activity", activity, methods=["GET", "PUT"]),
        Route("/admin/activity/step", activity_step, methods=["POST"]),
        Route("/admin/ground-truth", ground_truth, methods=["GET"]),
        Route("/admin/stats", stats, methods=["GET"]),
    ]
