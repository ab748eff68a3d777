"""The admin's HTTP edges: the token check and one answer per known error (never a traceback)."""

import base64
import binascii
import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from loop.admin import writes
from loop.admin.pages import render_error
from loop.admin.queries.common import BadValue, NotFound
from loop.admin.records import dumps
from store.db import DatabaseUnavailable
from store.objects import StoreUnavailable

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


class Unauthorized(HTTPException):
    """401: the token is missing or wrong (nothing was changed)."""

    def __init__(self, *, basic: bool) -> None:
        challenge = 'Bearer realm="editloop"' + (', Basic realm="editloop"' if basic else "")
        super().__init__(
            401,
            "missing or wrong admin token: send `Authorization: Bearer <token>` "
            "(the value of EDITLOOP_ADMIN__TOKEN)",
            headers={"WWW-Authenticate": challenge},
        )


def token_matches(header: str, token: str, *, allow_basic: bool) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time): as a bearer
    token, or for reads as the password of HTTP Basic (what a browser can send for a page)."""
    scheme, _, value = header.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic" and allow_basic:
        try:
            given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def json_response(value: Any, kind: Any = None, status_code: int = 200) -> Response:
    """`value` encoded exactly as the CLI's --json prints it."""
    return Response(dumps(value, kind), status_code=status_code, media_type="application/json")


def _error(request: Request, status: int, message: str, **extra: Any) -> Response:
    if request.url.path.startswith(API_PREFIX) or request.url.path in ("/metrics", "/readyz"):
        return JSONResponse({"detail": message, **extra}, status_code=status)
    if request.url.path.startswith("/objects/"):
        return Response(message, status_code=status, media_type="text/plain")
    return render_error(status, message)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(location) or "request"
    return field, f"{field}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every known error with its status and one message (JSON for the API, /metrics and
    /readyz, text for images, a page otherwise): 404, 422 naming the field, 409, 503."""

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(BadValue)
    async def bad_value(request: Request, exc: BadValue) -> Response:
        return _error(request, 422, str(exc), field=exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        field, message = _describe_validation(exc)
        return _error(request, 422, message, field=field)

    @app.exception_handler(writes.Conflict)
    async def conflict(request: Request, exc: writes.Conflict) -> Response:
        return _error(request, 409, str(exc))

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> Response:
        log.warning("database error on %s: %s", request.url.path, exc)
        return _error(
            request,
            503,
            f"the database did not answer ({type(exc.orig).__name__}); check that it is "
            "running and EDITLOOP_STORE__DATABASE_URL is right",
        )

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("unavailable on %s: %s", request.url.path, exc)
        return _error(request, 503, str(exc))
