"""What a route needs from the app, as typed FastAPI dependencies (``Annotated[..., Depends]``).

Routes declare their needs as parameters (``services: ReadyDep``, ``jobs: JobsDep``) instead of
reaching into ``request.app.state``; a need that cannot be met yet (model loading, job service not
started) raises :class:`~malsori.server.services.NotReadyError` before the route body runs, which
``server.errors`` maps to 503 with Retry-After like every other error. The connection parameter is
an ``HTTPConnection``, so WebSocket handlers can take the same dependencies.

- ``ServicesDep``: the app's :class:`Services`, whatever state it is in.
- ``SettingsDep``: the app's :class:`~malsori.config.Settings`.
- ``ReadyDep``: the :class:`Services` once the model and its scheduler are loaded (503 before).
- ``DetectorsDep``: the speech detectors of ``POST /detect`` (503 until the model is loaded).
- ``JobsDep``: the :class:`~malsori.jobs.JobService` (503 between app construction and startup).
- ``AdminDep``: a check, for ``dependencies=[AdminDep]``: with API keys, the key's ``admin`` scope
  (403 otherwise); with none (the open service), the ``X-Admin-Key`` header matches
  ``auth.admin_key`` when one is configured (401 otherwise).
- ``KnownFormFieldsDep``: a check, for a router's ``dependencies``: a form body (multipart or
  urlencoded) with a field its route does not take is refused (422 ``invalid_request``), as the JSON
  bodies' models refuse unknown fields; FastAPI alone ignores them, so a misspelt ``langauge`` would
  transcribe with the language detected instead. The route's scope is checked first (401/403 before
  422, as for its other parameters): a router's dependencies run before its routes' own.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection

from ..config import Settings
from ..detection import Detectors
from ..errors import AuthError
from ..jobs import JobService
from .services import NotReadyError, Services

__all__ = [
    "ServicesDep",
    "SettingsDep",
    "ReadyDep",
    "DetectorsDep",
    "JobsDep",
    "AdminDep",
    "get_services",
    "get_settings",
    "get_ready",
    "get_detectors",
    "get_jobs",
    "require_admin",
    "KnownFormFieldsDep",
    "refuse_unknown_form_fields",
]


def get_services(conn: HTTPConnection) -> Services:
    services: Services = conn.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_ready(services: ServicesDep) -> Services:
    """The services, once the model can take work; NotReadyError (503) until then."""
    services.require_ready()
    return services


ReadyDep = Annotated[Services, Depends(get_ready)]


def get_detectors(services: ReadyDep) -> Detectors:
    if services.detectors is None:  # installed with the model, so only if a loader forgot them
        raise NotReadyError("the speech detectors are not loaded yet; try again shortly", retry_after=2.0)
    return services.detectors


DetectorsDep = Annotated[Detectors, Depends(get_detectors)]


def get_jobs(services: ServicesDep) -> JobService:
    if services.jobs is None:  # only between app construction and startup
        raise NotReadyError("the job service is starting; try again shortly", retry_after=2.0)
    return services.jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


def require_admin(conn: HTTPConnection, settings: SettingsDep, x_admin_key: Annotated[str | None, Header()] = None) -> None:
    """With API keys: ForbiddenError (403) unless the key has the admin scope. Open: AuthError (401)
    unless the admin key matches; no check when no admin key is configured."""
    from ..tenants import Scope
    from .auth import get_principal

    principal = get_principal(conn)
    if not principal.is_open:
        principal.require(Scope.ADMIN)
        return
    expected = settings.auth.admin_key
    if not expected:
        return
    if x_admin_key is None:
        raise AuthError("changing settings needs the admin key (X-Admin-Key header)")
    if not secrets.compare_digest(x_admin_key.encode(), expected.encode()):
        raise AuthError("the admin key is wrong")


AdminDep = Depends(require_admin)


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _form_field_names(route: object) -> frozenset[str]:
    """The form field names a route takes (aliases, such as ``timestamp_granularities[]``): the fields
    of the body model FastAPI builds from its ``Form``/``File`` parameters, or its one body field."""
    body = getattr(route, "body_field", None)
    if body is None:
        return frozenset()
    model_fields = getattr(body.field_info.annotation, "model_fields", None)
    if model_fields is None:
        return frozenset({body.alias})
    return frozenset(field.alias or name for name, field in model_fields.items())


async def refuse_unknown_form_fields(request: Request) -> None:
    """RequestValidationError (422, as for an unknown field of a JSON body) naming every form field the
    route does not take; JSON bodies and requests without a body pass (their models check them)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() not in _FORM_TYPES:
        return
    known = _form_field_names(request.scope.get("route"))
    form = await request.form()  # the form FastAPI parsed for the route (Starlette keeps it)
    unknown = sorted(set(form.keys()) - known)
    if unknown:
        _authorize(request)
        raise RequestValidationError(
            [{"loc": ("body", name), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"} for name in unknown]
        )


def _authorize(request: Request) -> None:
    """Run the route's scope checks (``Require``, 401 or 403) now: FastAPI runs a router's dependencies
    before the route's, so a key lacking the scope would otherwise learn which form fields exist."""
    from .auth import Require

    for dependency in getattr(getattr(request.scope.get("route"), "dependant", None), "dependencies", ()):
        if isinstance(dependency.call, Require):
            dependency.call(request)


KnownFormFieldsDep = Depends(refuse_unknown_form_fields)
